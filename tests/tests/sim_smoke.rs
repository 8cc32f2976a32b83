//! `glory sim` smoke scenario: the real binary, a small cluster, one agent kill and one
//! group master kill. Checks the report's invariants, not its timings.

use std::process::Command;

use glory_keymaster::testing::EtcdCluster;
use glory_tests::binary;

#[test]
fn sim_smoke_report_invariants_hold() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let report_path = dir.path().join("report.json");
    let out = Command::new(binary("glory")?)
        .args([
            "sim",
            "--nodes",
            "500",
            "--groups",
            "5",
            "--duration",
            "60s",
            "--faults",
            "kill-agents:3@28s,kill-group-master:g02@34s",
            // Every live node renews its certificate during the run...
            "--cert-lifetime",
            "1m",
            // ... while wrk reads the API.
            "--api-load",
            "200",
            "--report",
        ])
        .arg(&report_path)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "glory sim failed:\n{stderr}\n{stdout}"
    );
    assert!(
        stdout.contains("false downs"),
        "summary table printed:\n{stdout}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
    let ctx = || {
        format!(
            "report: {}",
            serde_json::to_string_pretty(&r).unwrap_or_default()
        )
    };
    assert_eq!(r["nodes"], 500);
    assert_eq!(r["groups"], 5);
    assert_eq!(r["mode"], "hierarchy");
    assert!(
        r["enroll_seconds"].is_number(),
        "all nodes enrolled; {}",
        ctx()
    );
    assert_eq!(
        r["detection_seconds"]["count"],
        3,
        "every killed agent detected; {}",
        ctx()
    );
    assert_eq!(r["missed_detections"], 0, "{}", ctx());
    assert_eq!(r["false_downs"], 0, "{}", ctx());
    assert!(
        r["gm_failover_seconds"].is_number(),
        "group recovered; {}",
        ctx()
    );
    assert_eq!(r["gm_failover_wrong_downs"], 0, "{}", ctx());
    assert_eq!(
        r["nodes_at_end"],
        500,
        "nothing acknowledged lost; {}",
        ctx()
    );
    assert_eq!(r["nodes_recorded_at_end"], 500, "{}", ctx());
    // Not exercised in this scenario: null, never a made-up number.
    assert!(r["cm_failover_seconds"].is_null(), "{}", ctx());
    assert!(r["partition"].is_null(), "{}", ctx());
    for key in [
        "masters_cpu_cores",
        "agents_cpu_cores",
        "master_bytes_per_node",
    ] {
        assert!(r[key].is_number(), "{key} measured; {}", ctx());
    }
    for process in ["masters", "agents"] {
        let spent = r["enroll_cpu_seconds"][process].as_f64();
        assert!(
            spent.is_some_and(|s| s > 0.0),
            "enrollment's CPU seconds of the {process} measured; {}",
            ctx()
        );
    }
    assert!(r["heartbeats"]["sent"].as_u64().unwrap_or(0) > 0);
    // Renewed at about two thirds of a minute after enrolling: every node not killed
    // (a renewal whose answer a group master's kill lost is asked again).
    let renewed = r["cert_renewals"]["renewed"].as_u64().unwrap_or(0);
    assert!(renewed >= 497, "renewals {renewed}; {}", ctx());
    let load = &r["api_load"];
    assert!(load["requests"].as_u64().unwrap_or(0) > 0, "{}", ctx());
    assert_eq!(load["non_2xx"], 0, "{}", ctx());
    assert_eq!(load["socket_errors"], 0, "{}", ctx());
    assert!(load["p99_ms"].is_number(), "{}", ctx());
    Ok(())
}

#[test]
fn sim_refuses_bad_options_clearly() -> anyhow::Result<()> {
    for (args, needle) in [
        (vec!["sim", "--faults", "explode:1@1s"], "unknown fault"),
        (
            vec![
                "sim",
                "--groups",
                "2",
                "--faults",
                "kill-group-master:g09@1s",
            ],
            "g09",
        ),
        (
            vec!["sim", "--duration", "10s", "--faults", "kill-agents:1@20s"],
            "after the end",
        ),
        (vec!["sim", "--keymaster", "zookeeper"], "zookeeper"),
        (
            vec!["sim", "--standby-cluster-masters", "1"],
            "needs the hierarchy on an etcd key master",
        ),
        (
            vec![
                "sim",
                "--keymaster",
                "http://127.0.0.1:1",
                "--standby-cluster-masters",
                "1",
                "--faults",
                "partition-group:g00@1s-2s",
            ],
            "dial the cluster masters directly",
        ),
    ] {
        let out = Command::new(binary("glory")?).args(&args).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    Ok(())
}

/// The real failover path at small scale: two cluster masters on a real etcd, each on a
/// runtime of its own; the leader is killed without resigning (kill -9 semantics) and
/// the standby takes over through the leadership lease. (10,000 nodes: BENCHMARKS.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_fails_over_to_a_standby_cluster_master_on_etcd() -> anyhow::Result<()> {
    let etcd = EtcdCluster::start(1).await?;
    let dir = tempfile::tempdir()?;
    let report_path = dir.path().join("report.json");
    let out = tokio::process::Command::new(binary("glory")?)
        .args([
            "sim",
            "--nodes",
            "200",
            "--groups",
            "2",
            "--duration",
            "35s",
            "--keymaster",
            &etcd.endpoints().join(","),
            "--standby-cluster-masters",
            "1",
            "--faults",
            "kill-cluster-master@15s",
            "--report",
        ])
        .arg(&report_path)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "glory sim failed:\n{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
    let ctx = || serde_json::to_string_pretty(&r).unwrap_or_default();
    // The standby serves once the killed leader's lease (5 s) has run out, and every
    // node is up again under it: nothing is wrongly down, nothing recorded is lost.
    let api = r["cm_takeover_api_seconds"].as_f64();
    let all = r["cm_failover_seconds"].as_f64();
    assert!(api.is_some_and(|s| s >= 1.0), "{}", ctx());
    assert!(all.is_some_and(|s| s >= api.unwrap_or(0.0)), "{}", ctx());
    assert_eq!(r["false_downs"], 0, "{}", ctx());
    assert_eq!(r["nodes_at_end"], 200, "{}", ctx());
    assert_eq!(r["nodes_recorded_at_end"], 200, "{}", ctx());
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("standby cluster master cm2 took over"),
        "{}",
        ctx()
    );
    Ok(())
}
