//! Component masters: the reconciler that keeps one live, elected master per pool with
//! candidates, starts its process through the node's agent, and fails over with a
//! higher epoch when the master's node goes down or its process keeps failing.
//!
//! The epoch is a leadership term, not a process incarnation: the agent restarts a
//! master that exits under the same epoch, with a backoff, and reports it `failing`
//! after consecutive quick failures. Only then is the role moved, once to each
//! candidate; when every candidate has failed with the pool's current master spec and
//! candidate list, the master stays where it is (its agent keeps retrying at the
//! longest backoff) instead of flapping between candidates.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::events::EventData;
use glory_keymaster::schema::{MasterSpec, PoolMaster, PoolRecord};
use glory_protocol::{
    ClusterToGroup, GroupToAgent, NodeState, ProcessExit, ProcessReport, ProcessSpec, ProcessState,
};
use tracing::{info, warn};

use super::alloc::elect;
use super::launch::{format_address, publish_ip, Placeholders};
use super::verdict::{master_verdict, replacement_due, start_due, MasterFacts, Trouble};
use super::{OpError, OpResultT, Write};
use crate::cluster::Cluster;

/// Candidates of one pool whose master process kept failing, valid for the master spec
/// and candidate list they failed with.
pub(crate) struct FailedCandidates {
    spec: MasterSpec,
    candidates: Vec<String>,
    nodes: BTreeSet<String>,
    /// The epoch whose "every candidate failed" was announced (once per epoch).
    announced: Option<u64>,
}

/// What the API says about a master's process.
pub(crate) struct ProcessView {
    /// `starting`, `running`, `restarting`, `failing`, `stopped` or `unknown`.
    pub state: &'static str,
    pub last_exit: Option<ProcessExit>,
    pub output: Vec<String>,
    /// Consecutive quick failures.
    pub failures: u32,
    /// Restarts of this epoch's process.
    pub restarts: u32,
}

impl ProcessView {
    /// The view of `report` (the newest for the master's node, process and epoch, if
    /// any), on a node in `node_state`.
    fn of(report: Option<&ProcessReport>, node_state: Option<NodeState>) -> ProcessView {
        let Some(r) = report else {
            return ProcessView {
                state: "starting",
                last_exit: None,
                output: Vec::new(),
                failures: 0,
                restarts: 0,
            };
        };
        let state = if node_state != Some(NodeState::Up) {
            // Not heard from: whatever it last said may no longer be true.
            "unknown"
        } else if r.state == ProcessState::Running {
            "running"
        } else if r.failing {
            "failing"
        } else if r.restart_in_ms.is_some() {
            "restarting"
        } else {
            "stopped"
        };
        ProcessView {
            state,
            last_exit: r.last_exit.clone(),
            output: r.output.clone(),
            failures: r.failures,
            restarts: r.run.saturating_sub(1),
        }
    }
}

/// The process id of a pool's master.
pub fn process_id(pool: &str) -> String {
    format!("pool/{pool}/master")
}

impl Cluster {
    /// `ip` or `ip:port` of a node, for a pool master's published address (see
    /// [`publish_ip`]); the node's hostname when it has no usable address.
    fn master_address(&self, node: &str, port: Option<u16>) -> String {
        let reg = self.read();
        let Some(entry) = reg.nodes.get(node) else {
            return node.to_string();
        };
        let record = &entry.record;
        match publish_ip(record.reached_from.as_deref(), &record.inventory) {
            Some(ip) => format_address(ip, port),
            None => {
                let host = if record.hostname.is_empty() {
                    node
                } else {
                    &record.hostname
                };
                match port {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_string(),
                }
            }
        }
    }

