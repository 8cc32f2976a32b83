//! The reconciler's decisions, table by table, and a rolling restart played out
//! pass by pass with a small simulation of agents.

use super::*;
use crate::model::Report;
use crate::spec::ServiceSpec;

const T: Timing = Timing {
    start_timeout_ms: 60_000,
    drain_timeout_ms: 10_000,
    observing_since_ms: 0,
};

fn spec(port: u16, min: u32, desired: u32, max: u32) -> ServiceSpec {
    serde_json::from_value(serde_json::json!({
        "name": "web", "pool": "p", "command": ["srv", "{port}"], "port": port,
        "health": {"kind": "tcp"},
        "instances": {"min": min, "max": max, "desired": desired}
    }))
    .unwrap()
}

fn nodes(n: usize) -> Vec<PoolNode> {
    (1..=n)
        .map(|i| PoolNode {
            id: format!("n{i}"),
            up: true,
        })
        .collect()
}

fn healthy() -> Observed {
    Observed {
        node_up: true,
        node_unknown: false,
        report: Some(Report {
            running: true,
            healthy: Some(true),
            has_check: true,
            ..Default::default()
        }),
    }
}

/// Every placement healthy.
fn all_healthy(r: &ServiceRecord) -> BTreeMap<String, Observed> {
    r.instances
        .iter()
        .map(|p| (p.id.clone(), healthy()))
        .collect()
}

fn kinds(changes: &[Change]) -> Vec<&'static str> {
    changes.iter().map(|c| c.kind.as_str()).collect()
}

fn run(
    r: &ServiceRecord,
    obs: &BTreeMap<String, Observed>,
    n: &[PoolNode],
    now: u64,
) -> (ServiceRecord, Vec<Change>) {
    reconcile(r, obs, n, &BTreeSet::new(), now, T)
}

#[test]
fn a_new_service_is_spread_over_the_pool() {
    let r = ServiceRecord::new(spec(0, 1, 3, 5), "t".into(), 0);
    let (r, changes) = run(&r, &BTreeMap::new(), &nodes(4), 1);
    assert_eq!(kinds(&changes), ["placed", "placed", "placed"]);
    let placed: BTreeSet<&str> = r.instances.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(placed.len(), 3, "one per node: {placed:?}");
    assert_eq!(r.next_instance, 4);
    // Nothing changes while they start, nor once they are healthy.
    let (same, changes) = run(&r, &BTreeMap::new(), &nodes(4), 2);
    assert!(changes.is_empty() && same == r);
    let (same, changes) = run(&r, &all_healthy(&r), &nodes(4), 3);
    assert!(changes.is_empty() && same == r);
    // More instances than nodes: two on the least loaded ones (port 0).
    let mut five = r.clone();
    five.desired = 5;
    let (five, _) = run(&five, &all_healthy(&r), &nodes(4), 4);
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &five.instances {
        *per_node.entry(&p.node).or_default() += 1;
    }
    assert_eq!(per_node.values().copied().max(), Some(2));
    assert_eq!(five.instances.len(), 5);
}

#[test]
fn failures_are_drained_and_replaced_elsewhere() {
    let r = ServiceRecord::new(spec(0, 1, 2, 5), "t".into(), 0);
    let (r, _) = run(&r, &BTreeMap::new(), &nodes(3), 1);
    let failing = [
        (
            "node down",
            Observed {
                node_up: false,
                node_unknown: false,
                report: healthy().report,
            },
            "not up",
        ),
        (
            "process ended",
            Observed {
                node_up: true,
                node_unknown: false,
                report: Some(Report {
                    ended: true,
                    detail: "exit status: 1".into(),
                    ..Default::default()
                }),
            },
            "process ended: exit status: 1",
        ),
        (
            "unhealthy",
            Observed {
                node_up: true,
                node_unknown: false,
                report: Some(Report {
                    running: true,
                    healthy: Some(false),
                    has_check: true,
                    detail: "GET /: 503".into(),
                    ..Default::default()
                }),
            },
            "health check: GET /: 503",
        ),
    ];
    for (what, bad, why) in failing {
        let mut obs = all_healthy(&r);
        let victim = r.instances[0].clone();
        obs.insert(victim.id.clone(), bad);
        let (next, changes) = run(&r, &obs, &nodes(3), 10);
        assert_eq!(kinds(&changes), ["failed", "placed"], "{what}");
        assert!(
            changes[0].reason.contains(why),
            "{what}: {}",
            changes[0].reason
        );
        let new = next.instances.last().unwrap();
        assert_ne!(new.node, victim.node, "{what}: replaced on another node");
        let drained = next.instances.iter().find(|p| p.id == victim.id).unwrap();
        assert!(drained.draining.is_some(), "{what}: drained first");
        assert_eq!(
            state_of(drained, obs.get(&drained.id), 10, T).0,
            InstanceState::Stopping
        );
        // The balancer no longer has it: removed.
        let drained_set: BTreeSet<String> = [victim.id.clone()].into();
        let (after, changes) = reconcile(&next, &obs, &nodes(3), &drained_set, 11, T);
        assert_eq!(kinds(&changes), ["removed"], "{what}");
        assert!(after.instances.iter().all(|p| p.id != victim.id));
        // Or the drain timed out.
        let (after, changes) = run(&next, &obs, &nodes(3), 10 + T.drain_timeout_ms);
        assert_eq!(kinds(&changes), ["removed"], "{what}");
        assert_eq!(after.instances.len(), 2);
    }
}

