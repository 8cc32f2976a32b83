//! Nothing acknowledged is lost: a checker in the style of Jepsen. Clients allocate and
//! release pool nodes concurrently, each through whichever cluster master answers,
//! while the test kills the leading cluster master (`kill -9`), kills the etcd leader
//! and partitions a group master from the cluster masters. Every operation is recorded
//! with when it was asked, when it was answered and how: acknowledged, refused (it did
//! nothing), or unknown (no answer: it may or may not have happened). Afterwards the
//! final pools must agree with the history:
//!
//! - every acknowledged allocation not followed by a release is still in its pool;
//! - no acknowledged release is undone (the node is not in that pool);
//! - a pool holds no node it was never given, beyond its unknown allocations;
//! - no node is in two pools, at the end or at any moment the history pins down: an
//!   allocation acknowledged while another pool certainly held the node is a violation.
//!
//! The whole history is written to `history.json` in the test directory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use glory::client::ApiClient;
use glory_tests::rig::{get, Rig};
use glory_tests::rng::Rng;
use glory_tests::wait::until_some;
use reqwest::Method;
use serde::Serialize;
use serde_json::{json, Value};

const CLIENTS: usize = 4;
/// Nodes each client tries to hold at most (together more than there are).
const HOLD: usize = 7;
const NODES: usize = 24;
const CMS: [&str; 2] = ["cm1", "cm2"];

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Kind {
    /// Grow the pool by one node (or create it with one).
    Grow,
    Release(String),
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    /// Acknowledged: the nodes added (a grow) or the node removed.
    Ok(Vec<String>),
    /// Refused: it changed nothing.
    Refused(String),
    /// No answer: it may or may not have happened.
    Unknown(String),
}

#[derive(Clone, Debug, Serialize)]
struct Op {
    client: usize,
    kind: Kind,
    /// Milliseconds since the start of the run.
    invoked: u64,
    completed: u64,
    outcome: Outcome,
    via: &'static str,
}

type History = Arc<Mutex<Vec<Op>>>;

/// The outcome of one request's answer (or of its absence).
fn judge(answer: anyhow::Result<(u16, Value)>, ok: impl Fn(&Value) -> Vec<String>) -> Outcome {
    match answer {
        Ok((200 | 201, body)) => Outcome::Ok(ok(&body)),
        // Refusals before anything was written: the request, the pool, the nodes, a
        // standby, or a write fenced off (the compare failed, nothing landed).
        Ok((status @ (400..=499), body)) => Outcome::Refused(format!("{status} {body}")),
        Ok((503, body))
            if body["error"]["code"] == "standby" || body["error"]["code"] == "not_leader" =>
        {
            Outcome::Refused(format!("503 {body}"))
        }
        // The key master did not answer a write: it may have committed it.
        Ok((status, body)) => Outcome::Unknown(format!("{status} {body}")),
        Err(e) => {
            let text = format!("{e:#}");
            if text.contains("Connection refused") {
                Outcome::Refused(text)
            } else {
                Outcome::Unknown(text)
            }
        }
    }
}

