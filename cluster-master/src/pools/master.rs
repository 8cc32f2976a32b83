//! Component masters: the reconciler that keeps one live, elected master per pool with
//! candidates, starts its process through the node's agent, and fails over with a
//! higher epoch when the master's node goes down or its process ends.

use std::time::{Duration, Instant};

use glory_keymaster::schema::{PoolMaster, PoolRecord};
use glory_protocol::{ClusterToGroup, GroupToAgent, NodeState, ProcessSpec, ProcessState};
use serde_json::json;
use tracing::{info, warn};

use super::alloc::elect;
use super::{OpError, OpResultT, Write};
use crate::cluster::Cluster;

/// A master whose node is unreachable (its group master is lost) is kept this long: a
/// standby group master usually takes over within a second or two.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(10);
/// A start not confirmed by the agent is sent again after this long.
const START_RETRY: Duration = Duration::from_secs(3);

/// The process id of a pool's master.
pub fn process_id(pool: &str) -> String {
    format!("pool/{pool}/master")
}

impl Cluster {
    /// `ip` or `ip:port` of a node, for a pool master's published address.
    fn master_address(&self, node: &str, port: Option<u16>) -> String {
        let ip = self
            .read()
            .nodes
            .get(node)
            .and_then(|n| {
                n.record
                    .inventory
                    .nics
                    .iter()
                    .flat_map(|nic| nic.addresses.iter())
                    .map(|a| a.split('/').next().unwrap_or(a).to_string())
                    .find(|a| a != "127.0.0.1" && a != "::1")
            })
            .unwrap_or_else(|| node.to_string());
        match port {
            Some(port) if ip.contains(':') => format!("[{ip}]:{port}"),
            Some(port) => format!("{ip}:{port}"),
            None => ip,
        }
    }

    fn send_to_agent(&self, node: &str, msg: GroupToAgent) {
        let reg = self.read();
        let Some(group) = reg.nodes.get(node).map(|n| n.record.group.clone()) else {
            return;
        };
        if let Some(g) = reg.groups.get(&group) {
            g.notify(ClusterToGroup::ToAgent {
                node: node.to_string(),
                msg,
            });
        }
    }