#[test]
fn starting_too_long_is_a_failure() {
    let r = ServiceRecord::new(spec(0, 1, 1, 5), "t".into(), 0);
    let (r, _) = run(&r, &BTreeMap::new(), &nodes(2), 0);
    let p = &r.instances[0];
    let up = Observed {
        node_up: true,
        node_unknown: false,
        report: None,
    };
    assert_eq!(state_of(p, Some(&up), 1000, T).0, InstanceState::Starting);
    let (s, why) = state_of(p, Some(&up), T.start_timeout_ms + 1, T);
    assert_eq!(s, InstanceState::Failed);
    assert!(why.contains("never confirmed"), "{why}");
    let checking = Observed {
        node_up: true,
        node_unknown: false,
        report: Some(Report {
            running: true,
            has_check: true,
            ..Default::default()
        }),
    };
    assert_eq!(
        state_of(p, Some(&checking), 1000, T).0,
        InstanceState::Starting
    );
    let (s, why) = state_of(p, Some(&checking), T.start_timeout_ms + 1, T);
    assert_eq!(s, InstanceState::Failed);
    assert!(why.contains("health check"), "{why}");
    // A new master (observing since 100 s) times an old placement from its own start.
    let later = Timing {
        observing_since_ms: 100_000,
        ..T
    };
    let silent = Observed {
        node_up: true,
        node_unknown: false,
        report: None,
    };
    assert_eq!(
        state_of(p, Some(&silent), 150_000, later).0,
        InstanceState::Starting
    );
    assert_eq!(
        state_of(p, Some(&silent), 161_000, later).0,
        InstanceState::Failed
    );
    // A node nobody has heard from yet is not a failure.
    let unknown = Observed {
        node_up: false,
        node_unknown: true,
        report: None,
    };
    let (s, why) = state_of(p, Some(&unknown), 10 * T.start_timeout_ms, T);
    assert_eq!(s, InstanceState::Starting, "{why}");
    // No check: running is healthy.
    let unchecked = Observed {
        node_up: true,
        node_unknown: false,
        report: Some(Report {
            running: true,
            ..Default::default()
        }),
    };
    assert_eq!(
        state_of(p, Some(&unchecked), 1, T).0,
        InstanceState::Healthy
    );
}

#[test]
fn surplus_is_drained_least_useful_first() {
    let r = ServiceRecord::new(spec(0, 1, 4, 5), "t".into(), 0);
    let (mut r, _) = run(&r, &BTreeMap::new(), &nodes(4), 1);
    let mut obs = all_healthy(&r);
    let starting = r.instances[1].id.clone();
    obs.insert(
        starting.clone(),
        Observed {
            node_up: true,
            node_unknown: false,
            report: None,
        },
    );
    r.desired = 2;
    let (next, changes) = run(&r, &obs, &nodes(4), 2);
    assert_eq!(kinds(&changes), ["draining", "draining"]);
    assert_eq!(
        changes[0].instance, starting,
        "the one not yet healthy first"
    );
    assert_eq!(changes[1].instance, r.instances[3].id, "then the newest");
    assert_eq!(
        next.instances
            .iter()
            .filter(|p| p.draining.is_none())
            .count(),
        2
    );
}

#[test]
fn a_fixed_port_takes_one_node_each() {
    let r = ServiceRecord::new(spec(8080, 1, 3, 5), "t".into(), 0);
    let (r, changes) = run(&r, &BTreeMap::new(), &nodes(2), 1);
    assert_eq!(kinds(&changes), ["placed", "placed", "unplaced"]);
    assert!(
        changes[2].reason.contains("port 8080"),
        "{}",
        changes[2].reason
    );
    assert_eq!(r.instances.len(), 2);
    let mut down = nodes(2);
    down.iter_mut().for_each(|n| n.up = false);
    let empty = ServiceRecord::new(spec(0, 1, 1, 5), "t".into(), 0);
    let (_, changes) = run(&empty, &BTreeMap::new(), &down, 1);
    assert!(changes[0].reason.contains("no node up"), "{changes:?}");
}