/// One client: pool `p{id}`, grown and shrunk one node at a time until `stop`.
async fn client(
    id: usize,
    apis: Vec<ApiClient>,
    history: History,
    start: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let pool = format!("p{id}");
    let mut via = id % apis.len();
    let mut holding: Vec<String> = Vec::new();
    let mut created = false;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d_u64 ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9));
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let roll = rng.next_u64();
        let release =
            created && !holding.is_empty() && (holding.len() >= HOLD || roll.is_multiple_of(2));
        let api = &apis[via];
        let used = CMS[via];
        let invoked = start.elapsed().as_millis() as u64;
        let (kind, outcome) = if !created {
            let body =
                json!({"name": pool, "component": "custom:jepsen", "tenant": "jepsen", "size": 1});
            let answer = api.request(Method::POST, "/api/v1/pools", Some(body)).await;
            let exists = matches!(&answer, Ok((409, b)) if b["error"]["code"] == "conflict" || b.to_string().contains("exists"));
            let outcome = judge(answer, |b| {
                b["nodes"]
                    .as_array()
                    .map(|n| {
                        n.iter()
                            .filter_map(|n| n["id"].as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            });
            // Created by an earlier attempt whose answer was lost.
            created = matches!(outcome, Outcome::Ok(_)) || exists;
            (Kind::Grow, outcome)
        } else if release {
            let node = holding[(roll as usize / 2) % holding.len()].clone();
            let path = format!("/api/v1/pools/{pool}/nodes/{node}");
            let answer = api.request(Method::DELETE, &path, None).await;
            let outcome = judge(answer, |b| {
                vec![b["removed"].as_str().unwrap_or("").to_string()]
            });
            // Released, or perhaps released: no longer counted on. A master that could
            // not take the request is asked again later.
            let retry = matches!(&outcome, Outcome::Refused(why) if why.starts_with("503") || why.contains("Connection refused"));
            if !retry {
                holding.retain(|n| *n != node);
            }
            (Kind::Release(node), outcome)
        } else {
            let path = format!("/api/v1/pools/{pool}/nodes");
            let answer = api
                .request(Method::POST, &path, Some(json!({"count": 1})))
                .await;
            let outcome = judge(answer, |b| {
                b["added"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|n| n.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            });
            (Kind::Grow, outcome)
        };
        if let Outcome::Ok(added) = &outcome {
            if kind == Kind::Grow {
                holding.extend(added.iter().cloned());
            }
        } else {
            // Try the other cluster master next: this one may be down or standing by.
            via = (via + 1) % apis.len();
        }
        let completed = start.elapsed().as_millis() as u64;
        history.lock().unwrap().push(Op {
            client: id,
            kind,
            invoked,
            completed,
            outcome,
            via: used,
        });
        tokio::time::sleep(Duration::from_millis(40 + roll % 80)).await;
    }
}

/// The leading cluster master's name and client, once one leads.
async fn leader(rig: &Rig) -> anyhow::Result<(&'static str, ApiClient)> {
    let apis: Vec<ApiClient> = CMS
        .iter()
        .map(|cm| rig.api(cm))
        .collect::<anyhow::Result<_>>()?;
    let (i, _) = until_some(
        "a leading cluster master",
        Duration::from_secs(30),
        || async {
            for (i, api) in apis.iter().enumerate() {
                if get(api, "/healthz")
                    .await
                    .is_some_and(|h| h["role"] == "active")
                {
                    return Some(i);
                }
            }
            None
        },
    )
    .await?;
    Ok((CMS[i], apis[i].clone()))
}

/// Restart cluster masters that are gone (killed, or stepped down), as a supervisor
/// with `Restart=always` would.
async fn supervise(rig: &mut Rig) -> anyhow::Result<()> {
    for cm in CMS {
        if let Some(status) = rig.exited(cm) {
            eprintln!("{cm} exited ({status})");
        }
        if !rig.procs.contains(cm) {
            eprintln!("restarting {cm}");
            rig.cluster_master(cm).await?;
        }
    }
    Ok(())
}

/// Run the faults while the clients work: each step at its time after `start`.
async fn faults(rig: &mut Rig, start: Instant) -> anyhow::Result<()> {
    let at = |s: u64| start + Duration::from_secs(s);
    wait_supervising(rig, at(4)).await?;
    let (cm, _) = leader(rig).await?;
    eprintln!(
        "{:?}: kill -9 the leading cluster master {cm}",
        start.elapsed()
    );
    rig.procs.kill9(cm)?;
    wait_supervising(rig, at(14)).await?;
    let etcd = rig.etcd.as_mut().context("etcd")?;
    let member = etcd.leader().await?;
    eprintln!(
        "{:?}: kill -9 the etcd leader (member {member})",
        start.elapsed()
    );
    etcd.kill(member);
    wait_supervising(rig, at(20)).await?;
    rig.etcd.as_mut().context("etcd")?.restart(member).await?;
    eprintln!("{:?}: etcd member {member} back", start.elapsed());
    wait_supervising(rig, at(24)).await?;
    eprintln!(
        "{:?}: partition group master gm-b from the cluster masters",
        start.elapsed()
    );
    for cm in CMS {
        rig.net.partition("gm-b", cm);
    }
    wait_supervising(rig, at(32)).await?;
    rig.net.heal();
    eprintln!("{:?}: healed", start.elapsed());
    wait_supervising(rig, at(40)).await
}

async fn wait_supervising(rig: &mut Rig, until: Instant) -> anyhow::Result<()> {
    while Instant::now() < until {
        supervise(rig).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// What the history and the final pools disagree on (empty: nothing).
fn check(history: &[Op], pools: &BTreeMap<usize, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    // No node in two pools at the end.
    let mut owner: BTreeMap<&String, usize> = BTreeMap::new();
    for (pool, nodes) in pools {
        for node in nodes {
            if let Some(other) = owner.insert(node, *pool) {
                problems.push(format!("{node} is in p{other} and p{pool}"));
            }
        }
    }
    let clients: BTreeSet<usize> = history
        .iter()
        .map(|o| o.client)
        .chain(pools.keys().copied())
        .collect();
    for client in clients {
        let ops: Vec<&Op> = history.iter().filter(|o| o.client == client).collect();
        let empty = BTreeSet::new();
        let pool = pools.get(&client).unwrap_or(&empty);
        // The last op that may have changed each node's membership, in client order.
        let mut last: BTreeMap<String, &Op> = BTreeMap::new();
        let mut unknown_grows = 0;
        for op in &ops {
            match (&op.kind, &op.outcome) {
                (Kind::Grow, Outcome::Ok(added)) => {
                    for node in added {
                        last.insert(node.clone(), op);
                    }
                }
                (Kind::Grow, Outcome::Unknown(_)) => unknown_grows += 1,
                (Kind::Release(node), Outcome::Ok(_) | Outcome::Unknown(_)) => {
                    last.insert(node.clone(), op);
                }
                _ => {}
            }
        }
        // Nodes there that no acknowledged allocation explains: given to the pool by an
        // unanswered grow (which may take effect at any time, even after a later
        // release of the same node), or else a violation.
        let mut unexplained: Vec<String> = pool
            .iter()
            .filter(|n| !last.contains_key(*n))
            .cloned()
            .collect();
        for (node, op) in &last {
            let present = pool.contains(node);
            match (&op.kind, &op.outcome) {
                (Kind::Grow, Outcome::Ok(_)) if !present => problems.push(format!(
                    "p{client}: acknowledged allocation of {node} (answered at {} ms) lost",
                    op.completed
                )),
                (Kind::Release(_), Outcome::Ok(_)) if present && unknown_grows == 0 => problems
                    .push(format!(
                        "p{client}: {node} released (answered at {} ms) but still allocated",
                        op.completed
                    )),
                (Kind::Release(_), Outcome::Ok(_)) if present => {
                    unexplained.push(format!("{node} (released at {} ms)", op.completed))
                }
                _ => {}
            }
        }
        if unexplained.len() > unknown_grows {
            let strangers = unexplained;
            problems.push(format!(
                "p{client} holds {strangers:?}, which no acknowledged allocation explains, with {unknown_grows} unanswered grows"
            ));
        }
    }
    // No allocation acknowledged while another pool certainly held the node: held
    // from its acknowledged allocation until its release was asked for.
    let mut held: Vec<(usize, &String, u64, u64)> = Vec::new();
    for op in history {
        if let (Kind::Grow, Outcome::Ok(added)) = (&op.kind, &op.outcome) {
            for node in added {
                let released = history
                    .iter()
                    .filter(|r| r.client == op.client && r.invoked >= op.completed)
                    .find(|r| {
                        matches!(&r.kind, Kind::Release(n) if n == node)
                            && !matches!(r.outcome, Outcome::Refused(_))
                    })
                    .map_or(u64::MAX, |r| r.invoked);
                held.push((op.client, node, op.completed, released));
            }
        }
    }
    for op in history {
        if let (Kind::Grow, Outcome::Ok(added)) = (&op.kind, &op.outcome) {
            for node in added {
                for (other, n, from, to) in &held {
                    if *other != op.client
                        && *n == node
                        && *from <= op.invoked
                        && op.completed <= *to
                    {
                        problems.push(format!(
                            "{node} given to p{} ({}-{} ms) while p{other} held it ({from}-{to} ms)",
                            op.client, op.invoked, op.completed
                        ));
                    }
                }
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_allocations_survive_crashes_and_partitions() -> anyhow::Result<()> {
    glory_tests::init_logging();
    let mut rig = Rig::start(&["etcd", "cm1", "cm2", "gm-a", "gm-b", "agents"], 3).await?;
    rig.cluster_master("cm1").await?;
    rig.cluster_master("cm2").await?;
    rig.group_master("gm-a", "g00", &CMS)?;
    rig.group_master("gm-b", "g01", &CMS)?;
    let (_, api) = leader(&rig).await?;
    until_some("both groups connected", Duration::from_secs(30), || async {
        let c = get(&api, "/api/v1/cluster").await?;
        (c["groups_connected"] == 2).then_some(())
    })
    .await?;
    rig.agents(NODES, &CMS)?;
    until_some("every node up", Duration::from_secs(60), || async {
        let c = get(&api, "/api/v1/cluster").await?;
        (c["nodes_by_state"]["up"] == NODES as u64).then_some(())
    })
    .await?;
    let (status, body) = api
        .request(
            Method::POST,
            "/api/v1/tenants",
            Some(json!({"name": "jepsen"})),
        )
        .await?;
    anyhow::ensure!(status == 201, "create tenant: {status} {body}");

    let history: History = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let apis = CMS
            .iter()
            .map(|cm| rig.api(cm))
            .collect::<anyhow::Result<Vec<_>>>()?;
        clients.push(tokio::spawn(client(
            id,
            apis,
            history.clone(),
            start,
            stop.clone(),
        )));
    }
    let faulted = faults(&mut rig, start).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    faulted?;

    // The final state, from whichever master leads once the dust has settled.
    let (cm, api) = leader(&rig).await?;
    let mut pools = BTreeMap::new();
    for id in 0..CLIENTS {
        let Some(p) = get(&api, &format!("/api/v1/pools/p{id}")).await else {
            anyhow::bail!("no answer about pool p{id} from {cm}");
        };
        let nodes: BTreeSet<String> = p["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(|n| n["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        pools.insert(id, nodes);
    }
    let history = history.lock().unwrap().clone();
    std::fs::write(
        rig.dir.join("history.json"),
        serde_json::to_vec_pretty(&json!({"ops": history, "final": pools}))?,
    )?;
    let count = |f: fn(&Outcome) -> bool| history.iter().filter(|o| f(&o.outcome)).count();
    let acked = count(|o| matches!(o, Outcome::Ok(_)));
    let refused = count(|o| matches!(o, Outcome::Refused(_)));
    let unknown = count(|o| matches!(o, Outcome::Unknown(_)));
    eprintln!(
        "{} operations: {acked} acknowledged, {refused} refused, {unknown} unknown; final pools (from {cm}): {pools:?}",
        history.len()
    );
    assert!(
        acked >= 50,
        "too few acknowledged operations to judge: {acked}"
    );
    let problems = check(&history, &pools);
    assert!(
        problems.is_empty(),
        "the history and the pools disagree:\n{}",
        problems.join("\n")
    );
    Ok(())
}

/// The checker itself finds what it must: a lost allocation, an undone release, a
/// node from nowhere, and one node in two pools at once.
#[test]
fn the_checker_catches_each_kind_of_violation() {
    let op = |client, kind, invoked, completed, outcome| Op {
        client,
        kind,
        invoked,
        completed,
        outcome,
        via: "cm1",
    };
    let ok = |n: &str| Outcome::Ok(vec![n.to_string()]);
    let release = |n: &str| Kind::Release(n.to_string());
    let history = vec![
        op(0, Kind::Grow, 0, 10, ok("a")),
        op(0, Kind::Grow, 20, 30, ok("b")),
        op(0, release("b"), 40, 50, ok("b")),
        op(1, Kind::Grow, 15, 25, ok("a")),
        op(2, Kind::Grow, 0, 10, Outcome::Unknown("timeout".into())),
        op(3, Kind::Grow, 0, 10, ok("d")),
        op(3, release("d"), 20, 30, Outcome::Unknown("timeout".into())),
        // Released, then an unanswered grow that may have given it back.
        op(4, Kind::Grow, 0, 10, ok("f")),
        op(4, release("f"), 20, 30, ok("f")),
        op(4, Kind::Grow, 40, 50, Outcome::Unknown("timeout".into())),
        // The same, but two nodes back and only one unanswered grow.
        op(
            5,
            Kind::Grow,
            0,
            10,
            Outcome::Ok(vec!["g".into(), "h".into()]),
        ),
        op(5, release("g"), 20, 30, ok("g")),
        op(5, release("h"), 40, 50, ok("h")),
        op(5, Kind::Grow, 60, 70, Outcome::Unknown("timeout".into())),
    ];
    let pools: BTreeMap<usize, BTreeSet<String>> = [
        (0, ["b"].map(String::from).into()),
        (1, ["a", "c"].map(String::from).into()),
        (2, ["e"].map(String::from).into()),
        (3, BTreeSet::new()),
        (4, ["f"].map(String::from).into()),
        (5, ["g", "h"].map(String::from).into()),
    ]
    .into();
    let problems = check(&history, &pools);
    let has = |s: &str| problems.iter().any(|p| p.contains(s));
    assert!(has("p0: acknowledged allocation of a"), "{problems:?}");
    assert!(has("p0: b released"), "{problems:?}");
    assert!(has("p1 holds [\"c\"]"), "{problems:?}");
    assert!(has("a given to p1"), "{problems:?}");
    assert!(has("p5 holds"), "{problems:?}");
    assert_eq!(
        problems.len(),
        5,
        "p2's and p4's unknown grows and p3's unknown release are fine: {problems:?}"
    );
}
