//! The reconciler's decision for one service, pure (time and observations passed in):
//! from the stored record and what the agents and nodes say, the next record and the
//! changes to announce. The cluster master writes the record (one compare-and-swap)
//! and derives the processes to start and stop from it, so a decision lost to a
//! failover is simply made again.
//!
//! One pass:
//! 1. **Drains end**: an instance drained out of the balancer (or past the drain
//!    timeout) is removed; its process is stopped because nothing wants it any more.
//! 2. **Failures**: an instance whose node is down, whose process ended, which failed
//!    its health checks or never started is drained, then replaced.
//! 3. **Stop and start**: a stopped service's instances are marked stopped; a started
//!    one's come back under a new epoch.
//! 4. **Rolling restart**: one instance at a time, a new instance is placed first and
//!    the old one drained only once the new one is healthy, so the service never has
//!    fewer healthy instances than before (at least `min`). Where no other node can
//!    take it (a fixed port on every node), the instance restarts in place, only
//!    while the others keep `min` healthy.
//! 5. **Count**: fewer instances than desired: new ones on the pool's up nodes with the
//!    fewest of this service (spread), avoiding nodes where one just failed; more:
//!    the surplus drained, unhealthy and starting ones first, then the newest.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Drain, InstanceState, Observed, Placement, RollingRestart, ServiceRecord};

/// Timing of the reconciler.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// An instance that is neither healthy nor failed this long after it was placed
    /// (or restarted) failed to start.
    pub start_timeout_ms: u64,
    /// A drain ends after this long even if connections remain.
    pub drain_timeout_ms: u64,
    /// When the deciding master began observing (ms since the epoch): a placement
    /// older than that is timed from then, since the reports it had died with the
    /// previous master.
    pub observing_since_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            start_timeout_ms: 120_000,
            drain_timeout_ms: 30_000,
            observing_since_ms: 0,
        }
    }
}

/// A node of the service's pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolNode {
    pub id: String,
    pub up: bool,
}

/// Something the reconciler did, for the event stream and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub instance: String,
    pub node: String,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Placed,
    Failed,
    Draining,
    Removed,
    Stopped,
    Restarted,
    /// No node of the pool can take an instance the service needs.
    Unplaced,
    RestartDone,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Placed => "placed",
            ChangeKind::Failed => "failed",
            ChangeKind::Draining => "draining",
            ChangeKind::Removed => "removed",
            ChangeKind::Stopped => "stopped",
            ChangeKind::Restarted => "restarted",
            ChangeKind::Unplaced => "unplaced",
            ChangeKind::RestartDone => "restart_done",
        }
    }
}

/// The state of `p` as the API shows it, with why when it is not healthy.
pub fn state_of(
    p: &Placement,
    o: Option<&Observed>,
    now_ms: u64,
    t: Timing,
) -> (InstanceState, String) {
    if p.stopped {
        return (InstanceState::Stopped, "service stopped".into());
    }
    if let Some(d) = &p.draining {
        return (InstanceState::Stopping, d.reason.clone());
    }
    // Nothing observed yet: nothing known against it.
    let unknown = Observed {
        node_up: true,
        node_unknown: false,
        report: None,
    };
    let o = o.unwrap_or(&unknown);
    if !o.node_up && !o.node_unknown {
        return (InstanceState::Failed, format!("node {} is not up", p.node));
    }
    let placed = p.created_ms.max(t.observing_since_ms);
    let Some(r) = &o.report else {
        if o.node_unknown {
            return (
                InstanceState::Starting,
                format!("node {} is not heard from yet", p.node),
            );
        }
        if now_ms.saturating_sub(placed) > t.start_timeout_ms {
            return (
                InstanceState::Failed,
                "its agent never confirmed the start".into(),
            );
        }
        return (InstanceState::Starting, "waiting for its agent".into());
    };
    if r.ended || !r.running {
        return (
            InstanceState::Failed,
            format!("process ended: {}", r.detail),
        );
    }
    match (r.healthy, r.has_check) {
        (Some(true), _) | (None, false) => (InstanceState::Healthy, String::new()),
        (Some(false), _) => (
            InstanceState::Unhealthy,
            format!("health check: {}", r.detail),
        ),
        (None, true) => {
            if now_ms.saturating_sub(r.since_ms.max(placed)) > t.start_timeout_ms {
                (InstanceState::Failed, "never passed a health check".into())
            } else {
                (
                    InstanceState::Starting,
                    "waiting for its first health check".into(),
                )
            }
        }
    }
}

