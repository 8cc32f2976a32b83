//! End-to-end behaviour of the hierarchy, in one process over real QUIC.

use std::time::Duration;

use glory_tests::TestCluster;

/// Slack on top of configured deadlines for a busy 2-core machine: the API poll, the
/// detector tick, the report path.
const SLACK: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_enroll_spread_by_group_limit_and_are_up() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .groups(2)
        .agents(20)
        .group_size_limit(12)
        .start()
        .await?;
    cluster.wait_all_up(20, Duration::from_secs(20)).await?;
    let groups = cluster.api.get("/api/v1/groups").await?;
    let sizes: Vec<u64> = groups["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["nodes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes.iter().sum::<u64>(), 20);
    assert!(
        sizes.iter().all(|&n| n <= 12),
        "group sizes {sizes:?} exceed the limit of 12"
    );
    // All simulated agents share one subnet, so the first group fills up first.
    assert_eq!(sizes, vec![12, 8]);
    // Loads arrive with the next group report.
    cluster
        .wait_until("every node has a load", Duration::from_secs(5), async |c| {
            c.api
                .all_nodes("")
                .await
                .is_ok_and(|nodes| nodes.iter().all(|n| !n["load"].is_null()))
        })
        .await?;
    let nodes = cluster.api.all_nodes("").await?;
    let node = &nodes[0];
    for field in ["id", "hostname", "state", "group", "inventory", "load"] {
        assert!(!node[field].is_null(), "node object lacks {field}: {node}");
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_is_down_within_down_after_and_comes_back_with_its_id() -> anyhow::Result<()> {
    let cluster = TestCluster::builder().groups(2).agents(8).start().await?;
    cluster.wait_all_up(8, Duration::from_secs(20)).await?;
    let id = cluster.node_id(3)?;
    assert!(cluster.fleet().kill_index(3));
    let took = cluster
        .wait_node_state(&id, "down", cluster.down_after() + SLACK)
        .await?;
    eprintln!(
        "detected down after {took:?} (down_after {:?})",
        cluster.down_after()
    );
    assert_eq!(cluster.count("up").await, 7, "only the killed node is down");
    let history = cluster.api.get(&format!("/api/v1/nodes/{id}")).await?;
    let states: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert!(
        states.ends_with(&["up", "suspect", "down"]),
        "history {states:?}"
    );

    assert!(cluster.fleet().start_index(3));
    cluster
        .wait_node_state(&id, "up", Duration::from_secs(10))
        .await?;
    assert_eq!(cluster.node_id(3)?, id, "same node id after restart");
    cluster.wait_all_up(8, Duration::from_secs(10)).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_shutdown_is_left_at_once() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .groups(1)
        .agents(4)
        .down_after_ms(5000)
        .start()
        .await?;
    cluster.wait_all_up(4, Duration::from_secs(20)).await?;
    let id = cluster.node_id(0)?;
    assert!(cluster.fleet().stop_index(0));
    // Well before down_after could have fired.
    cluster
        .wait_node_state(&id, "left", Duration::from_secs(2))
        .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_group_master_makes_its_nodes_unreachable_not_down() -> anyhow::Result<()> {
    let mut cluster = TestCluster::builder()
        .groups(2)
        .agents(12)
        .group_size_limit(6)
        .start()
        .await?;
    cluster.wait_all_up(12, Duration::from_secs(20)).await?;
    cluster.kill_group_master("g00").await?;
    cluster
        .wait_until("6 nodes unreachable", Duration::from_secs(5), async |c| {
            c.count("unreachable").await == 6
        })
        .await?;
    assert_eq!(cluster.count("up").await, 6, "the other group is untouched");
    assert_eq!(cluster.count("down").await, 0, "nobody is called dead");
    let g00 = cluster.api.get("/api/v1/groups/g00").await?;
    assert_eq!(g00["connected"], false);

    cluster.restart_group_master("g00").await?;
    cluster.wait_all_up(12, Duration::from_secs(15)).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_node_is_refused_from_then_on() -> anyhow::Result<()> {
    let cluster = TestCluster::builder().groups(1).agents(3).start().await?;
    cluster.wait_all_up(3, Duration::from_secs(20)).await?;
    let id = cluster.node_id(1)?;
    let removed = cluster
        .api
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/nodes/{id}"),
            None,
        )
        .await?;
    assert_eq!(removed["removed"], id);
    let err = cluster
        .api
        .get(&format!("/api/v1/nodes/{id}"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    // The agent is told and stops; a second delete is a 404.
    cluster
        .wait_until("removed agent stops", Duration::from_secs(5), async |c| {
            !c.fleet().is_running(1)
        })
        .await?;
    let again = cluster
        .api
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/nodes/{id}"),
            None,
        )
        .await
        .unwrap_err();
    assert!(again.to_string().contains("404"), "{again}");
    assert_eq!(cluster.summary().await?["nodes"], 2);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_bad_tokens_and_bad_queries() -> anyhow::Result<()> {
    let cluster = TestCluster::builder().groups(1).agents(1).start().await?;
    let base = cluster.api.base().to_string();
    let http = reqwest::Client::new();
    let resp = http.get(format!("{base}/api/v1/cluster")).send().await?;
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "unauthorized");
    let resp = http
        .get(format!("{base}/api/v1/cluster"))
        .bearer_auth("ga-0000.nope")
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    let health = http.get(format!("{base}/healthz")).send().await?;
    assert_eq!(health.status(), 200);
    for (path, status) in [
        ("/api/v1/nodes?state=sleepy", "400"),
        ("/api/v1/nodes?limit=0", "400"),
        ("/api/v1/nodes?bogus=1", "400"),
        ("/api/v1/nodes/n-nothere", "404"),
        ("/api/v1/groups/g99", "404"),
        ("/api/v1/nodes?group=g99", "404"),
    ] {
        let err = cluster.api.get(path).await.unwrap_err().to_string();
        assert!(err.starts_with(status), "{path}: {err}");
    }
    let err = cluster
        .api
        .call(
            reqwest::Method::POST,
            "/api/v1/bootstrap-tokens",
            Some(serde_json::json!({"ttl_seconds": "soon"})),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("400") && err.contains("ttl_seconds"),
        "{err}"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_listing_filters_and_paginates() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .groups(2)
        .agents(10)
        .group_size_limit(5)
        .start()
        .await?;
    cluster.wait_all_up(10, Duration::from_secs(20)).await?;
    let page = cluster.api.get("/api/v1/nodes?limit=3").await?;
    assert_eq!(page["total"], 10);
    assert!(page["items"][0]["inventory"].is_object());
    // The summary view leaves inventories out; a bad view is a 400 naming it.
    let summary = cluster.api.get("/api/v1/nodes?view=summary").await?;
    assert_eq!(summary["items"].as_array().unwrap().len(), 10);
    assert!(summary["items"][0]["inventory"].is_null());
    assert!(summary["items"][0]["state"].is_string());
    let err = cluster
        .api
        .get("/api/v1/nodes?view=everything")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("400") && err.contains("view"), "{err}");
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let mut seen = Vec::new();
    let mut cursor = None::<String>;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/nodes?limit=3&cursor={c}"),
            None => "/api/v1/nodes?limit=3".to_string(),
        };
        let page = cluster.api.get(&path).await?;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 10, "every node exactly once: {seen:?}");
    let g01 = cluster.api.all_nodes("group=g01").await?;
    assert_eq!(g01.len(), 5);
    assert!(g01.iter().all(|n| n["group"] == "g01"));
    let by_name = cluster.api.all_nodes("q=SIM-00007").await?;
    assert_eq!(by_name.len(), 1, "q matches hostnames case-insensitively");
    assert_eq!(cluster.api.all_nodes("state=down").await?.len(), 0);
    cluster.shutdown().await;
    Ok(())
}
