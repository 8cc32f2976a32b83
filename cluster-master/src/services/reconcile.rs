//! The services' reconcile loop in the active cluster master: on every change and
//! twice a second, each service's observations (its instances' process reports and
//! nodes' states) go through the pure decision
//! ([`glory_service_manager::reconcile::reconcile`]); a changed record is stored with
//! compare-and-swap, the changes become events, unconfirmed starts are repeated, the
//! balancer gets the healthy instances, and processes nothing wants are stopped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use glory_protocol::{
    GroupToAgent, HealthCheck, HealthCheckKind, InstanceSpec, NodeState, ProcessSpec, ProcessState,
};
use glory_service_manager::balancer::Backend;
use glory_service_manager::model::{
    parse_process_id, InstanceState, Observed, Report, ServiceRecord,
};
use glory_service_manager::reconcile::{reconcile, state_of, ChangeKind, PoolNode, Timing};
use glory_service_manager::spec::HealthKind;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::events::EventData;
use crate::pools::launch::publish_ip;

/// An unconfirmed start or an ignored stop is sent again after this long.
const RESEND: Duration = Duration::from_secs(5);
/// A stopped instance gets this long between SIGTERM and SIGKILL.
const STOP_TIMEOUT_MS: u64 = 10_000;

/// One instance as the API shows it.
pub(crate) struct InstanceView {
    pub id: String,
    pub node: String,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub state: InstanceState,
    pub reason: String,
    pub since_ms: u64,
    pub restarts: u32,
    pub epoch: u64,
    /// The process on its node, while it runs.
    pub pid: Option<u32>,
    pub output: Vec<String>,
}

impl Cluster {
    /// What the agents and nodes say of each of `record`'s placements.
    fn observe(&self, record: &ServiceRecord) -> BTreeMap<String, Observed> {
        let reg = self.read();
        let procs = self
            .pools
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        record
            .instances
            .iter()
            .map(|p| {
                let state = reg.nodes.get(&p.node).map(|n| n.status.state);
                let node_up = state == Some(NodeState::Up);
                // Down, left or removed is a failure; anything else is not known yet.
                let node_unknown = matches!(
                    state,
                    Some(NodeState::Unreachable | NodeState::Suspect | NodeState::Joining)
                );
                let report = procs
                    .get(&(p.node.clone(), record.process_id(&p.id)))
                    .filter(|r| r.epoch == p.epoch)
                    .map(|r| Report {
                        running: r.state == ProcessState::Running,
                        ended: r.state != ProcessState::Running,
                        healthy: r.health.as_ref().map(|h| h.healthy),
                        has_check: true,
                        port: r.port,
                        since_ms: r.health.as_ref().map_or(0, |h| h.since_ms),
                        restarts: r.run.saturating_sub(1),
                        detail: match (&r.health, r.state) {
                            (Some(h), ProcessState::Running) => h.detail.clone(),
                            _ => r.detail.clone(),
                        },
                    });
                (
                    p.id.clone(),
                    Observed {
                        node_up,
                        node_unknown,
                        report,
                    },
                )
            })
            .collect()
    }

    /// The pool's nodes and whether each is up.
    fn pool_nodes(&self, pool: &str) -> Vec<PoolNode> {
        let ids = self
            .pools
            .book()
            .get(pool)
            .map(|p| p.nodes.clone())
            .unwrap_or_default();
        let reg = self.read();
        ids.into_iter()
            .map(|id| PoolNode {
                up: reg
                    .nodes
                    .get(&id)
                    .is_some_and(|n| n.status.state == NodeState::Up),
                id,
            })
            .collect()
    }

    /// The IP the balancer reaches `node`'s instances at: the address its agent
    /// connected from (proven to route; loopback when every part runs on one
    /// machine, as with `glory up`), else the address a pool master would be
    /// published at.
    fn node_ip(&self, node: &str) -> Option<std::net::IpAddr> {
        let reg = self.read();
        let record = &reg.nodes.get(node)?.record;
        let reached = record
            .reached_from
            .as_deref()
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .filter(|ip| !ip.is_unspecified());
        reached.or_else(|| publish_ip(record.reached_from.as_deref(), &record.inventory))
    }

