//! `glory up` as a library: a restart on the same data dir keeps node ids and groups.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use glory::client::ApiClient;
use glory::up::{Up, UpOptions};

async fn wait_up(api: &ApiClient, n: u64) -> anyhow::Result<()> {
    glory_tests::wait::until(
        &format!("{n} nodes up"),
        Duration::from_secs(30),
        || async {
            let c = api
                .get("/api/v1/cluster")
                .await
                .map_err(|e| e.to_string())?;
            if c["nodes_by_state"]["up"].as_u64() == Some(n) && c["nodes"].as_u64() == Some(n) {
                Ok(())
            } else {
                Err(c["nodes_by_state"].to_string())
            }
        },
    )
    .await?;
    Ok(())
}

async fn ids_by_host(api: &ApiClient) -> anyhow::Result<HashMap<String, (String, String)>> {
    Ok(api
        .all_nodes("")
        .await?
        .iter()
        .map(|n| {
            let s = |k: &str| n[k].as_str().unwrap_or_default().to_string();
            (s("hostname"), (s("id"), s("group")))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_data_dir_keeps_ids_and_groups() -> anyhow::Result<()> {
    glory_tests::init_logging();
    let dir = tempfile::tempdir()?;
    let options = UpOptions {
        data_dir: dir.path().to_path_buf(),
        nodes: 30,
        groups: 2,
        group_size_limit: 20,
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Default::default()
    };
    let up = Up::start(options.clone()).await?;
    let api = ApiClient::new(&up.api_addr.to_string(), &up.operator_token)?;
    wait_up(&api, 30).await?;
    let before = ids_by_host(&api).await?;
    let token_before = std::fs::read_to_string(dir.path().join("operator.token"))?;
    up.shutdown().await;

    let up = Up::start(options).await?;
    let token_after = std::fs::read_to_string(dir.path().join("operator.token"))?;
    assert_eq!(token_before, token_after, "operator token is reused");
    let api = ApiClient::new(&up.api_addr.to_string(), &up.operator_token)?;
    wait_up(&api, 30).await?;
    let after = ids_by_host(&api).await?;
    assert_eq!(before, after, "same ids and groups after a restart");
    // The clean shutdown in between was recorded.
    let node = api
        .get(&format!("/api/v1/nodes/{}", before["sim-00000"].0))
        .await?;
    let states: Vec<&str> = node["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"left"), "history {states:?}");
    up.shutdown().await;
    Ok(())
}
