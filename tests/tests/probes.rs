//! Process monitors and custom checks end to end, in-process: a monitor added through
//! the API reaches the agents in its scope, a daemon killed on a simulated host is a
//! critical alert within about one interval and resolves when it starts again, a
//! failing check fires with its output, and a group master that comes back without its
//! store gets the history back from the agents.

use std::time::Duration;

use glory_tests::wait::until_some;
use glory_tests::TestCluster;
use reqwest::Method;
use serde_json::{json, Value};

async fn alert(cluster: &TestCluster, node: &str, monitor: &str, state: &str) -> Option<Value> {
    let r = cluster
        .api
        .get(&format!("/api/v1/alerts?node={node}"))
        .await
        .ok()?;
    r["items"]
        .as_array()?
        .iter()
        .find(|a| a["monitor"] == monitor && a["state"] == state)
        .cloned()
}

async fn history(cluster: &TestCluster, node: &str, query: &str, since_ms: u64) -> Vec<Value> {
    let to = glory_protocol::now_ms();
    cluster
        .api
        .get(&format!(
            "/api/v1/nodes/{node}/metrics?{query}&from={since_ms}&to={to}&step=1"
        ))
        .await
        .ok()
        .and_then(|h| h["points"].as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_daemons_and_failing_checks_alert_and_resolve() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .groups(1)
        .agents(2)
        .metrics_ms(500)
        .start()
        .await?;
    cluster.wait_all_up(2, Duration::from_secs(20)).await?;
    let (node, other) = (cluster.node_id(0)?, cluster.node_id(1)?);
    let api = &cluster.api;

    // Bad monitors: 400 naming the field, nothing written.
    for (body, field) in [
        (
            json!({"name": "p", "scope": {"all": true}, "kind": "process",
                   "match": {"cmdline": "(unclosed"}}),
            "match.cmdline",
        ),
        (
            json!({"name": "p", "scope": {"all": true}, "kind": "process"}),
            "match",
        ),
        (
            json!({"name": "p", "scope": {"all": true}, "kind": "process",
                   "match": {"name": "sshd"}, "item": "proc.size"}),
            "item",
        ),
        (
            json!({"name": "c", "scope": {"all": true}, "kind": "check"}),
            "command",
        ),
        (
            json!({"name": "c", "scope": {"all": true}, "kind": "check", "command": "true",
                   "timeout_seconds": 0}),
            "timeout_seconds",
        ),
        (
            json!({"name": "c", "scope": {"all": true}, "kind": "probe", "item": "cpu.percent",
                   "rules": [{"level": "info", "threshold": 1}]}),
            "kind",
        ),
        (
            json!({"name": "c", "scope": {"all": true}, "item": "cpu.percent", "command": "true",
                   "rules": [{"level": "info", "threshold": 1}]}),
            "command",
        ),
    ] {
        let err = api
            .call(Method::POST, "/api/v1/monitors", Some(body))
            .await
            .unwrap_err()
            .to_string();
        // Out of the schema: 400; a rule between fields (what a kind requires or
        // allows, a pattern that does not compile): 422.
        let status = match field {
            "item" | "timeout_seconds" | "kind" => "400",
            _ => "422",
        };
        assert!(
            err.starts_with(status) && err.contains(field),
            "{field}: {err}"
        );
    }
    assert_eq!(api.get("/api/v1/monitors").await?["total"], 0);

    // sshd watched on every node, by unit; a check on one node only.
    let created = api
        .call(
            Method::POST,
            "/api/v1/monitors",
            Some(
                json!({"name": "ssh", "scope": {"all": true}, "kind": "process",
                        "match": {"unit": "ssh.service"}, "interval_seconds": 1}),
            ),
        )
        .await?;
    assert_eq!(created["item"], "proc.alive", "{created}");
    assert_eq!(created["rules"][0]["level"], "critical", "{created}");
    api.call(
        Method::POST,
        "/api/v1/monitors",
        Some(
            json!({"name": "raid", "scope": {"node": node}, "kind": "check",
                    "command": "echo 'CRITICAL - md0 degraded'; exit 2",
                    "interval_seconds": 1, "timeout_seconds": 5}),
        ),
    )
    .await?;

    // The probe reached the agents: its values are in both nodes' history.
    let since = glory_protocol::now_ms();
    for n in [&node, &other] {
        until_some(
            "sshd's values in the history",
            Duration::from_secs(10),
            || async {
                let points =
                    history(&cluster, n, "item=proc.alive&labels=monitor=ssh", since).await;
                points.iter().any(|p| p[1] == 1.0).then_some(())
            },
        )
        .await?;
    }

    // The failing check fires on its node only, with its output.
    let (raid, took) = until_some("the check's alert", Duration::from_secs(10), || async {
        alert(&cluster, &node, "raid", "firing")
            .await
            .filter(|a| a["level"] == "critical")
    })
    .await?;
    eprintln!("check alert firing after {took:?}");
    assert_eq!(raid["value"], 2.0, "{raid}");
    assert_eq!(raid["detail"], "CRITICAL - md0 degraded\n", "{raid}");
    assert!(alert(&cluster, &other, "raid", "firing").await.is_none());

    // Kill sshd on the node: critical within about one interval (1 s probe, 0.5 s
    // batches, rules at once), resolved when it runs again.
    api.call(
        Method::POST,
        &format!("/api/v1/sim/nodes/{node}/processes/sshd/kill"),
        None,
    )
    .await?;
    let (dead, took) = until_some("sshd's alert", Duration::from_secs(5), || async {
        alert(&cluster, &node, "ssh", "firing").await
    })
    .await?;
    eprintln!("dead process alert firing after {took:?}");
    assert_eq!(dead["level"], "critical");
    assert_eq!(dead["value"], 0.0);
    assert!(alert(&cluster, &other, "ssh", "firing").await.is_none());
    // Killing it twice, or a daemon the host does not run: 409 saying why.
    let err = api
        .call(
            Method::POST,
            &format!("/api/v1/sim/nodes/{node}/processes/sshd/kill"),
            None,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("409") && err.contains("not running"),
        "{err}"
    );
    api.call(
        Method::POST,
        &format!("/api/v1/sim/nodes/{node}/processes/sshd/start"),
        None,
    )
    .await?;
    until_some("sshd's alert resolved", Duration::from_secs(5), || async {
        alert(&cluster, &node, "ssh", "resolved").await
    })
    .await?;
    // The restart was counted.
    until_some("a restart counted", Duration::from_secs(5), || async {
        let points = history(
            &cluster,
            &node,
            "item=proc.restarts&labels=monitor=ssh",
            since,
        )
        .await;
        points.iter().any(|p| p[3] == 1.0).then_some(())
    })
    .await?;

    // Deleted: the agents stop probing (no new values), the check's alert resolves.
    api.call(Method::DELETE, "/api/v1/monitors/ssh", None)
        .await?;
    api.call(Method::DELETE, "/api/v1/monitors/raid", None)
        .await?;
    until_some(
        "the check's alert resolved",
        Duration::from_secs(5),
        || async { alert(&cluster, &node, "raid", "resolved").await },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = glory_protocol::now_ms();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = history(
        &cluster,
        &node,
        "item=proc.alive&labels=monitor=ssh",
        stopped,
    )
    .await;
    assert!(after.is_empty(), "values after DELETE: {after:?}");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_master_back_without_its_store_gets_the_history_from_the_agents(
) -> anyhow::Result<()> {
    let mut cluster = TestCluster::builder()
        .groups(1)
        .agents(2)
        .metrics_ms(500)
        .start()
        .await?;
    cluster.wait_all_up(2, Duration::from_secs(20)).await?;
    let node = cluster.node_id(0)?;
    let since = glory_protocol::now_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The group master's store is in memory: gone with it.
    cluster.kill_group_master("g00").await?;
    let down = glory_protocol::now_ms();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart_group_master("g00").await?;
    cluster.wait_all_up(2, Duration::from_secs(20)).await?;
    let back = glory_protocol::now_ms();
    let failover = back - down;
    // Backfilled: the points before the restart are there again, with no gap longer
    // than the restart itself (plus one interval on either side).
    let (points, took) = until_some(
        "the history backfilled",
        Duration::from_secs(15),
        || async {
            let points = history(&cluster, &node, "item=cpu.percent", since).await;
            let times: Vec<u64> = points.iter().filter_map(|p| p[0].as_u64()).collect();
            let covered = times.first().is_some_and(|t| *t < since + 1_000)
                && times.last().is_some_and(|t| *t > back);
            covered.then_some(times)
        },
    )
    .await?;
    let gap = points.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    eprintln!(
        "history backfilled after {took:?}: {} points, largest gap {gap} ms, restart {failover} ms",
        points.len()
    );
    assert!(
        gap <= failover + 1_000,
        "gap {gap} ms, restart {failover} ms"
    );
    // Five seconds before the restart, in 1 s points.
    assert!(
        points.iter().filter(|t| **t < down).count() >= 4,
        "{points:?}"
    );
    cluster.shutdown().await;
    Ok(())
}
