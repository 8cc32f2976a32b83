//! A real Prometheus (Debian's) scrapes the cluster master's `/metrics` with an operator
//! token, and a value read back through Prometheus' query API is the cluster's.
//! `promtool` checks the exposition itself.

use std::process::Stdio;
use std::time::Duration;

use glory_tests::procs::free_tcp;
use glory_tests::wait::until_some;
use glory_tests::TestCluster;
use tokio::io::AsyncWriteExt;

fn tool(name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: ./test.sh installs Debian's prometheus package",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_cluster_and_answers_with_its_figures() -> anyhow::Result<()> {
    let (prometheus, promtool) = (tool("prometheus"), tool("promtool"));
    let cluster = TestCluster::builder().groups(1).agents(3).start().await?;
    cluster.wait_all_up(3, Duration::from_secs(20)).await?;
    let base = cluster.api.base().to_string();
    let token = cluster.operator_token().trim().to_string();
    let http = reqwest::Client::new();

    // No token, no metrics.
    let anonymous = http.get(format!("{base}/metrics")).send().await?;
    assert_eq!(anonymous.status(), 401);
    let resp = http
        .get(format!("{base}/metrics"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await?;
    assert!(text.contains("glory_nodes{state=\"up\"} 3"), "{text}");
    // The API's latency, per route pattern (the test's own requests are in it).
    assert!(
        text.contains(
            "glory_api_request_duration_seconds_count{route=\"/api/v1/cluster\",method=\"GET\"}"
        ),
        "{text}"
    );
    // promtool finds nothing to complain about.
    let mut check = tokio::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .await?;
    let checked = check.wait_with_output().await?;
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A real Prometheus scrapes it every second.
    let dir = tempfile::tempdir()?;
    let target = base.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: glory\n    \
             metrics_path: /metrics\n    authorization:\n      credentials: {token}\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )?;
    let listen = free_tcp();
    let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
    let mut server = tokio::process::Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let query = format!(
        "http://{listen}/api/v1/query?query={}",
        "glory_nodes%7Bstate%3D%22up%22%7D"
    );
    let answered = until_some(
        "Prometheus answers glory_nodes{state=\"up\"}",
        Duration::from_secs(60),
        || async {
            let r: serde_json::Value = http.get(&query).send().await.ok()?.json().await.ok()?;
            let value = r["data"]["result"][0]["value"][1].as_str()?.to_string();
            Some(value)
        },
    )
    .await;
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    let (value, took) = answered.map_err(|e| anyhow::anyhow!("{e}\nprometheus log:\n{log}"))?;
    eprintln!("Prometheus had the figure after {took:?}");
    assert_eq!(value, "3");
    server.kill().await?;
    cluster.shutdown().await;
    Ok(())
}