    /// The instances of `record` as the API shows them.
    pub(crate) fn instance_views(&self, record: &ServiceRecord) -> Vec<InstanceView> {
        let observed = self.observe(record);
        let now = glory_protocol::now_ms();
        let procs = self
            .pools
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let reports: Vec<_> = record
            .instances
            .iter()
            .map(|p| {
                procs
                    .get(&(p.node.clone(), record.process_id(&p.id)))
                    .filter(|r| r.epoch == p.epoch)
                    .cloned()
            })
            .collect();
        drop(procs);
        record
            .instances
            .iter()
            .zip(reports)
            .map(|(p, report)| {
                let o = observed.get(&p.id);
                let (state, reason) = state_of(p, o, now, self.services_timing());
                let report_ref = o.and_then(|o| o.report.as_ref());
                InstanceView {
                    id: p.id.clone(),
                    node: p.node.clone(),
                    address: self.node_ip(&p.node).map(|ip| ip.to_string()),
                    port: report_ref
                        .and_then(|r| r.port)
                        .or((record.spec.port != 0).then_some(record.spec.port)),
                    state,
                    reason,
                    since_ms: p
                        .draining
                        .as_ref()
                        .map(|d| d.since_ms)
                        .or(report_ref.map(|r| r.since_ms).filter(|s| *s > 0))
                        .unwrap_or(p.created_ms),
                    restarts: report_ref.map_or(0, |r| r.restarts),
                    epoch: p.epoch,
                    pid: report.as_ref().and_then(|r| r.pid),
                    output: report.map(|r| r.output).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// One pass over every service.
    pub(crate) async fn reconcile_services(&self) {
        let now = glory_protocol::now_ms();
        // Each pool's nodes once per pass (many services share a pool).
        let mut pools: HashMap<String, Vec<PoolNode>> = HashMap::new();
        for record in self.services.all() {
            let observed = self.observe(&record);
            let nodes = pools
                .entry(record.spec.pool.clone())
                .or_insert_with(|| self.pool_nodes(&record.spec.pool));
            let drained = self.drained(&record);
            let (next, changes) = reconcile(
                &record,
                &observed,
                nodes,
                &drained,
                now,
                self.services_timing(),
            );
            let changed = next != record;
            let rev = self.services.revision(&record.spec.name);
            // Deleted since this pass read it: nothing to store (a missing revision
            // would create it again).
            let current = if changed && rev.is_none() {
                continue;
            } else if changed {
                match self.store_service(&next, rev).await {
                    Ok(Some(_)) => next,
                    Ok(None) => {
                        // Someone changed it meanwhile (an API call): decide again.
                        let _ = self.reload_service(&record.spec.name).await;
                        continue;
                    }
                    Err(e) => {
                        warn!(service = %record.spec.name, error = %e, "cannot store the service; retrying");
                        continue;
                    }
                }
            } else {
                record
            };
            let unplaced = changes.iter().any(|c| c.kind == ChangeKind::Unplaced);
            self.announce(&current, changes);
            if unplaced {
                self.grow_for(&current).await;
            }
            // What was observed holds for the record it was observed for; a changed
            // one (new placements, new epochs) is observed again.
            let observed = if changed {
                self.observe(&current)
            } else {
                observed
            };
            self.drive_processes(&current, &observed);
            // Without a balancer there is nothing to feed, unless one must be closed
            // (the spec dropped it).
            if current.spec.balancer.is_some()
                || self.services.balancers.status(&current.spec.name).is_some()
            {
                self.feed_balancer(&current, &observed);
            }
        }
        self.stop_unwanted_instances();
    }

    /// Draining instances the balancer no longer has (all of them without one).
    fn drained(&self, record: &ServiceRecord) -> BTreeSet<String> {
        let draining = record
            .instances
            .iter()
            .filter(|p| p.draining.is_some())
            .map(|p| p.id.clone());
        let status = record
            .spec
            .balancer
            .as_ref()
            .and_then(|_| self.services.balancers.status(&record.spec.name));
        match status.and_then(|s| s.present) {
            Some(present) => draining.filter(|id| !present.contains(id)).collect(),
            // No balancer, or one that never ran: nothing to drain from.
            None => draining.collect(),
        }
    }

    /// A service that cannot place all its instances grows its pool when the pool is
    /// elastic: it borrows idle nodes, or reclaims borrowed ones within its tenant's
    /// guarantee. One node per missing instance with a fixed port, else one node; at
    /// most every few seconds per service, counting nodes already on their way.
    async fn grow_for(&self, record: &ServiceRecord) {
        let name = &record.spec.name;
        {
            let mut grown = self
                .services
                .grown
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if grown
                .get(name)
                .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(5))
            {
                return;
            }
            grown.insert(name.clone(), std::time::Instant::now());
        }
        let pool = &record.spec.pool;
        let (elastic, held, incoming) = {
            let book = self.pools.book();
            let Some(p) = book.get(pool) else { return };
            (
                p.elastic,
                p.nodes.len(),
                crate::pools::reclaim::incoming(&book, pool),
            )
        };
        let Some(e) = elastic else { return };
        let live = record
            .instances
            .iter()
            .filter(|i| i.draining.is_none() && !i.stopped)
            .count();
        let missing = (record.desired as usize).saturating_sub(live);
        let wanted = if record.spec.port == 0 {
            missing.min(1)
        } else {
            missing
        };
        let n = wanted
            .saturating_sub(incoming)
            .min(e.max.saturating_sub(held + incoming));
        if n == 0 {
            return;
        }
        match self.grow_pool(pool, n).await {
            Ok((_, added)) => {
                info!(service = %name, %pool, added = added.len(), "elastic pool grown for the service")
            }
            Err(e) => warn!(service = %name, %pool, error = %e, "cannot grow the elastic pool"),
        }
    }

    fn announce(
        &self,
        record: &ServiceRecord,
        changes: Vec<glory_service_manager::reconcile::Change>,
    ) {
        let name = &record.spec.name;
        for c in changes {
            if c.kind == ChangeKind::Unplaced {
                let mut unplaced = self
                    .services
                    .unplaced
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if unplaced.get(name) == Some(&c.reason) {
                    continue;
                }
                unplaced.insert(name.clone(), c.reason.clone());
                warn!(service = %name, reason = %c.reason, "an instance cannot be placed");
            } else {
                if c.kind == ChangeKind::Placed {
                    self.services
                        .unplaced
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(name);
                }
                info!(service = %name, instance = %c.instance, node_id = %c.node, change = c.kind.as_str(), reason = %c.reason, "service instance");
            }
            self.emit_service(
                record,
                EventData::ServiceInstance {
                    service: name.clone(),
                    action: c.kind.as_str().to_string(),
                    instance: c.instance,
                    node: c.node,
                    reason: c.reason,
                },
            );
        }
    }

    /// Send starts the agents have not confirmed (placements that should run).
    fn drive_processes(&self, record: &ServiceRecord, observed: &BTreeMap<String, Observed>) {
        let now = Instant::now();
        for p in record.instances.iter().filter(|p| !p.stopped) {
            // A report for the placement's epoch confirms the start.
            if observed.get(&p.id).is_some_and(|o| o.report.is_some()) {
                continue;
            }
            let pid = record.process_id(&p.id);
            {
                let mut sent = self
                    .services
                    .start_sent
                    .lock()
                    .unwrap_or_else(|x| x.into_inner());
                let key = (format!("{}/{pid}", p.node), p.epoch);
                if sent
                    .get(&key)
                    .is_some_and(|at| now.duration_since(*at) < RESEND)
                {
                    continue;
                }
                sent.retain(|_, at| now.duration_since(*at) < RESEND * 4);
                sent.insert(key, now);
            }
            self.send_to_agent(&p.node, GroupToAgent::Start(process_spec(record, p)));
        }
    }

    /// Give the service's balancer its healthy instances.
    fn feed_balancer(&self, record: &ServiceRecord, observed: &BTreeMap<String, Observed>) {
        let name = &record.spec.name;
        let Some(spec) = &record.spec.balancer else {
            self.services.balancers.want(name, None, Vec::new());
            return;
        };
        let now = glory_protocol::now_ms();
        let backends: Vec<Backend> = record
            .instances
            .iter()
            .filter(|p| {
                state_of(p, observed.get(&p.id), now, self.services_timing()).0
                    == InstanceState::Healthy
            })
            .filter_map(|p| {
                let port = observed.get(&p.id)?.report.as_ref()?.port?;
                let ip = self.node_ip(&p.node)?;
                Some(Backend {
                    name: p.id.clone(),
                    addr: SocketAddr::new(ip, port),
                    weight: 1,
                })
            })
            .collect();
        self.services.balancers.want(name, Some(spec), backends);
    }

    /// Processes of instances nothing wants any more (removed, stopped, an older
    /// epoch, a deleted service) are stopped; their finished reports forgotten.
    fn stop_unwanted_instances(&self) {
        let wanted: HashSet<(String, String, u64)> = self
            .services
            .all()
            .iter()
            .flat_map(|r| {
                r.instances
                    .iter()
                    .filter(|p| !p.stopped)
                    .map(|p| (p.node.clone(), r.process_id(&p.id), p.epoch))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut stops = Vec::new();
        {
            let mut procs = self
                .pools
                .processes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            procs.retain(|(node, id), r| {
                if parse_process_id(id).is_none()
                    || wanted.contains(&(node.clone(), id.clone(), r.epoch))
                {
                    return true;
                }
                let alive = r.state == ProcessState::Running || r.restart_in_ms.is_some();
                if alive {
                    stops.push((node.clone(), id.clone(), r.epoch));
                }
                alive
            });
        }
        let now = Instant::now();
        for (node, id, epoch) in stops {
            {
                let mut sent = self
                    .services
                    .start_sent
                    .lock()
                    .unwrap_or_else(|x| x.into_inner());
                let key = (format!("stop {node}/{id}"), epoch);
                if sent
                    .get(&key)
                    .is_some_and(|at| now.duration_since(*at) < RESEND)
                {
                    continue;
                }
                sent.insert(key, now);
            }
            self.send_to_agent(&node, GroupToAgent::Stop { id, epoch });
        }
    }
}

impl Cluster {
    /// The reconciler's timing, timed from this master's start.
    fn services_timing(&self) -> Timing {
        let now = glory_protocol::now_ms();
        Timing {
            observing_since_ms: now.saturating_sub(self.started.elapsed().as_millis() as u64),
            ..Timing::default()
        }
    }
}

/// What an instance's agent is asked to run.
fn process_spec(
    record: &ServiceRecord,
    p: &glory_service_manager::model::Placement,
) -> ProcessSpec {
    let spec = &record.spec;
    let fill = |w: &str| {
        w.replace("{node}", &p.node)
            .replace("{service}", &spec.name)
            .replace("{instance}", &p.id)
            .replace("{pool}", &spec.pool)
    };
    let mut env: std::collections::BTreeMap<String, String> =
        spec.env.iter().map(|(k, v)| (k.clone(), fill(v))).collect();
    env.insert("GLORY_SERVICE".into(), spec.name.clone());
    env.insert("GLORY_INSTANCE".into(), p.id.clone());
    env.insert("GLORY_NODE".into(), p.node.clone());
    env.insert("GLORY_POOL".into(), spec.pool.clone());
    env.insert("GLORY_TENANT".into(), record.tenant.clone());
    let h = &spec.health;
    let kind = match h.kind {
        HealthKind::Tcp => HealthCheckKind::Tcp,
        HealthKind::Http => HealthCheckKind::Http {
            path: h.path.clone().unwrap_or_else(|| "/".into()),
        },
        HealthKind::Exec => HealthCheckKind::Exec {
            command: h
                .path
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .map(&fill)
                .collect(),
        },
    };
    ProcessSpec {
        id: record.process_id(&p.id),
        epoch: p.epoch,
        command: spec.command.iter().map(|w| fill(w)).collect(),
        env,
        instance: Some(InstanceSpec {
            port: spec.port,
            health: Some(HealthCheck {
                kind,
                interval_ms: u64::from(h.interval_seconds) * 1000,
                timeout_ms: u64::from(h.timeout_seconds) * 1000,
                failures: h.failures,
            }),
            stop_timeout_ms: STOP_TIMEOUT_MS,
        }),
    }
}

/// This thread and the CPU time it used so far.
fn thread_cpu() -> Option<(std::thread::ThreadId, Duration)> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_THREAD).ok()?;
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    Some((
        std::thread::current().id(),
        tv(usage.user_time()) + tv(usage.system_time()),
    ))
}

/// Reconcile services on every change and twice a second, until `shutdown`; then
/// close the balancers (a standby must not keep serving a service's address).
pub(crate) async fn reconciler(
    cluster: std::sync::Arc<Cluster>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    crate::pools::on_change_or_tick(&cluster.services.changed, &shutdown, || async {
        let before = thread_cpu();
        let started = Instant::now();
        cluster.reconcile_services().await;
        // The pass's CPU time when it stayed on one thread (the usual case: it awaits
        // only to store a changed record); its wall time otherwise.
        let spent = match (before, thread_cpu()) {
            (Some((t0, c0)), Some((t1, c1))) if t0 == t1 => c1.saturating_sub(c0),
            _ => started.elapsed(),
        };
        let s = &cluster.services;
        s.passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s.pass_cpu_ns.fetch_add(
            spent.as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    })
    .await;
    cluster.services.balancers.close_all().await;
}
