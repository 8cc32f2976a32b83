//! Sharing the cluster (issue 21): an elastic pool borrows idle nodes and gives them
//! back under reclaim after the grace period, with its events in order; frameworks
//! receive offers in Dominant Resource Fairness order, a decline is honoured for its
//! `refuse_seconds`, an expired offer is rescinded and offered again; tenants do not
//! see each other's frameworks or offers; bad input is a 400 naming the field.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use glory::client::{ApiClient, EventStream, SseMessage};
use glory_tests::TestCluster;
use reqwest::Method;
use serde_json::{json, Value};

async fn call(api: &ApiClient, method: Method, path: &str, body: Value) -> (u16, Value) {
    api.request(method, path, Some(body)).await.unwrap()
}

/// The next event of one of `kinds` within `within`.
async fn next_of(
    events: &mut EventStream,
    kinds: &[&str],
    within: Duration,
) -> anyhow::Result<SseMessage> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, events.next())
            .await
            .map_err(|_| anyhow::anyhow!("no {kinds:?} within {within:?}"))??
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        if kinds.contains(&msg.event.as_str()) {
            return Ok(msg);
        }
    }
}

async fn tenant_token(op: &ApiClient, tenant: &str) -> anyhow::Result<ApiClient> {
    op.call(
        Method::POST,
        "/api/v1/tenants",
        Some(json!({"name": tenant})),
    )
    .await?;
    let t = op
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"role": "tenant", "tenant": tenant})),
        )
        .await?;
    Ok(op.with_token(t["token"].as_str().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elastic_pool_borrows_idle_nodes_and_gives_them_back_under_reclaim() -> anyhow::Result<()>
{
    let cluster = TestCluster::builder()
        .groups(1)
        .agents(10)
        .reclaim_grace_seconds(2)
        .start()
        .await?;
    cluster.wait_all_up(10, Duration::from_secs(30)).await?;
    let op = &cluster.api;
    let a = tenant_token(op, "a").await?;
    let b = tenant_token(op, "b").await?;
    let (s, q) = call(
        op,
        Method::PUT,
        "/api/v1/tenants/a/quota",
        json!({"guaranteed_nodes": 4}),
    )
    .await;
    assert_eq!(s, 200, "{q}");
    // b (no guarantee) borrows every idle node: min 1, grown to its max of 10.
    let (s, p) = call(
        &b,
        Method::POST,
        "/api/v1/pools",
        json!({"name": "eb", "component": "dp", "size": {"min": 1, "max": 10}}),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let (s, p) = call(
        &b,
        Method::POST,
        "/api/v1/pools/eb/nodes",
        json!({"count": 9}),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    let sharing = op.get("/api/v1/sharing").await?;
    let row = |s: &Value, t: &str| {
        s["items"]
            .as_array()
            .and_then(|v| v.iter().find(|r| r["tenant"] == t).cloned())
            .unwrap_or(Value::Null)
    };
    assert_eq!(row(&sharing, "b")["borrowed_nodes"], 10, "{sharing}");
    let mut eb_events = b.events("/api/v1/pools/eb/events").await?;

    // a needs 3 within its guarantee and none are free: 3 of b's are reclaimed.
    let (s, p) = call(
        &a,
        Method::POST,
        "/api/v1/pools",
        json!({"name": "fa", "component": "fs", "size": 3}),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    assert_eq!(p["size"], 0, "{p}");
    assert_eq!(p["incoming"].as_array().map(Vec::len), Some(3), "{p}");
    let sharing = op.get("/api/v1/sharing").await?;
    assert_eq!(row(&sharing, "a")["reclaims"]["incoming"], 3, "{sharing}");
    assert_eq!(row(&sharing, "b")["reclaims"]["outgoing"], 3, "{sharing}");
    // b's stream: each node is announced pending with its deadline, then leaves, then
    // the reclaim completes, never before the deadline.
    let mut deadline: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..3 {
        let e = next_of(
            &mut eb_events,
            &["node_reclaim_pending"],
            Duration::from_secs(5),
        )
        .await?;
        assert_eq!(e.data["for_pool"], "fa", "{:?}", e.data);
        assert_eq!(e.data["grace_seconds"], 2.0, "{:?}", e.data);
        deadline.insert(
            e.data["node"].as_str().unwrap_or_default().to_string(),
            e.data["deadline_ms"].as_u64().unwrap_or(0),
        );
    }
    let mut removed = Vec::new();
    let mut completed = Vec::new();
    while completed.len() < 3 {
        let e = next_of(
            &mut eb_events,
            &["node_removed", "reclaim_completed", "reclaim_cancelled"],
            Duration::from_secs(10),
        )
        .await?;
        let node = e.data["node"].as_str().unwrap_or_default().to_string();
        match e.event.as_str() {
            "node_removed" => {
                assert!(!completed.contains(&node), "removed after completed");
                assert!(e.data["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("reclaimed"));
                removed.push(node);
            }
            "reclaim_completed" => {
                assert!(removed.contains(&node), "completed before removed: {node}");
                assert!(
                    e.data["at_ms"].as_u64().unwrap_or(0) >= deadline[&node],
                    "moved before the grace ended: {:?}",
                    e.data
                );
                assert_eq!(e.data["to_pool"], "fa");
                completed.push(node);
            }
            _ => panic!("cancelled: {:?}", e.data),
        }
    }
    let fa = a.get("/api/v1/pools/fa").await?;
    assert_eq!(fa["size"], 3, "{fa}");
    assert_eq!(b.get("/api/v1/pools/eb").await?["size"], 7);

    // Past the guarantee nothing is reclaimed: a holds 3 of 4, asks 2.
    let (s, e) = call(
        &a,
        Method::POST,
        "/api/v1/pools/fa/nodes",
        json!({"count": 2}),
    )
    .await;
    assert_eq!(s, 409, "{e}");
    assert_eq!(e["error"]["code"], "not_enough_nodes", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("may claim 1 more"),
        "{e}"
    );
    // Its last one: b lets the reclaimed node go early, and a has it at once.
    let (s, p) = call(
        &a,
        Method::POST,
        "/api/v1/pools/fa/nodes",
        json!({"count": 1}),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    let pending = next_of(
        &mut eb_events,
        &["node_reclaim_pending"],
        Duration::from_secs(5),
    )
    .await?;
    let node = pending.data["node"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (s, p) = call(
        &b,
        Method::DELETE,
        &format!("/api/v1/pools/eb/nodes/{node}"),
        Value::Null,
    )
    .await;
    assert_eq!(s, 200, "{p}");
    let fa = a.get("/api/v1/pools/fa").await?;
    assert_eq!(fa["size"], 4, "handed over at once: {fa}");
    let done = next_of(
        &mut eb_events,
        &["reclaim_completed"],
        Duration::from_secs(5),
    )
    .await?;
    assert_eq!(done.data["node"], node.as_str());
    let sharing = op.get("/api/v1/sharing").await?;
    assert_eq!(row(&sharing, "a")["used"]["nodes"], 4, "{sharing}");
    assert_eq!(row(&sharing, "a")["borrowed_nodes"], 0, "{sharing}");
    assert_eq!(row(&sharing, "b")["used"]["nodes"], 6, "{sharing}");
    Ok(())
}

fn ids_of(offer: &Value, field: &str) -> Vec<String> {
    offer[field]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|n| n.as_str().or(n["id"].as_str()).unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frameworks_get_offers_in_drf_order_and_decline_and_expiry_hold() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .groups(1)
        .agents(10)
        .offer_timeout_seconds(4)
        .start()
        .await?;
    cluster.wait_all_up(10, Duration::from_secs(30)).await?;
    let op = &cluster.api;
    let x = tenant_token(op, "x").await?;
    let y = tenant_token(op, "y").await?;
    op.call(Method::POST, "/api/v1/tenants", Some(json!({"name": "z"})))
        .await?;
    // x already holds 4 nodes; a pool of z holds the other 6 for now.
    let (s, p) = call(
        &x,
        Method::POST,
        "/api/v1/pools",
        json!({"name": "held", "component": "db", "size": 4}),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let (s, p) = call(
        op,
        Method::POST,
        "/api/v1/pools",
        json!({"name": "hold", "tenant": "z", "component": "db", "size": 6}),
    )
    .await;
    assert_eq!(s, 201, "{p}");

    let (s, fx) = call(
        &x,
        Method::POST,
        "/api/v1/frameworks",
        json!({"name": "spark", "pool": "px"}),
    )
    .await;
    assert_eq!(s, 201, "{fx}");
    let (s, fy) = call(
        &y,
        Method::POST,
        "/api/v1/frameworks",
        json!({"name": "spark", "pool": "py"}),
    )
    .await;
    assert_eq!(s, 201, "{fy}");
    let (fx, fy) = (
        fx["id"].as_str().unwrap_or("").to_string(),
        fy["id"].as_str().unwrap_or("").to_string(),
    );
    let py = y.get("/api/v1/pools/py").await?;
    assert_eq!(
        (py["size"].as_u64(), py["elastic"]["min"].as_u64()),
        (Some(0), Some(0)),
        "{py}"
    );
    let mut sx = x.events(&format!("/api/v1/frameworks/{fx}/offers")).await?;
    let mut sy = y.events(&format!("/api/v1/frameworks/{fy}/offers")).await?;
    next_of(&mut sx, &["snapshot"], Duration::from_secs(5)).await?;
    next_of(&mut sy, &["snapshot"], Duration::from_secs(5)).await?;
    assert_eq!(
        x.get(&format!("/api/v1/frameworks/{fx}")).await?["listening"],
        true
    );

    // One node comes free: it goes to y, whose dominant share (nothing) is below x's
    // (4 nodes), whoever registered first.
    let hold = op.get("/api/v1/pools/hold").await?;
    let first = hold["nodes"][0]["id"].as_str().unwrap_or("").to_string();
    op.call(
        Method::DELETE,
        &format!("/api/v1/pools/hold/nodes/{first}"),
        None,
    )
    .await?;
    let oy = next_of(&mut sy, &["offer_made"], Duration::from_secs(5))
        .await?
        .data;
    assert_eq!(ids_of(&oy, "nodes"), vec![first.clone()], "{oy}");
    assert!(
        oy["nodes"][0]["cpus"].as_u64().unwrap_or(0) > 0,
        "resources offered: {oy}"
    );
    // Offers are not replayed; a framework that reconnects finds them in the snapshot,
    // with the nodes' resources.
    let mut again = y.events(&format!("/api/v1/frameworks/{fy}/offers")).await?;
    let snap = next_of(&mut again, &["snapshot"], Duration::from_secs(5))
        .await?
        .data;
    assert_eq!(snap["offers"][0]["id"], oy["offer"], "{snap}");
    assert_eq!(
        snap["offers"][0]["nodes"][0]["id"],
        first.as_str(),
        "{snap}"
    );
    assert!(
        snap["offers"][0]["nodes"][0]["cpus"].as_u64().unwrap_or(0) > 0,
        "{snap}"
    );
    drop(again);
    // The other 5: y has an offer outstanding, so x gets them, none of them twice.
    op.call(Method::DELETE, "/api/v1/pools/hold", None).await?;
    let ox = next_of(&mut sx, &["offer_made"], Duration::from_secs(5))
        .await?
        .data;
    let ox_nodes = ids_of(&ox, "nodes");
    assert_eq!(ox_nodes.len(), 5, "{ox}");
    assert!(
        !ox_nodes.contains(&first),
        "a node in two outstanding offers: {ox}"
    );

    // Isolation: y sees neither x's framework nor its offer.
    let ox_id = ox["offer"].as_str().unwrap_or("").to_string();
    let (s, _) = call(
        &y,
        Method::GET,
        &format!("/api/v1/frameworks/{fx}"),
        Value::Null,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(
        &y,
        Method::POST,
        &format!("/api/v1/offers/{ox_id}/accept"),
        json!({"nodes": ox_nodes}),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(y.get("/api/v1/frameworks").await?["total"], 1);
    assert_eq!(y.get("/api/v1/offers").await?["total"], 1);
    assert_eq!(op.get("/api/v1/offers").await?["total"], 2);
    // Bad input names the field.
    let oy_id = oy["offer"].as_str().unwrap_or("").to_string();
    let (s, e) = call(
        &y,
        Method::POST,
        &format!("/api/v1/offers/{oy_id}/accept"),
        json!({"nodes": [ox_nodes[0]]}),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("nodes:"),
        "{e}"
    );
    let (s, e) = call(
        &y,
        Method::POST,
        &format!("/api/v1/offers/{oy_id}/decline"),
        json!({"refuse_seconds": -1}),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    let (s, e) = call(
        op,
        Method::PUT,
        "/api/v1/tenants/x/quota",
        json!({"max_nodes": -3}),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    let (s, e) = call(
        &x,
        Method::POST,
        "/api/v1/pools",
        json!({"name": "bad", "component": "fs", "size": {"min": 3, "max": 2}}),
    )
    .await;
    assert_eq!(s, 422, "min above max: {e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("size.min"),
        "{e}"
    );

    // y declines for 30 s and x accepts its 5: the declined node goes to x, not y.
    let (s, r) = call(
        &y,
        Method::POST,
        &format!("/api/v1/offers/{oy_id}/decline"),
        json!({"refuse_seconds": 30}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let (s, r) = call(
        &x,
        Method::POST,
        &format!("/api/v1/offers/{ox_id}/accept"),
        json!({"nodes": ox_nodes}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["pool"].as_str(), r["size"].as_u64()),
        (Some("px"), Some(5)),
        "{r}"
    );
    let ox2 = next_of(&mut sx, &["offer_made"], Duration::from_secs(5))
        .await?
        .data;
    assert_eq!(
        ids_of(&ox2, "nodes"),
        vec![first.clone()],
        "what y declined goes to x"
    );
    // x lets it expire: rescinded after the timeout, then offered again.
    let r = next_of(&mut sx, &["offer_rescinded"], Duration::from_secs(10))
        .await?
        .data;
    assert_eq!(
        (r["offer"].clone(), r["reason"].clone()),
        (ox2["offer"].clone(), json!("expired"))
    );
    let ox3 = next_of(&mut sx, &["offer_made"], Duration::from_secs(5))
        .await?
        .data;
    assert_eq!(ids_of(&ox3, "nodes"), vec![first.clone()], "re-offered");
    // y, refusing it for 30 s, got nothing meanwhile.
    assert!(
        tokio::time::timeout(
            Duration::from_millis(300),
            next_of(&mut sy, &["offer_made"], Duration::from_secs(1))
        )
        .await
        .map(|r| r.is_err())
        .unwrap_or(true),
        "a declined node came back within refuse_seconds"
    );
    // Unregistering ends the stream and rescinds.
    let (s, _) = call(
        &x,
        Method::DELETE,
        &format!("/api/v1/frameworks/{fx}"),
        Value::Null,
    )
    .await;
    assert_eq!(s, 200);
    next_of(&mut sx, &["offer_rescinded"], Duration::from_secs(5)).await?;
    next_of(&mut sx, &["framework_unregistered"], Duration::from_secs(5)).await?;
    assert!(sx.next().await?.is_none(), "the stream ends");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_scaling_up_grows_its_elastic_pool() -> anyhow::Result<()> {
    let cluster = TestCluster::builder().groups(1).agents(6).start().await?;
    cluster.wait_all_up(6, Duration::from_secs(30)).await?;
    let op = &cluster.api;
    let a = tenant_token(op, "a").await?;
    let (s, p) = call(
        &a,
        Method::POST,
        "/api/v1/pools",
        json!({"name": "web", "component": "custom:web", "size": {"min": 1, "max": 4}}),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    // A fixed port: one instance per node, so 3 instances need 3 nodes.
    let (s, v) = call(
        &a,
        Method::POST,
        "/api/v1/services",
        json!({"name": "web", "pool": "web", "command": ["srv", "{port}"], "port": 8080,
               "health": {"kind": "tcp"}, "instances": {"min": 1, "max": 10, "desired": 3}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pool = a.get("/api/v1/pools/web").await?;
        let svc = a.get("/api/v1/services/web").await?;
        if pool["size"] == 3 && svc["healthy"] == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pool did not grow for the service: {pool} {svc}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Scaled past the pool's max: it stops at 4 nodes, the fifth instance waits.
    let (s, v) = call(
        &a,
        Method::POST,
        "/api/v1/services/web/scale",
        json!({"desired": 5}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pool = a.get("/api/v1/pools/web").await?;
        let svc = a.get("/api/v1/services/web").await?;
        if pool["size"] == 4 && svc["healthy"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "{pool} {svc}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        a.get("/api/v1/pools/web").await?["size"],
        4,
        "never past max"
    );
    Ok(())
}
