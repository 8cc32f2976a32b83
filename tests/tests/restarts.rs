//! Masters restarted on their old addresses: agents and group masters come back. A
//! cluster master whose leadership key is gone cannot write.

use std::time::Duration;

use anyhow::Context;
use glory_keymaster::schema::CLUSTER_MASTER_ELECTION;
use glory_tests::TestCluster;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_master_restarts_on_its_address_and_agents_come_back() -> anyhow::Result<()> {
    let mut cluster = TestCluster::builder().groups(1).agents(20).start().await?;
    cluster.wait_all_up(20, Duration::from_secs(20)).await?;
    cluster.kill_group_master("g00").await?;
    cluster.restart_group_master("g00").await?;
    cluster.wait_all_up(20, Duration::from_secs(15)).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_restarts_on_its_addresses_and_groups_come_back() -> anyhow::Result<()> {
    let mut cluster = TestCluster::builder()
        .groups(2)
        .agents(10)
        .group_size_limit(5)
        .start()
        .await?;
    cluster.wait_all_up(10, Duration::from_secs(20)).await?;
    let ids_before = cluster.api.all_nodes("").await?;
    cluster.restart_cluster_master().await?;
    cluster.wait_all_up(10, Duration::from_secs(15)).await?;
    let ids_after = cluster.api.all_nodes("").await?;
    let key = |v: &Vec<serde_json::Value>| {
        let mut k: Vec<(String, String)> = v
            .iter()
            .map(|n| {
                (
                    n["id"].as_str().unwrap().into(),
                    n["group"].as_str().unwrap().into(),
                )
            })
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        key(&ids_before),
        key(&ids_after),
        "nothing acknowledged was lost"
    );
    assert_eq!(cluster.count("down").await, 0);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_without_its_leadership_key_writes_nothing() -> anyhow::Result<()> {
    let cluster = TestCluster::builder().groups(1).agents(1).start().await?;
    let api = &cluster.api;
    let km = cluster.cluster().keymaster();
    let token = serde_json::json!({"scope": "any", "ttl_seconds": 3600});
    let (status, body) = api
        .request(
            Method::POST,
            "/api/v1/bootstrap-tokens",
            Some(token.clone()),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let before = km
        .get_prefix(glory_keymaster::schema::BOOTSTRAP_TOKENS_PREFIX)
        .await?
        .0
        .len();
    // Its leadership key goes, as when its lease runs out while the master is paused
    // and another takes over: its writes are fenced off, and say why.
    let leader = km
        .leader(CLUSTER_MASTER_ELECTION)
        .await?
        .context("a leader")?;
    km.delete(&leader.key).await?;
    let (status, body) = api
        .request(Method::POST, "/api/v1/bootstrap-tokens", Some(token))
        .await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_leader", "{body}");
    assert_eq!(
        km.get_prefix(glory_keymaster::schema::BOOTSTRAP_TOKENS_PREFIX)
            .await?
            .0
            .len(),
        before,
        "nothing was written"
    );
    // Its lease is still alive, so the key went some other way: it stops rather than
    // serve what it cannot write (its supervisor restarts it as a standby).
    glory_tests::wait::until(
        "the fenced cluster master stops",
        Duration::from_secs(10),
        || async {
            match api.request(Method::GET, "/healthz", None).await {
                Err(_) => Ok(()),
                Ok((status, body)) => Err(format!("{status} {body}")),
            }
        },
    )
    .await?;
    cluster.shutdown().await;
    Ok(())
}