    pub(crate) fn send_to_agent(&self, node: &str, msg: GroupToAgent) {
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
        let spec = &pool.master_spec;
        let values = Placeholders {
            port: spec.port,
            node: &master.node,
            pool: &pool.name,
            epoch: master.epoch,
        };
        let mut env: std::collections::BTreeMap<String, String> = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), values.apply(v)))
            .collect();
        env.insert("GLORY_POOL".into(), pool.name.clone());
        env.insert("GLORY_NODE".into(), master.node.clone());
        if let Some(port) = spec.port {
            env.insert("GLORY_MASTER_PORT".into(), port.to_string());
        }
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
                command: spec.command.iter().map(|w| values.apply(w)).collect(),
                env,
                instance: None,
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

    /// What the master's agent last said about its process, honestly: `running` only
    /// when the newest report for this epoch says so and the node is heard from.
    pub(crate) fn master_process(&self, pool: &str, master: &PoolMaster) -> ProcessView {
        let node_state = self.read().nodes.get(&master.node).map(|n| n.status.state);
        self.with_master_report(pool, master, |report| ProcessView::of(report, node_state))
    }

    /// `f` of the newest report of `master`'s process for its epoch, under the reports'
    /// lock (take the registry's first, never while holding it).
    fn with_master_report<R>(
        &self,
        pool: &str,
        master: &PoolMaster,
        f: impl FnOnce(Option<&ProcessReport>) -> R,
    ) -> R {
        let procs = self
            .pools
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f(procs
            .get(&(master.node.clone(), process_id(pool)))
            .filter(|r| r.epoch == master.epoch))
    }

    /// Why the pool's current master cannot go on, if it cannot: the facts gathered
    /// under their locks, the verdict from [`master_verdict`].
    fn master_failure(&self, pool: &PoolRecord, master: &PoolMaster) -> Option<Trouble> {
        let node = self
            .read()
            .nodes
            .get(&master.node)
            .map(|n| (n.status.state, n.status.since_ms));
        self.with_master_report(&pool.name, master, |report| {
            master_verdict(
                MasterFacts {
                    in_pool: pool.nodes.binary_search(&master.node).is_ok(),
                    candidate: pool.candidates.contains(&master.node),
                    node,
                    process: report,
                },
                glory_protocol::now_ms(),
            )
        })
    }

    /// Nodes of `pool` whose master process failed with its current master spec and
    /// candidate list (marks made for another spec or list are forgotten).
    fn failed_candidates(&self, pool: &PoolRecord) -> BTreeSet<String> {
        let mut failed = self
            .pools
            .failed_masters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match failed.get(&pool.name) {
            Some(f) if f.spec == pool.master_spec && f.candidates == pool.candidates => {
                f.nodes.clone()
            }
            Some(_) => {
                failed.remove(&pool.name);
                BTreeSet::new()
            }
            None => BTreeSet::new(),
        }
    }

    /// Mark `node` as failed for `pool`'s current master spec and candidates (call
    /// [`Self::failed_candidates`] first, which forgets marks made for others).
    fn mark_failed(&self, pool: &PoolRecord, node: &str) {
        self.pools
            .failed_masters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(pool.name.clone())
            .or_insert_with(|| FailedCandidates {
                spec: pool.master_spec.clone(),
                candidates: pool.candidates.clone(),
                nodes: BTreeSet::new(),
                announced: None,
            })
            .nodes
            .insert(node.to_string());
    }

    /// Whether "every candidate failed" is still to be announced for `epoch` (true
    /// once per epoch).
    fn announce_stuck(&self, pool: &str, epoch: u64) -> bool {
        let mut failed = self
            .pools
            .failed_masters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match failed.get_mut(pool) {
            Some(f) if f.announced != Some(epoch) => {
                f.announced = Some(epoch);
                true
            }
            _ => false,
        }
    }

    /// Forget which candidates failed (a manual failover gives every one a new try;
    /// a deleted pool needs no marks).
    pub(crate) fn forget_failed(&self, pool: &str) {
        self.pools
            .failed_masters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pool);
    }

    /// Elect a new master for `name`, neither `exclude` nor one of `avoid`; `reason`
    /// says why. Returns the new master (None: no live candidate; the pool is left
    /// without a master). `required`: with no live candidate, change nothing and
    /// answer a conflict.
    async fn elect_master(
        &self,
        name: &str,
        exclude: Option<&str>,
        avoid: &BTreeSet<String>,
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
                    p.nodes.binary_search_by(|m| m.as_str().cmp(n)).is_ok()
                        && up(n)
                        && !avoid.contains(n)
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
                at,
                EventData::MasterFailed {
                    node: old.node.clone(),
                    epoch: old.epoch,
                    reason: reason.to_string(),
                },
            );
            self.stop_master_process(&pool.name, old);
        }
        match &pool.master {
            Some(m) => {
                info!(pool = %pool.name, node_id = %m.node, epoch = m.epoch, "component master elected");
                self.events.emit(
                    at,
                    EventData::MasterElected {
                        node: m.node.clone(),
                        address: m.address.clone(),
                        epoch: m.epoch,
                        since_ms: m.since_ms,
                        reason: reason.to_string(),
                    },
                );
                self.start_master_process(&pool, m);
            }
            None => {
                self.events.emit(
                    at,
                    EventData::MasterNone {
                        reason: "no live candidate".into(),
                    },
                );
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
        // By hand, every candidate gets a new try.
        self.forget_failed(name);
        self.elect_master(
            name,
            current.as_deref(),
            &BTreeSet::new(),
            "manual failover",
            true,
        )
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
        self.reconcile_reclaims().await;
        self.offer_round();
    }

    async fn reconcile_master(&self, pool: &PoolRecord) {
        let trouble = match &pool.master {
            None => Some(Trouble::Node("no master".to_string())),
            Some(m) => self.master_failure(pool, m),
        };
        let exclude = pool.master.as_ref().map(|m| m.node.clone());
        let failed = self.failed_candidates(pool);
        match trouble {
            None => {}
            Some(Trouble::Node(reason)) => {
                // A candidate whose process has not failed first; else any live one
                // (one election when none has failed).
                let mut result = self
                    .elect_master(
                        &pool.name,
                        exclude.as_deref(),
                        &failed,
                        &reason,
                        !failed.is_empty(),
                    )
                    .await;
                if !failed.is_empty() && matches!(result, Err(OpError::Conflict { .. })) {
                    let anyone = BTreeSet::new();
                    result = self
                        .elect_master(&pool.name, exclude.as_deref(), &anyone, &reason, false)
                        .await;
                }
                match result {
                    Ok(_) | Err(OpError::Conflict { .. }) => {} // no live candidate yet
                    Err(e) => {
                        warn!(pool = %pool.name, error = %e, "master election failed; retrying")
                    }
                }
                return;
            }
            Some(Trouble::Process(reason)) => {
                let Some(master) = &pool.master else { return };
                self.mark_failed(pool, &master.node);
                let mut avoid = failed;
                avoid.insert(master.node.clone());
                // With every candidate failed there is no one to elect: no election
                // (a pool write over every node's facts) twice a second while stuck.
                let result = if pool.candidates.iter().all(|c| avoid.contains(c)) {
                    Err(OpError::conflict("every candidate failed"))
                } else {
                    self.elect_master(&pool.name, exclude.as_deref(), &avoid, &reason, true)
                        .await
                };
                match result {
                    Ok(_) => return,
                    Err(OpError::Conflict { .. }) => {
                        // Every live candidate failed with this spec: moving the role
                        // again would only flap. The master stays; its agent keeps
                        // restarting it at the longest backoff.
                        if self.announce_stuck(&pool.name, master.epoch) {
                            warn!(pool = %pool.name, node_id = %master.node, epoch = master.epoch, %reason, "component master failing on every candidate; keeping it where it is");
                            self.events.emit(
                                Some((&pool.name, &pool.tenant)),
                                EventData::MasterFailing {
                                    node: master.node.clone(),
                                    epoch: master.epoch,
                                    reason: reason.to_string(),
                                },
                            );
                        }
                    }
                    Err(e) => {
                        warn!(pool = %pool.name, error = %e, "master election failed; retrying");
                        return;
                    }
                }
            }
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
        let sent = self
            .pools
            .start_sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pool.name)
            .copied();
        let due = start_due(sent, master.epoch, Instant::now());
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
                // Running, or waiting for its agent to restart it.
                .filter(|(_, r)| r.state == ProcessState::Running || r.restart_in_ms.is_some())
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
                        replacement_due(
                            n.status.state,
                            n.status.since_ms,
                            now,
                            pool.replace_delay_ms,
                        )
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
                        at,
                        EventData::NodeRemoved {
                            node: old.clone(),
                            reason: "failed; replaced".into(),
                        },
                    );
                    self.events.emit(
                        at,
                        EventData::NodeAdded {
                            node: new.clone(),
                            replaces: Some(old.clone()),
                        },
                    );
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
                            at,
                            EventData::ReplaceBlocked {
                                node: old.clone(),
                                reason: "no free node fits".into(),
                            },
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
    on_change_or_tick(&cluster.pool_changed, &shutdown, || {
        cluster.reconcile_pools()
    })
    .await;
}

/// Run `pass` on every `changed` notification and at least twice a second, one pass
/// at a time, until `shutdown` (a reconciler's loop).
pub(crate) async fn on_change_or_tick<F, Fut>(
    changed: &tokio::sync::Notify,
    shutdown: &tokio_util::sync::CancellationToken,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = changed.notified() => {}
        }
        pass().await;
    }
}
