//! Pools, tenants and component masters end to end: the REST API of an in-process
//! cluster over real QUIC, with simulated nodes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use glory::client::{ApiClient, SseMessage};
use glory_tests::TestCluster;
use reqwest::Method;
use serde_json::{json, Value};

/// Slack on top of configured deadlines for a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(3000);

/// The HTTP status of a failed call (the client's error starts with it).
fn status_of<T: std::fmt::Debug>(result: anyhow::Result<T>) -> u16 {
    match result {
        Ok(v) => panic!("expected an error status, got success: {v:?}"),
        Err(e) => e.to_string()[..3].parse().unwrap_or(0),
    }
}

async fn post(api: &ApiClient, path: &str, body: Value) -> anyhow::Result<Value> {
    api.call(Method::POST, path, Some(body)).await
}

async fn token(api: &ApiClient, role: &str, tenant: Option<&str>) -> ApiClient {
    let t = post(
        api,
        "/api/v1/tokens",
        json!({"role": role, "tenant": tenant}),
    )
    .await
    .unwrap();
    assert!(t["id"].is_string());
    api.with_token(t["token"].as_str().unwrap())
}

fn node_ids(pool: &Value) -> Vec<String> {
    pool["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_pools_selectors_and_isolation() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .groups(3)
        .agents(30)
        .group_size_limit(10)
        .start()
        .await?;
    cluster.wait_all_up(30, Duration::from_secs(30)).await?;
    let op = &cluster.api;
    for t in ["alpha", "beta"] {
        let r = post(op, "/api/v1/tenants", json!({"name": t})).await?;
        assert_eq!(r["name"], t);
    }
    assert_eq!(
        status_of(post(op, "/api/v1/tenants", json!({"name": "alpha"})).await),
        409
    );
    let alpha = token(op, "tenant", Some("alpha")).await;
    let beta = token(op, "tenant", Some("beta")).await;
    let alpha_component = token(&alpha, "component", None).await;

    // A spread pool takes nodes from every group evenly.
    let a = post(
        &alpha,
        "/api/v1/pools",
        json!({"name": "fs-a", "component": "fs", "size": 6, "spread": "groups"}),
    )
    .await?;
    assert_eq!(a["tenant"], "alpha");
    assert_eq!(a["size"], 6);
    let by_group: HashMap<String, u64> = serde_json::from_value(a["nodes_by_group"].clone())?;
    assert_eq!(by_group.len(), 3, "spread over every group: {by_group:?}");
    assert!(by_group.values().all(|&n| n == 2), "{by_group:?}");
    for n in a["nodes"].as_array().unwrap() {
        assert_eq!(n["state"], "up");
        assert!(n["group"].is_string());
    }
    let b = post(
        &beta,
        "/api/v1/pools",
        json!({"name": "fs-b", "component": "fs", "size": 6}),
    )
    .await?;
    let (na, nb): (HashSet<String>, HashSet<String>) = (
        node_ids(&a).into_iter().collect(),
        node_ids(&b).into_iter().collect(),
    );
    assert!(na.is_disjoint(&nb), "a node was given to two pools");

    // Isolation: beta cannot see, list, change or delete alpha's pool.
    assert_eq!(status_of(beta.get("/api/v1/pools/fs-a").await), 404);
    assert_eq!(
        status_of(beta.call(Method::DELETE, "/api/v1/pools/fs-a", None).await),
        404
    );
    assert_eq!(
        status_of(post(&beta, "/api/v1/pools/fs-a/nodes", json!({"count": 1})).await),
        404
    );
    assert_eq!(status_of(beta.get("/api/v1/pools/fs-a/events").await), 404);
    let listed = beta.get("/api/v1/pools").await?;
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["fs-b"]);
    assert_eq!(status_of(beta.get("/api/v1/tenants/alpha").await), 404);
    assert_eq!(beta.get("/api/v1/tenants").await?["total"], 1);
    // Tenants cannot make pools for others, nor reach operator routes.
    assert_eq!(
        status_of(
            post(
                &beta,
                "/api/v1/pools",
                json!({"name": "x", "component": "fs", "tenant": "alpha", "size": 1})
            )
            .await
        ),
        403
    );
    assert_eq!(status_of(beta.get("/api/v1/nodes").await), 403);
    // A component token uses its tenant's pools but creates neither tenants nor pools.
    assert_eq!(
        alpha_component.get("/api/v1/pools/fs-a").await?["name"],
        "fs-a"
    );
    assert_eq!(
        status_of(alpha_component.get("/api/v1/pools/fs-b").await),
        404
    );
    assert_eq!(
        status_of(post(&alpha_component, "/api/v1/tenants", json!({"name": "evil"})).await),
        403
    );
    assert_eq!(
        status_of(
            post(
                &alpha_component,
                "/api/v1/pools",
                json!({"name": "c", "component": "fs", "size": 1})
            )
            .await
        ),
        403
    );

    // Not enough nodes: 409 with how many fit. 30 - 12 are free.
    let err = post(
        &alpha,
        "/api/v1/pools",
        json!({"name": "big", "component": "db", "size": 100}),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("409"), "{err}");
    assert!(err.contains("18 fit"), "{err}");
    // Bad input: 400 naming the field; nothing is created.
    for (body, field) in [
        (
            json!({"name": "p", "component": "fs", "size": 1, "colour": "red"}),
            "colour",
        ),
        (
            json!({"name": "p", "component": "fs", "size": "two"}),
            "size",
        ),
        (
            json!({"name": "p", "component": "nosql", "size": 1}),
            "component",
        ),
        (json!({"name": "P!", "component": "fs", "size": 1}), "name"),
        (
            json!({"name": "p", "component": "fs", "size": 1, "selector": {"min_gpus": 1}}),
            "min_gpus",
        ),
        (json!({"name": "p", "component": "fs"}), "size"),
    ] {
        let err = post(&alpha, "/api/v1/pools", body.clone())
            .await
            .unwrap_err()
            .to_string();
        // Neither size nor selector: a rule between fields, 422.
        let status = if body.get("size").is_none() {
            "422"
        } else {
            "400"
        };
        assert!(
            err.starts_with(status) && err.contains(field),
            "{body} -> {err}"
        );
    }
    assert_eq!(alpha.get("/api/v1/pools").await?["total"], 1);

    // Selectors: large nodes only (every fourth simulated machine has 64 cores), and
    // labels set by the operator.
    let big = post(
        &alpha,
        "/api/v1/pools",
        json!({"name": "dp-big", "component": "dp", "selector": {"min_cpus": 64}}),
    )
    .await?;
    let nodes = cluster.api.all_nodes("").await?;
    let cpus: HashMap<String, u64> = nodes
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["inventory"]["cpus"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(big["size"].as_u64().unwrap() >= 1);
    assert!(node_ids(&big).iter().all(|id| cpus[id] >= 64));
    let free_node = nodes
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .find(|id| !na.contains(id) && !nb.contains(id) && !node_ids(&big).contains(id))
        .unwrap();
    let r = op
        .call(
            Method::PUT,
            &format!("/api/v1/nodes/{free_node}/labels"),
            Some(json!({"disk": "nvme", "rack": "r12"})),
        )
        .await?;
    assert_eq!(r["labels"]["disk"], "nvme");
    assert_eq!(
        status_of(
            op.call(
                Method::PUT,
                &format!("/api/v1/nodes/{free_node}/labels"),
                Some(json!({"bad key": "x"}))
            )
            .await
        ),
        422
    );
    assert_eq!(
        status_of(
            alpha
                .call(
                    Method::PUT,
                    &format!("/api/v1/nodes/{free_node}/labels"),
                    Some(json!({}))
                )
                .await
        ),
        403
    );
    let labelled = post(
        &beta,
        "/api/v1/pools",
        json!({"name": "db-nvme", "component": "custom:kv", "selector": {"labels": {"disk": "nvme"}}}),
    )
    .await?;
    assert_eq!(node_ids(&labelled), vec![free_node.clone()]);

    // Grow, release, delete: nodes return to the free set.
    let grown = post(&alpha, "/api/v1/pools/fs-a/nodes", json!({"count": 3})).await?;
    assert_eq!(grown["size"], 9);
    assert_eq!(grown["added"].as_array().unwrap().len(), 3);
    let victim = node_ids(&grown)[0].clone();
    let shrunk = alpha
        .call(
            Method::DELETE,
            &format!("/api/v1/pools/fs-a/nodes/{victim}"),
            None,
        )
        .await?;
    assert_eq!(shrunk["size"], 8);
    assert_eq!(
        status_of(
            post(
                &alpha,
                "/api/v1/pools/fs-a/nodes",
                json!({"nodes": [node_ids(&b)[0]]})
            )
            .await
        ),
        409,
        "a node of another pool cannot be added"
    );
    let deleted = beta
        .call(Method::DELETE, "/api/v1/pools/fs-b", None)
        .await?;
    assert_eq!(deleted["released"], 6);
    let again = post(
        &alpha,
        "/api/v1/pools/fs-a/nodes",
        json!({"nodes": node_ids(&b)}),
    )
    .await?;
    assert_eq!(again["size"], 14);

    // Revoked tokens are refused at once; a tenant with pools cannot be deleted.
    let id = op.get("/api/v1/tokens").await?["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "beta" && t["role"] == "tenant")
        .map(|t| t["id"].as_str().unwrap().to_string())
        .unwrap();
    op.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
        .await?;
    assert_eq!(status_of(beta.get("/api/v1/pools").await), 401);
    assert_eq!(
        status_of(op.call(Method::DELETE, "/api/v1/tenants/alpha", None).await),
        409
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocations_through_the_api_never_share_a_node() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .groups(2)
        .agents(40)
        .group_size_limit(20)
        .start()
        .await?;
    cluster.wait_all_up(40, Duration::from_secs(30)).await?;
    let op = cluster.api.clone();
    post(&op, "/api/v1/tenants", json!({"name": "t"})).await?;
    let clients = [
        token(&op, "tenant", Some("t")).await,
        token(&op, "tenant", Some("t")).await,
    ];
    let mut tasks = Vec::new();
    for i in 0..10 {
        let client = clients[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            post(
                &client,
                "/api/v1/pools",
                json!({"name": format!("p{i}"), "component": "dp", "size": 6, "spread": "groups"}),
            )
            .await
        }));
    }
    let mut owner: HashMap<String, String> = HashMap::new();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await? {
            Ok(pool) => {
                ok += 1;
                for id in node_ids(&pool) {
                    if let Some(other) = owner.insert(id.clone(), pool["name"].to_string()) {
                        panic!("node {id} in {other} and {}", pool["name"]);
                    }
                }
            }
            Err(e) => {
                assert!(e.to_string().starts_with("409"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (6, 4), "40 nodes hold six pools of six");
    cluster.shutdown().await;
    Ok(())
}

/// Read events until one satisfies `want`, or fail after `within`.
async fn wait_event(
    stream: &mut glory::client::EventStream,
    within: Duration,
    seen: &mut Vec<SseMessage>,
    want: impl Fn(&SseMessage) -> bool,
) -> anyhow::Result<SseMessage> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("no matching event within {within:?}; saw {seen:#?}"))??
            .ok_or_else(|| anyhow::anyhow!("event stream ended; saw {seen:#?}"))?;
        seen.push(msg.clone());
        if want(&msg) {
            return Ok(msg);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_master_is_elected_started_and_fails_over_with_a_higher_epoch(
) -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .groups(2)
        .agents(10)
        .group_size_limit(5)
        .start()
        .await?;
    cluster.wait_all_up(10, Duration::from_secs(30)).await?;
    let op = &cluster.api;
    post(op, "/api/v1/tenants", json!({"name": "t"})).await?;
    let tenant = token(op, "tenant", Some("t")).await;
    let component = token(&tenant, "component", None).await;
    let pool = post(
        &tenant,
        "/api/v1/pools",
        json!({"name": "fs", "component": "fs", "size": 4, "spread": "groups",
               "master": {"command": ["glory-fs-master", "--serve"], "port": 7000}}),
    )
    .await?;
    let members = node_ids(&pool);
    assert_eq!(
        status_of(component.get("/api/v1/pools/fs/master").await),
        404,
        "no master before candidates"
    );
    let mut events = component.events("/api/v1/pools/fs/events").await?;
    let mut seen = Vec::new();
    let snapshot = wait_event(&mut events, SLACK, &mut seen, |m| m.event == "snapshot").await?;
    assert!(snapshot.data["master"].is_null());
    // Candidates in order; a node outside the pool is refused.
    let outsider = cluster
        .api
        .all_nodes("")
        .await?
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .find(|id| !members.contains(id))
        .unwrap();
    assert_eq!(
        status_of(
            post(
                &component,
                "/api/v1/pools/fs/candidates",
                json!({"nodes": [outsider]})
            )
            .await
        ),
        422
    );
    let candidates = &members[..3];
    post(
        &component,
        "/api/v1/pools/fs/candidates",
        json!({"nodes": candidates}),
    )
    .await?;
    let elected = wait_event(&mut events, SLACK, &mut seen, |m| {
        m.event == "master_elected"
    })
    .await?;
    assert_eq!(elected.data["node"], candidates[0].as_str());
    assert_eq!(elected.data["epoch"], 1);
    // The agent confirms the process (recorded as running on a simulated host).
    cluster
        .wait_until("the master process runs", SLACK, async |c| {
            c.api
                .get("/api/v1/pools/fs/master")
                .await
                .is_ok_and(|m| m["process"] == "running")
        })
        .await?;
    let m = component.get("/api/v1/pools/fs/master").await?;
    assert_eq!(m["node"], candidates[0].as_str());
    assert!(m["address"].as_str().unwrap().ends_with(":7000"), "{m}");
    assert!(m["since"].as_u64().unwrap() > 0);

    // Kill the master's server: the next live candidate is elected with a higher epoch,
    // announced on the stream within down_after plus slack.
    let index = (0..10)
        .find(|i| cluster.node_id(*i).is_ok_and(|id| id == candidates[0]))
        .unwrap();
    let killed_at = tokio::time::Instant::now();
    assert!(cluster.fleet().kill_index(index));
    let within = cluster.down_after() + cluster.heartbeat() * 2 + SLACK;
    let failed = wait_event(&mut events, within, &mut seen, |m| {
        m.event == "master_failed"
    })
    .await?;
    assert_eq!(failed.data["node"], candidates[0].as_str());
    let next = wait_event(&mut events, SLACK, &mut seen, |m| {
        m.event == "master_elected"
    })
    .await?;
    let took = killed_at.elapsed();
    assert_eq!(next.data["node"], candidates[1].as_str());
    assert_eq!(next.data["epoch"], 2);
    eprintln!("master failover announced {took:?} after the kill");
    assert!(seen
        .iter()
        .any(|m| m.event == "node_down" && m.data["node"] == candidates[0].as_str()));

    // The old master's server comes back: it is not made master again.
    assert!(cluster.fleet().start_index(index));
    cluster
        .wait_node_state(&candidates[0], "up", Duration::from_secs(15))
        .await?;
    tokio::time::sleep(cluster.heartbeat() * 2).await;
    let m = component.get("/api/v1/pools/fs/master").await?;
    assert_eq!(
        (m["node"].as_str(), m["epoch"].as_u64()),
        (Some(candidates[1].as_str()), Some(2))
    );

    // By hand: the next candidate in order that is not the current master.
    let moved = post(&component, "/api/v1/pools/fs/master/failover", json!({})).await?;
    assert_eq!(moved["epoch"], 3);
    assert_eq!(moved["node"], candidates[0].as_str());
    let announced = wait_event(&mut events, SLACK, &mut seen, |m| {
        m.event == "master_elected" && m.data["epoch"] == 3
    })
    .await?;
    assert_eq!(announced.data["node"], candidates[0].as_str());
    // Epochs only grow on the stream.
    let epochs: Vec<u64> = seen
        .iter()
        .filter(|m| m.event == "master_elected")
        .map(|m| m.data["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![1, 2, 3]);

    // Deleting the pool ends the stream with pool_deleted.
    tenant
        .call(Method::DELETE, "/api/v1/pools/fs", None)
        .await?;
    wait_event(&mut events, SLACK, &mut seen, |m| m.event == "pool_deleted").await?;
    assert!(
        events.next().await?.is_none(),
        "stream ends after pool_deleted"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pool_node_is_replaced_after_the_delay_respecting_spread() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .groups(2)
        .agents(8)
        .group_size_limit(4)
        .start()
        .await?;
    cluster.wait_all_up(8, Duration::from_secs(30)).await?;
    let op = &cluster.api;
    post(op, "/api/v1/tenants", json!({"name": "t"})).await?;
    let pool = post(
        op,
        "/api/v1/pools",
        json!({"name": "db", "tenant": "t", "component": "db", "size": 4, "spread": "groups",
               "replace_failed": true, "replace_delay_seconds": 1.0}),
    )
    .await?;
    let before = node_ids(&pool);
    let mut events = op.events("/api/v1/pools/db/events").await?;
    let mut seen = Vec::new();
    let victim = before[0].clone();
    let victim_group = pool["nodes"][0]["group"].as_str().unwrap().to_string();
    let index = (0..8)
        .find(|i| cluster.node_id(*i).is_ok_and(|id| id == victim))
        .unwrap();
    assert!(cluster.fleet().kill_index(index));
    let within = cluster.down_after() + Duration::from_secs(1) + cluster.heartbeat() * 2 + SLACK;
    wait_event(&mut events, within, &mut seen, |m| {
        m.event == "node_down" && m.data["node"] == victim.as_str()
    })
    .await?;
    let added = wait_event(&mut events, within, &mut seen, |m| m.event == "node_added").await?;
    assert_eq!(added.data["replaces"], victim.as_str());
    let after = op.get("/api/v1/pools/db").await?;
    let ids = node_ids(&after);
    assert_eq!(ids.len(), 4);
    assert!(!ids.contains(&victim));
    // The replacement comes from the group that lost a node (spread).
    let replacement = added.data["node"].as_str().unwrap();
    let group = after["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == replacement)
        .map(|n| n["group"].as_str().unwrap().to_string())
        .unwrap();
    assert_eq!(group, victim_group);
    cluster.shutdown().await;
    Ok(())
}

/// A master command that exits at once: its agent restarts it with a backoff under the
/// same epoch, it is reported `failing` with its last exit status and output, the role
/// moves once to each candidate and then stays (the epoch does not race upward).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_keeps_failing_backs_off_and_is_reported_failing() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .groups(1)
        .agents(2)
        .process_agents(2)
        .start()
        .await?;
    cluster.wait_all_up(2, Duration::from_secs(30)).await?;
    let op = &cluster.api;
    post(op, "/api/v1/tenants", json!({"name": "t"})).await?;
    let pool = post(
        op,
        "/api/v1/pools",
        json!({"name": "crash", "component": "custom:crash", "tenant": "t", "size": 2,
               "master": {"command": ["sh", "-c", "echo boom; exit 3"]}}),
    )
    .await?;
    let candidates = node_ids(&pool);
    let mut events = op.events("/api/v1/pools/crash/events").await?;
    let mut seen = Vec::new();
    post(
        op,
        "/api/v1/pools/crash/candidates",
        json!({"nodes": candidates}),
    )
    .await?;
    // Three quick failures take about 1 + 2 s on each candidate.
    let failing = wait_event(&mut events, Duration::from_secs(30), &mut seen, |m| {
        m.event == "master_failing"
    })
    .await?;
    assert_eq!(failing.data["epoch"], 2, "{seen:#?}");
    let m = op.get("/api/v1/pools/crash/master").await?;
    assert_eq!(m["process"], "failing", "{m}");
    assert_eq!(m["epoch"], 2, "{m}");
    assert_eq!(m["last_exit"]["code"], 3, "{m}");
    assert!(
        m["output"]
            .as_array()
            .is_some_and(|o| o.iter().any(|l| l == "boom")),
        "{m}"
    );
    assert!(m["failures"].as_u64() >= Some(3), "{m}");
    // Its agent keeps restarting it (next after a 4 s backoff) without a new election.
    let highest_epoch = std::cell::Cell::new(0);
    let last = std::cell::RefCell::new(Value::Null);
    let waited = cluster
        .wait_until(
            "another restart of the failing master",
            Duration::from_secs(20),
            async |c| {
                let Ok(m) = c.api.get("/api/v1/pools/crash/master").await else {
                    return false;
                };
                highest_epoch.set(highest_epoch.get().max(m["epoch"].as_u64().unwrap_or(0)));
                let restarted = m["restarts"].as_u64() >= Some(3);
                *last.borrow_mut() = m;
                restarted
            },
        )
        .await;
    waited.map_err(|e| anyhow::anyhow!("{e}; master: {}", last.borrow()))?;
    assert_eq!(
        highest_epoch.get(),
        2,
        "no election after every candidate failed"
    );
    let elected: Vec<u64> = seen
        .iter()
        .filter(|m| m.event == "master_elected")
        .map(|m| m.data["epoch"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(elected, [1, 2], "once per candidate: {seen:#?}");
    cluster.shutdown().await;
    Ok(())
}

/// Placeholders in a master's command and environment are substituted; the process
/// gets a clean environment (the pool's variables and the GLORY_* ones, nothing of the
/// agent's), and is published at an address others can use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_commands_get_placeholders_and_a_clean_environment() -> anyhow::Result<()> {
    // The agents run in this process: whatever is in its environment is in theirs.
    std::env::set_var("GLORY_TEST_AGENT_SECRET", "must-not-leak");
    let cluster = TestCluster::builder()
        .groups(1)
        .agents(1)
        .process_agents(1)
        .start()
        .await?;
    cluster.wait_all_up(1, Duration::from_secs(30)).await?;
    let op = &cluster.api;
    post(op, "/api/v1/tenants", json!({"name": "t"})).await?;
    // `{port}` needs a port.
    let refused = post(
        op,
        "/api/v1/pools",
        json!({"name": "noport", "component": "fs", "tenant": "t", "size": 1,
               "master": {"command": ["python3", "-m", "http.server", "{port}"]}}),
    )
    .await;
    let message = format!("{refused:?}");
    assert_eq!(status_of(refused), 400);
    assert!(message.contains("{port}"), "{message}");

    let dir = tempfile::tempdir()?;
    let out = dir.path().display().to_string();
    let script = format!(
        "echo {{port}} {{node}} {{pool}} {{epoch}} > {out}/args; env > {out}/env.tmp; mv {out}/env.tmp {out}/env; exec sleep 60"
    );
    let pool = post(
        op,
        "/api/v1/pools",
        json!({"name": "echo", "component": "fs", "tenant": "t", "size": 1,
               "master": {"command": ["sh", "-c", script], "port": 18999,
                          "env": {"CONFIGURED": "yes", "LISTEN": ":{port}"}}}),
    )
    .await?;
    let node = node_ids(&pool)[0].clone();
    post(
        op,
        "/api/v1/pools/echo/candidates",
        json!({"nodes": [node]}),
    )
    .await?;
    let env_file = dir.path().join("env");
    cluster
        .wait_until("the master wrote its environment", SLACK * 5, async |c| {
            env_file.exists()
                && c.api
                    .get("/api/v1/pools/echo/master")
                    .await
                    .is_ok_and(|m| m["process"] == "running")
        })
        .await?;
    let args = std::fs::read_to_string(dir.path().join("args"))?;
    assert_eq!(args.trim(), format!("18999 {node} echo 1"));
    let env = std::fs::read_to_string(&env_file)?;
    let vars: HashMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars.get("GLORY_POOL"), Some(&"echo"), "{env}");
    assert_eq!(vars.get("GLORY_NODE"), Some(&node.as_str()), "{env}");
    assert_eq!(vars.get("GLORY_MASTER_EPOCH"), Some(&"1"), "{env}");
    assert_eq!(vars.get("CONFIGURED"), Some(&"yes"), "{env}");
    assert_eq!(vars.get("LISTEN"), Some(&":18999"), "{env}");
    assert!(!vars.contains_key("GLORY_TEST_AGENT_SECRET"), "{env}");
    for (key, _) in std::env::vars_os() {
        // The shell adds a few of its own; none of the agent's may be there.
        let key = key.to_string_lossy();
        if !["PATH", "PWD", "SHLVL", "_", "OLDPWD"].contains(&key.as_ref()) {
            assert!(!vars.contains_key(key.as_ref()), "{key} leaked: {env}");
        }
    }
    // Agents connect from 127.0.0.1, which only this machine can use: the master is
    // published at the simulated node's inventory address instead.
    let m = op.get("/api/v1/pools/echo/master").await?;
    assert_eq!(m["address"], "10.0.0.1:18999", "{m}");
    let km = cluster.cluster().keymaster();
    let kv = km
        .get(&glory_keymaster::schema::node_key(&node))
        .await?
        .expect("node record");
    let record: glory_keymaster::schema::NodeRecord =
        glory_keymaster::schema::decode(&kv.key, &kv.value)?;
    assert_eq!(record.reached_from.as_deref(), Some("127.0.0.1"));
    cluster.shutdown().await;
    Ok(())
}