/// The next record for `record` and what changed (an unchanged record when nothing
/// did). `drained`: draining instances the balancer no longer has (every draining
/// instance when the service has no balancer).
pub fn reconcile(
    record: &ServiceRecord,
    observed: &BTreeMap<String, Observed>,
    nodes: &[PoolNode],
    drained: &BTreeSet<String>,
    now_ms: u64,
    t: Timing,
) -> (ServiceRecord, Vec<Change>) {
    let mut r = record.clone();
    let mut changes = Vec::new();
    let change = |kind, p: &Placement, reason: &str| Change {
        kind,
        instance: p.id.clone(),
        node: p.node.clone(),
        reason: reason.to_string(),
    };
    let states: BTreeMap<String, (InstanceState, String)> = r
        .instances
        .iter()
        .map(|p| (p.id.clone(), state_of(p, observed.get(&p.id), now_ms, t)))
        .collect();
    let state = |id: &str| states.get(id).map(|s| s.0);

    // 1. Drains that ended.
    r.instances.retain(|p| {
        let Some(d) = &p.draining else { return true };
        let done =
            drained.contains(&p.id) || now_ms.saturating_sub(d.since_ms) >= t.drain_timeout_ms;
        if done {
            changes.push(change(ChangeKind::Removed, p, &d.reason));
        }
        !done
    });

    // 2. Failures: drained, then replaced (below) on another node.
    let mut avoid: BTreeSet<String> = BTreeSet::new();
    for p in r
        .instances
        .iter_mut()
        .filter(|p| p.draining.is_none() && !p.stopped)
    {
        let (s, why) = &states[&p.id];
        if matches!(s, InstanceState::Failed | InstanceState::Unhealthy) {
            avoid.insert(p.node.clone());
            changes.push(change(ChangeKind::Failed, p, why));
            p.draining = Some(Drain {
                since_ms: now_ms,
                reason: format!("failed: {why}"),
            });
        }
    }

    // 3. Stopped or started.
    if r.stopped {
        for p in r.instances.iter_mut().filter(|p| !p.stopped) {
            p.stopped = true;
            p.draining = None;
            p.replaces = None;
            changes.push(change(ChangeKind::Stopped, p, "service stopped"));
        }
        r.restart = None;
        return finish(record, r, changes);
    }
    for p in r.instances.iter_mut().filter(|p| p.stopped) {
        p.stopped = false;
        p.epoch += 1;
        p.created_ms = now_ms;
        changes.push(change(ChangeKind::Placed, p, "service started"));
    }

    // 4. Rolling restart.
    rolling_restart(&mut r, &state, nodes, now_ms, t, &mut changes);

    // 5. Count.
    let live: Vec<&Placement> = r
        .instances
        .iter()
        .filter(|p| p.draining.is_none())
        .collect();
    let surges = live
        .iter()
        .filter(|p| {
            p.replaces
                .as_ref()
                .is_some_and(|old| live.iter().any(|q| &q.id == old))
        })
        .count();
    let effective = live.len() - surges;
    let desired = r.desired as usize;
    if effective < desired {
        for _ in effective..desired {
            match place(&mut r, nodes, &avoid, now_ms, None) {
                Some(p) => changes.push(change(ChangeKind::Placed, &p, "below the desired count")),
                None => {
                    changes.push(Change {
                        kind: ChangeKind::Unplaced,
                        instance: String::new(),
                        node: String::new(),
                        reason: unplaced_reason(&r, nodes),
                    });
                    break;
                }
            }
        }
    } else if effective > desired {
        // Surplus: the least useful first (not healthy, then newest); never a
        // rolling restart's pair.
        let mut surplus: Vec<(u8, usize, String)> = r
            .instances
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, p)| p.draining.is_none() && p.replaces.is_none())
            .map(|(age, p)| {
                let rank = match state(&p.id) {
                    Some(InstanceState::Healthy) => 2,
                    Some(InstanceState::Starting) => 1,
                    _ => 0,
                };
                // Placed later: further down the list.
                (rank, usize::MAX - age, p.id.clone())
            })
            .collect();
        surplus.sort();
        for (_, _, id) in surplus.into_iter().take(effective - desired) {
            if let Some(p) = r.instances.iter_mut().find(|p| p.id == id) {
                p.draining = Some(Drain {
                    since_ms: now_ms,
                    reason: "above the desired count".into(),
                });
                changes.push(change(ChangeKind::Draining, p, "above the desired count"));
            }
        }
    }
    finish(record, r, changes)
}

fn finish(
    old: &ServiceRecord,
    new: ServiceRecord,
    changes: Vec<Change>,
) -> (ServiceRecord, Vec<Change>) {
    if &new == old {
        // Only what the caller should hear while nothing changes (announced once).
        let stuck = changes
            .into_iter()
            .filter(|c| c.kind == ChangeKind::Unplaced)
            .collect();
        (new, stuck)
    } else {
        (new, changes)
    }
}

