//! A real Prometheus (Debian's) scrapes the cluster master's `/metrics` with an operator
//! token, and a value read back through Prometheus' query API is the cluster's.
//! `promtool` checks the exposition itself. A real Alertmanager receives the alerts the
//! cluster master forwards, and lists them until they resolve.

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
        "{} is missing: ./test.sh installs Debian's prometheus and prometheus-alertmanager",
        path.display()
    );
    path
}

/// The alerts an Alertmanager holds now (active ones).
async fn am_alerts(http: &reqwest::Client, am: &str) -> Option<Vec<serde_json::Value>> {
    let r: serde_json::Value = http
        .get(format!(
            "{am}/api/v2/alerts?active=true&silenced=true&inhibited=true"
        ))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    r.as_array().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_receives_forwarded_alerts_until_they_resolve() -> anyhow::Result<()> {
    let binary = tool("prometheus-alertmanager");
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: nowhere\n  group_wait: 1s\nreceivers:\n  - name: nowhere\n",
    )?;
    let listen = free_tcp();
    let log_path = dir.path().join("alertmanager.log");
    let log = std::fs::File::create(&log_path)?;
    let mut server = tokio::process::Command::new(&binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        // No gossip: a lone Alertmanager on loopback.
        .arg("--cluster.listen-address=")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let am = format!("http://{listen}");
    let http = reqwest::Client::new();
    let up = until_some("Alertmanager answers", Duration::from_secs(30), || {
        am_alerts(&http, &am)
    })
    .await;
    if let Err(e) = up {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        anyhow::bail!("{e}\nalertmanager log:\n{log}");
    }

    let cluster = TestCluster::builder()
        .groups(1)
        .agents(2)
        .metrics_ms(500)
        .alertmanager(&am)
        .start()
        .await?;
    cluster.wait_all_up(2, Duration::from_secs(20)).await?;
    let node = cluster.node_id(0)?;
    cluster
        .api
        .call(
            reqwest::Method::POST,
            "/api/v1/monitors",
            Some(
                serde_json::json!({"name": "cpu-hot", "scope": {"all": true},
                "item": "cpu.percent", "rules": [{"level": "critical", "threshold": 90}]}),
            ),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster
        .api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/sim/nodes/{node}/load"),
            Some(serde_json::json!({"cpu_percent": 97, "seconds": 8})),
        )
        .await?;
    let (alert, took) = until_some(
        "Alertmanager lists the alert",
        Duration::from_secs(15),
        || async {
            am_alerts(&http, &am).await?.into_iter().find(|a| {
                a["labels"]["alertname"] == "cpu-hot" && a["labels"]["node"] == node.as_str()
            })
        },
    )
    .await?;
    eprintln!("Alertmanager had the alert {took:?} after the spike began");
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    assert_eq!(alert["labels"]["group"], "g00", "{alert}");
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    assert!(
        alert["annotations"]["value"]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= 97.0),
        "{alert}"
    );
    // The spike ends: the resolution reaches it, and it no longer lists the alert.
    until_some(
        "the alert resolved in Alertmanager",
        Duration::from_secs(20),
        || async {
            let alerts = am_alerts(&http, &am).await?;
            (!alerts.iter().any(|a| a["labels"]["alertname"] == "cpu-hot")).then_some(())
        },
    )
    .await?;
    server.kill().await?;
    cluster.shutdown().await;
    Ok(())
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