    fn start_master_process(&self, pool: &PoolRecord, master: &PoolMaster) {
        let mut env = pool.master_spec.env.clone();
        env.insert("GLORY_POOL".into(), pool.name.clone());
        env.insert("GLORY_TENANT".into(), pool.tenant.clone());
        env.insert("GLORY_COMPONENT".into(), pool.component.clone());
        env.insert("GLORY_MASTER_EPOCH".into(), master.epoch.to_string());
        env.insert("GLORY_MASTER_ADDRESS".into(), master.address.clone());
        env.insert("GLORY_POOL_NODES".into(), pool.nodes.join(","));
        self.send_to_agent(
            &master.node,
            GroupToAgent::Start(ProcessSpec {
                id: process_id(&pool.name),
                epoch: master.epoch,
                command: pool.master_spec.command.clone(),
                env,
            }),
        );
        self.pools
            .start_sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pool.name.clone(), (master.epoch, Instant::now()));
    }

    pub(crate) fn stop_master_process(&self, pool: &str, master: &PoolMaster) {
        self.send_to_agent(
            &master.node,
            GroupToAgent::Stop {
                id: process_id(pool),
                epoch: master.epoch,
            },
        );
    }

    /// What the master's agent last said about its process: `starting` (not confirmed
    /// yet), `running`, `exited` or `failed`.
    pub(crate) fn master_process_state(&self, pool: &str, master: &PoolMaster) -> &'static str {
        let procs = self
            .pools
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match procs.get(&(master.node.clone(), process_id(pool))) {
            Some(r) if r.epoch == master.epoch => match r.state {
                ProcessState::Running => "running",
                ProcessState::Exited { .. } => "exited",
                ProcessState::Failed => "failed",
            },
            _ => "starting",
        }
    }

    /// Why the pool's current master cannot go on, if it cannot.
    fn master_failure(&self, pool: &PoolRecord, master: &PoolMaster) -> Option<String> {
        if pool.nodes.binary_search(&master.node).is_err() {
            return Some("node left the pool".into());
        }
        if !pool.candidates.contains(&master.node) {
            return Some("no longer a candidate".into());
        }
        let now = glory_protocol::now_ms();
        match self
            .read()
            .nodes
            .get(&master.node)
            .map(|n| (n.status.state, n.status.since_ms))
        {
            None => return Some("node removed".into()),
            Some((NodeState::Down, _)) => return Some("node down".into()),
            Some((NodeState::Left, _)) => return Some("node left".into()),
            Some((NodeState::Unreachable, since))
                if now.saturating_sub(since) > UNREACHABLE_GRACE.as_millis() as u64 =>
            {
                return Some("node unreachable".into())
            }
            _ => {}
        }
        let procs = self
            .pools
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match procs.get(&(master.node.clone(), process_id(&pool.name))) {
            Some(r) if r.epoch == master.epoch && r.state != ProcessState::Running => {
                Some(format!(
                    "master process ended: {}",
                    if r.detail.is_empty() {
                        "no detail"
                    } else {
                        &r.detail
                    }
                ))
            }
            _ => None,
        }
    }

    /// Elect a new master for `name`, not `exclude`; `reason` says why. Returns the new
    /// master (None: no live candidate; the pool is left without a master).
    async fn elect_master(
        &self,
        name: &str,
        exclude: Option<&str>,
        reason: &str,
        required: bool,
    ) -> OpResultT<Option<PoolMaster>> {
        let now = glory_protocol::now_ms();
        // Addresses are looked up before planning: the plan runs under the pool lock,
        // which is never held while taking the registry's.
        let candidates = self
            .pools
            .book()
            .get(name)
            .map(|p| (p.candidates.clone(), p.master_spec.port))
            .unwrap_or_default();
        let addresses: std::collections::HashMap<String, String> = candidates
            .0
            .iter()
            .map(|c| (c.clone(), self.master_address(c, candidates.1)))
            .collect();
        let (pool, old) = self
            .write_pool(false, |book, facts| {
                let mut p = book.cloned(name)?;
                let up = |n: &str| facts.iter().any(|f| f.id == n && f.up);
                let chosen = elect(&p.candidates, exclude, |n| {
                    p.nodes.binary_search_by(|m| m.as_str().cmp(n)).is_ok() && up(n)
                })
                .map(str::to_string);
                let old = p.master.take();
                match chosen {
                    Some(node) => {
                        p.epoch += 1;
                        p.master = Some(PoolMaster {
                            address: addresses
                                .get(&node)
                                .cloned()
                                .unwrap_or_else(|| node.clone()),
                            node,
                            epoch: p.epoch,
                            since_ms: now,
                        });
                    }
                    None if required => {
                        return Err(OpError::conflict(format!(
                            "pool {name} has no other live candidate"
                        )))
                    }
                    None if old.is_none() => {
                        return Err(OpError::Conflict {
                            message: "no live candidate".into(),
                            fit: None,
                        })
                    }
                    None => {}
                }
                Ok((Write::Put(p), old))
            })
            .await?;
        let pool = pool.ok_or_else(|| OpError::conflict("pool vanished"))?;
        let at = Some((pool.name.as_str(), pool.tenant.as_str()));
        if let Some(old) = &old {
            warn!(pool = %pool.name, node_id = %old.node, epoch = old.epoch, %reason, "component master failed");
            self.events.emit(
                "master_failed",
                at,
                json!({"node": old.node, "epoch": old.epoch, "reason": reason}),
            );
            self.stop_master_process(&pool.name, old);
        }
        match &pool.master {
            Some(m) => {
                info!(pool = %pool.name, node_id = %m.node, epoch = m.epoch, "component master elected");
                self.events.emit(
                    "master_elected",
                    at,
                    json!({"node": m.node, "address": m.address, "epoch": m.epoch, "since_ms": m.since_ms, "reason": reason}),
                );
                self.start_master_process(&pool, m);
            }
            None => {
                self.events
                    .emit("master_none", at, json!({"reason": "no live candidate"}));
            }
        }
        Ok(pool.master)
    }

    /// Move a pool's master to the next live candidate by hand.
    pub async fn failover_master(&self, name: &str) -> OpResultT<PoolMaster> {
        let current = self
            .pools
            .book()
            .get(name)
            .ok_or_else(|| OpError::NotFound(format!("pool {name} does not exist")))?
            .master
            .as_ref()
            .map(|m| m.node.clone());
        self.elect_master(name, current.as_deref(), "manual failover", true)
            .await?
            .ok_or_else(|| OpError::conflict(format!("pool {name} has no other live candidate")))
    }

    /// One pass over every pool: elect where needed, repeat unconfirmed starts, replace
    /// failed nodes. Called on every relevant change and twice a second.
    pub(crate) async fn reconcile_pools(&self) {
        // Only pools with something to look after are copied (a pool's node list can
        // be thousands long, and this runs twice a second).
        let pools: Vec<PoolRecord> = self
            .pools
            .book()
            .pools()
            .filter(|p| !p.candidates.is_empty() || p.master.is_some() || p.replace_failed)
            .cloned()
            .collect();
        for pool in pools {
            if !pool.candidates.is_empty() || pool.master.is_some() {
                self.reconcile_master(&pool).await;
            }
            if pool.replace_failed {
                self.replace_failed_nodes(&pool).await;
            }
        }
        self.stop_stale_masters();
    }

    async fn reconcile_master(&self, pool: &PoolRecord) {
        let failure = match &pool.master {
            None => Some("no master".to_string()),
            Some(m) => self.master_failure(pool, m),
        };
        if let Some(reason) = failure {
            let exclude = pool.master.as_ref().map(|m| m.node.clone());
            match self
                .elect_master(&pool.name, exclude.as_deref(), &reason, false)
                .await
            {
                Ok(_) => {}
                Err(OpError::Conflict { .. }) => {} // no live candidate yet
                Err(e) => warn!(pool = %pool.name, error = %e, "master election failed; retrying"),
            }
            return;
        }
        // Healthy: make sure the agent confirmed the start; repeat it if not.
        let Some(master) = &pool.master else { return };
        let confirmed = self
            .pools
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(master.node.clone(), process_id(&pool.name)))
            .is_some_and(|r| r.epoch == master.epoch);
        let due = self
            .pools
            .start_sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pool.name)
            .is_none_or(|(epoch, at)| *epoch != master.epoch || at.elapsed() > START_RETRY);
        if !confirmed && due {
            self.start_master_process(pool, master);
        }
    }

    /// A node still running an old epoch's master (it came back, or a stop was lost)
    /// is told to stop it.
    fn stop_stale_masters(&self) {
        let stale: Vec<(String, String, u64)> = {
            let book = self.pools.book();
            let procs = self
                .pools
                .processes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            procs
                .iter()
                .filter(|(_, r)| r.state == ProcessState::Running)
                .filter_map(|((node, id), r)| {
                    let pool = id.strip_prefix("pool/")?.strip_suffix("/master")?;
                    let current = book.get(pool).and_then(|p| p.master.as_ref());
                    let is_current = current.is_some_and(|m| &m.node == node && m.epoch == r.epoch);
                    (!is_current).then(|| (node.clone(), id.clone(), r.epoch))
                })
                .collect()
        };
        for (node, id, epoch) in stale {
            self.send_to_agent(&node, GroupToAgent::Stop { id, epoch });
        }
    }

    async fn replace_failed_nodes(&self, pool: &PoolRecord) {
        let now = glory_protocol::now_ms();
        let failed: Vec<String> = {
            let reg = self.read();
            pool.nodes
                .iter()
                .filter(|id| {
                    reg.nodes.get(*id).is_some_and(|n| {
                        matches!(n.status.state, NodeState::Down | NodeState::Left)
                            && now.saturating_sub(n.status.since_ms) >= pool.replace_delay_ms
                    })
                })
                .cloned()
                .collect()
        };
        for old in failed {
            let result = self
                .write_pool(true, |book, facts| {
                    let (p, new) = book.plan_replace(&pool.name, &old, facts)?;
                    Ok((Write::Put(p), new))
                })
                .await;
            let at = Some((pool.name.as_str(), pool.tenant.as_str()));
            match result {
                Ok((_, new)) => {
                    info!(pool = %pool.name, old = %old, new = %new, "failed pool node replaced");
                    self.pools
                        .replace_blocked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&(pool.name.clone(), old.clone()));
                    self.events.emit(
                        "node_removed",
                        at,
                        json!({"node": old, "reason": "failed; replaced"}),
                    );
                    self.events
                        .emit("node_added", at, json!({"node": new, "replaces": old}));
                }
                Err(OpError::Conflict { fit: Some(_), .. }) => {
                    let first = self
                        .pools
                        .replace_blocked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((pool.name.clone(), old.clone()));
                    if first {
                        warn!(pool = %pool.name, node_id = %old, "no free node fits to replace a failed pool node");
                        self.events.emit(
                            "replace_blocked",
                            at,
                            json!({"node": old, "reason": "no free node fits"}),
                        );
                    }
                }
                Err(OpError::NotFound(_)) => {}
                Err(e) => warn!(pool = %pool.name, error = %e, "replacing a failed node failed"),
            }
        }
    }
}

/// Reconcile pools on every change and twice a second, until `shutdown`.
pub(crate) async fn reconciler(
    cluster: std::sync::Arc<Cluster>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = cluster.pool_changed.notified() => {}
        }
        cluster.reconcile_pools().await;
    }
}