#[test]
fn stop_and_start_keep_the_placements() {
    let r = ServiceRecord::new(spec(0, 1, 2, 5), "t".into(), 0);
    let (mut r, _) = run(&r, &BTreeMap::new(), &nodes(3), 1);
    let before: Vec<String> = r.instances.iter().map(|p| p.node.clone()).collect();
    r.stopped = true;
    let (mut r, changes) = run(&r, &all_healthy(&r), &nodes(3), 2);
    assert_eq!(kinds(&changes), ["stopped", "stopped"]);
    for p in &r.instances {
        assert_eq!(state_of(p, None, 3, T).0, InstanceState::Stopped);
    }
    let (same, changes) = run(&r, &BTreeMap::new(), &nodes(3), 3);
    assert!(
        changes.is_empty() && same == r,
        "a stopped service stays still"
    );
    r.stopped = false;
    let (r, changes) = run(&r, &BTreeMap::new(), &nodes(3), 4);
    assert_eq!(kinds(&changes), ["placed", "placed"]);
    let after: Vec<String> = r.instances.iter().map(|p| p.node.clone()).collect();
    assert_eq!(before, after);
    assert!(r.instances.iter().all(|p| p.epoch == 2), "new processes");
}

/// Agents that make a new instance healthy one pass after it is placed (or restarted).
fn simulate_restart(port: u16, min: u32, desired: u32, pool: usize) -> Vec<Change> {
    let r = ServiceRecord::new(spec(port, min, desired, 10), "t".into(), 0);
    let (mut r, _) = run(&r, &BTreeMap::new(), &nodes(pool), 1);
    let originals: BTreeSet<String> = r.instances.iter().map(|p| p.id.clone()).collect();
    // Healthy: placed (or restarted in place) before the previous pass.
    let mut seen: BTreeMap<(String, u64), u64> = BTreeMap::new();
    begin_restart(&mut r, 2);
    let mut all = Vec::new();
    for now in 3..200u64 {
        let obs: BTreeMap<String, Observed> = r
            .instances
            .iter()
            .map(|p| {
                let first = *seen.entry((p.id.clone(), p.epoch)).or_insert(now);
                let o = if first < now {
                    healthy()
                } else {
                    Observed {
                        node_up: true,
                        node_unknown: false,
                        report: None,
                    }
                };
                (p.id.clone(), o)
            })
            .collect();
        let healthy_now = r
            .instances
            .iter()
            .filter(|p| state_of(p, obs.get(&p.id), now, T).0 == InstanceState::Healthy)
            .count() as u32;
        if now > 4 {
            assert!(
                healthy_now >= min,
                "at {now}: {healthy_now} healthy, min {min}: {r:?}"
            );
        }
        let drained: BTreeSet<String> = r
            .instances
            .iter()
            .filter(|p| p.draining.is_some())
            .map(|p| p.id.clone())
            .collect();
        let (next, changes) = reconcile(&r, &obs, &nodes(pool), &drained, now, T);
        r = next;
        let done = changes.iter().any(|c| c.kind == ChangeKind::RestartDone);
        all.extend(changes);
        if done {
            assert!(r.restart.is_none());
            let live: Vec<&Placement> = r
                .instances
                .iter()
                .filter(|p| p.draining.is_none())
                .collect();
            assert_eq!(live.len() as u32, desired);
            if port == 0 {
                assert!(
                    live.iter().all(|p| !originals.contains(&p.id)),
                    "all replaced"
                );
            } else {
                assert!(live
                    .iter()
                    .all(|p| originals.contains(&p.id) && p.epoch == 2));
            }
            return all;
        }
    }
    panic!("the rolling restart never ended: {r:?}");
}

#[test]
fn a_rolling_restart_replaces_one_at_a_time_and_keeps_min_healthy() {
    let changes = simulate_restart(0, 3, 3, 4);
    let restarted = changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Restarted)
        .count();
    assert_eq!(restarted, 3);
    // With a fixed port on a pool it fills, instances restart in place, one at a time.
    let changes = simulate_restart(8080, 2, 3, 3);
    let in_place = changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Restarted && c.reason.contains("in place"))
        .count();
    assert_eq!(in_place, 3);
}