fn rolling_restart(
    r: &mut ServiceRecord,
    state: &dyn Fn(&str) -> Option<InstanceState>,
    nodes: &[PoolNode],
    now_ms: u64,
    _t: Timing,
    changes: &mut Vec<Change>,
) {
    let Some(mut rr) = r.restart.take() else {
        return;
    };
    let ids: BTreeSet<String> = r
        .instances
        .iter()
        .filter(|p| p.draining.is_none())
        .map(|p| p.id.clone())
        .collect();
    rr.pending.retain(|id| ids.contains(id));
    // A new instance in the making for the first pending one?
    if let Some(i) = r
        .instances
        .iter()
        .position(|p| p.replaces.is_some() && p.draining.is_none())
    {
        let new_id = r.instances[i].id.clone();
        let old = r.instances[i].replaces.clone().unwrap_or_default();
        if state(&new_id) == Some(InstanceState::Healthy) || !ids.contains(&old) {
            r.instances[i].replaces = None;
            if let Some(p) = r.instances.iter_mut().find(|p| p.id == old) {
                p.draining = Some(Drain {
                    since_ms: now_ms,
                    reason: "rolling restart: replaced".into(),
                });
                changes.push(Change {
                    kind: ChangeKind::Restarted,
                    instance: old.clone(),
                    node: p.node.clone(),
                    reason: format!("replaced by {new_id}"),
                });
            }
            rr.pending.retain(|id| id != &old);
        }
        r.restart = Some(rr);
        return;
    }
    // An instance restarted in place, waiting to be healthy again?
    if let Some(first) = rr.pending.first().cloned() {
        let in_place = r
            .instances
            .iter()
            .find(|p| p.id == first)
            .is_some_and(|p| p.created_ms > rr.started_ms);
        if in_place {
            if state(&first) == Some(InstanceState::Healthy) {
                rr.pending.remove(0);
            } else {
                r.restart = Some(rr);
                return;
            }
        }
    }
    let Some(first) = rr.pending.first().cloned() else {
        changes.push(Change {
            kind: ChangeKind::RestartDone,
            instance: String::new(),
            node: String::new(),
            reason: "every instance restarted".into(),
        });
        return;
    };
    // Only from a settled state: every live instance healthy.
    let settled = r
        .instances
        .iter()
        .filter(|p| p.draining.is_none() && !p.stopped)
        .all(|p| state(&p.id) == Some(InstanceState::Healthy));
    if settled {
        let old_node = r
            .instances
            .iter()
            .find(|p| p.id == first)
            .map(|p| p.node.clone());
        let avoid: BTreeSet<String> = old_node.into_iter().collect();
        if let Some(p) = place(r, nodes, &avoid, now_ms, Some(first.clone())) {
            changes.push(Change {
                kind: ChangeKind::Placed,
                instance: p.id.clone(),
                node: p.node.clone(),
                reason: format!("rolling restart: replaces {first}"),
            });
        } else {
            let healthy = r
                .instances
                .iter()
                .filter(|p| p.draining.is_none() && state(&p.id) == Some(InstanceState::Healthy))
                .count() as u32;
            if healthy > r.spec.instances.min {
                if let Some(p) = r.instances.iter_mut().find(|p| p.id == first) {
                    p.epoch += 1;
                    p.created_ms = now_ms;
                    changes.push(Change {
                        kind: ChangeKind::Restarted,
                        instance: p.id.clone(),
                        node: p.node.clone(),
                        reason: "rolling restart in place: no other node can take it".into(),
                    });
                }
            }
        }
    }
    r.restart = Some(rr);
}

/// Place a new instance on the best node (up, not avoided, the fewest of this
/// service's instances, and none when the port is fixed), if any.
fn place(
    r: &mut ServiceRecord,
    nodes: &[PoolNode],
    avoid: &BTreeSet<String>,
    now_ms: u64,
    replaces: Option<String>,
) -> Option<Placement> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for p in r
        .instances
        .iter()
        .filter(|p| p.draining.is_none() || r.spec.port != 0)
    {
        *count.entry(p.node.as_str()).or_default() += 1;
    }
    let fixed_port = r.spec.port != 0;
    let pick = |avoid: &BTreeSet<String>| {
        nodes
            .iter()
            .filter(|n| n.up && !avoid.contains(&n.id))
            .map(|n| (count.get(n.id.as_str()).copied().unwrap_or(0), &n.id))
            .filter(|(c, _)| !fixed_port || *c == 0)
            .min()
            .map(|(_, id)| id.clone())
    };
    // Avoided nodes only when nothing else will do (for a replacement, not a restart).
    let node = pick(avoid).or_else(|| {
        if replaces.is_none() {
            pick(&BTreeSet::new())
        } else {
            None
        }
    })?;
    let id = format!("{}-{}", r.spec.name, r.next_instance);
    r.next_instance += 1;
    let p = Placement {
        id,
        node,
        epoch: 1,
        created_ms: now_ms,
        draining: None,
        stopped: false,
        replaces,
    };
    r.instances.push(p.clone());
    Some(p)
}

fn unplaced_reason(r: &ServiceRecord, nodes: &[PoolNode]) -> String {
    let up = nodes.iter().filter(|n| n.up).count();
    if up == 0 {
        format!("pool {} has no node up", r.spec.pool)
    } else {
        format!(
            "every up node of pool {} ({up}) already runs an instance on port {}",
            r.spec.pool, r.spec.port
        )
    }
}

/// Start a rolling restart of every running instance (replaces one under way).
pub fn begin_restart(r: &mut ServiceRecord, now_ms: u64) {
    let pending = r
        .instances
        .iter()
        .filter(|p| p.draining.is_none() && !p.stopped && p.replaces.is_none())
        .map(|p| p.id.clone())
        .collect();
    r.restart = Some(RollingRestart {
        started_ms: now_ms,
        pending,
    });
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
