//! Masters restarted on their old addresses: agents and group masters come back.

use std::time::Duration;

use glory_tests::TestCluster;

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
