//! Monitoring end to end, in-process: monitors changed through the API reach the group
//! masters, a load spike on a simulated node fires an alert within a few sampling
//! intervals and resolves after it, silences and acknowledgements show, history comes
//! back through the node's group master, and bad monitors are refused whole.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use glory_tests::wait::until_some;
use glory_tests::TestCluster;
use reqwest::Method;
use serde_json::{json, Value};

/// Sampling interval of the test's agents.
const METRICS_MS: u64 = 500;

async fn alerts_of(cluster: &TestCluster, node: &str) -> Vec<Value> {
    cluster
        .api
        .get(&format!("/api/v1/alerts?node={node}"))
        .await
        .ok()
        .and_then(|r| r["items"].as_array().cloned())
        .unwrap_or_default()
}

/// A webhook receiver on a free loopback port: what it was sent, in order.
async fn webhook() -> anyhow::Result<(String, Arc<Mutex<Vec<Value>>>)> {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, got))
}

fn delivered(got: &Mutex<Vec<Value>>, kind: &str, id: &str) -> bool {
    got.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|d| d["kind"] == kind && d["alert"]["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_spike_fires_an_alert_that_resolves_and_history_is_kept() -> anyhow::Result<()> {
    let (hook, got) = webhook().await?;
    let cluster = TestCluster::builder()
        .groups(1)
        .agents(3)
        .metrics_ms(METRICS_MS)
        .alert_webhook(&hook)
        .start()
        .await?;
    cluster.wait_all_up(3, Duration::from_secs(20)).await?;
    let node = cluster.node_id(0)?;
    let api = &cluster.api;

    // Bad monitors: 400 naming the field (422 for a scope naming what does not exist),
    // and nothing is written.
    let good = json!({"name": "cpu-spike", "scope": {"all": true}, "item": "cpu.percent",
        "rules": [{"level": "critical", "op": ">", "threshold": 90}]});
    let bad = |edit: fn(&mut Value)| {
        let mut v = good.clone();
        edit(&mut v);
        v
    };
    for (body, field) in [
        (bad(|v| v["item"] = "cpu.percentage".into()), "item"),
        (
            bad(|v| v["rules"][0]["level"] = "fatal".into()),
            "rules[0].level",
        ),
        (
            bad(|v| v["rules"][0]["threshold"] = "high".into()),
            "threshold",
        ),
        (bad(|v| v["scope"] = json!({"pool": "nope"})), "scope.pool"),
    ] {
        let err = api
            .call(Method::POST, "/api/v1/monitors", Some(body))
            .await
            .unwrap_err()
            .to_string();
        let status = if field == "scope.pool" { "422" } else { "400" };
        assert!(
            err.starts_with(status) && err.contains(field),
            "{field}: {err}"
        );
    }
    assert_eq!(api.get("/api/v1/monitors").await?["total"], 0);

    let mut events = api.events("/api/v1/events").await?;
    api.call(Method::POST, "/api/v1/monitors", Some(good))
        .await?;
    // The monitor reaches the group master (it is pushed at once); then the spike.
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.call(
        Method::POST,
        &format!("/api/v1/sim/nodes/{node}/load"),
        Some(json!({"cpu_percent": 97, "seconds": 4})),
    )
    .await?;
    let (alert, took) = until_some(
        "a critical alert firing",
        Duration::from_secs(10),
        || async {
            alerts_of(&cluster, &node)
                .await
                .into_iter()
                .find(|a| a["state"] == "firing" && a["level"] == "critical")
        },
    )
    .await?;
    eprintln!("alert firing {took:?} after the spike began");
    assert_eq!(alert["monitor"], "cpu-spike");
    assert_eq!(alert["group"], "g00");
    assert!(alert["value"].as_f64().unwrap_or(0.0) >= 97.0, "{alert}");
    let id = alert["id"].as_str().unwrap_or_default().to_string();
    // The stream announced it.
    let fired = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(msg) = events.next().await? {
            if msg.event == "alert_firing" && msg.data["node"] == node.as_str() {
                return anyhow::Ok(msg.data);
            }
        }
        anyhow::bail!("event stream ended")
    })
    .await??;
    assert_eq!(fired["id"], id.as_str());
    // And the webhook was told.
    until_some(
        "the webhook told of the firing",
        Duration::from_secs(5),
        || async { delivered(&got, "alert_firing", &id).then_some(()) },
    )
    .await?;

    // Acknowledged and silenced, it says so.
    let acked = api
        .call(Method::POST, &format!("/api/v1/alerts/{id}/ack"), None)
        .await?;
    assert_eq!(acked["acked"], true);
    let silence = api
        .call(
            Method::POST,
            "/api/v1/silences",
            Some(
                json!({"matchers": {"node": node}, "ends_at": glory_protocol::now_ms() + 60_000,
                "comment": "test"}),
            ),
        )
        .await?;
    let listed = alerts_of(&cluster, &node).await;
    let now = listed.iter().find(|a| a["id"] == id.as_str()).cloned();
    assert_eq!(
        now.as_ref().map(|a| &a["silenced"]),
        Some(&json!(true)),
        "{listed:?}"
    );

    // The spike ends: resolved.
    until_some("the alert resolved", Duration::from_secs(15), || async {
        alerts_of(&cluster, &node)
            .await
            .into_iter()
            .find(|a| a["id"] == id.as_str() && a["state"] == "resolved")
    })
    .await?;

    // The resolution was silenced: not forwarded (deliveries take milliseconds).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !delivered(&got, "alert_resolved", &id),
        "a silenced alert was forwarded"
    );

    // History, from the group master: the spike is in it.
    let to = glory_protocol::now_ms();
    let history = api
        .get(&format!(
            "/api/v1/nodes/{node}/metrics?item=cpu.percent&from={}&to={to}&step=1",
            to - 60_000
        ))
        .await?;
    let points = history["points"].as_array().cloned().unwrap_or_default();
    assert!(points.len() >= 3, "{history}");
    let max = points
        .iter()
        .filter_map(|p| p[3].as_f64())
        .fold(f64::MIN, f64::max);
    assert!(max >= 97.0, "the spike is in the history: {history}");
    // The group's and the cluster's history: the spike shows in their maxima.
    for path in ["/api/v1/groups/g00/metrics", "/api/v1/cluster/metrics"] {
        let history = api
            .get(&format!(
                "{path}?item=cpu.percent&from={}&to={to}&step=1",
                to - 60_000
            ))
            .await?;
        let max = history["points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p[3].as_f64())
            .fold(f64::MIN, f64::max);
        assert!(max >= 97.0, "{path}: {history}");
    }
    let err = api
        .get(&format!("/api/v1/nodes/{node}/metrics?item=nope"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("400") && err.contains("item"), "{err}");
    // A step past a year is refused; the longest one answers, and the group master's
    // store still answers after it (a step of u64::MAX - 1 once overflowed there and
    // took its monitoring down).
    let err = api
        .get(&format!(
            "/api/v1/groups/g00/metrics?item=cpu.percent&step={}",
            u64::MAX - 1
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("400") && err.contains("step"), "{err}");
    for _ in 0..2 {
        let longest = api
            .get("/api/v1/groups/g00/metrics?item=cpu.percent&from=0&to=0&step=31622400")
            .await?;
        assert_eq!(longest["step"], 31_622_400, "{longest}");
    }

    // Deleted, the monitor stops: another spike fires nothing.
    api.call(Method::DELETE, "/api/v1/monitors/cpu-spike", None)
        .await?;
    api.call(
        Method::DELETE,
        &format!(
            "/api/v1/silences/{}",
            silence["id"].as_str().unwrap_or_default()
        ),
        None,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.call(
        Method::POST,
        &format!("/api/v1/sim/nodes/{node}/load"),
        Some(json!({"cpu_percent": 99, "seconds": 3})),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(METRICS_MS * 6)).await;
    let firing: Vec<Value> = alerts_of(&cluster, &node)
        .await
        .into_iter()
        .filter(|a| a["state"] == "firing")
        .collect();
    assert!(
        firing.is_empty(),
        "a deleted monitor still fires: {firing:?}"
    );
    cluster.shutdown().await;
    Ok(())
}
