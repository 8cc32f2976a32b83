//! Services end to end: agents of simulated servers that run real processes start
//! instances of a small HTTP server (each answers its instance id), and the cluster
//! master's own HAProxy (Debian's, installed by ./test.sh) sends to the healthy ones.
//! An instance killed is replaced and HAProxy follows; a scale-down under load fails
//! no request (drained first); a rolling restart never has fewer than `min` healthy;
//! requests per second scale the service up; bad input is a 400 naming the field.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glory::client::ApiClient;
use glory_tests::procs::free_tcp;
use glory_tests::TestCluster;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The benchmark's instance program, saying where it serves first.
fn server_program() -> String {
    glory::bench::services::SERVER.replace(
        "http.server.ThreadingHTTPServer(",
        "print(\"serving\", name.decode(), \"on\", sys.argv[1], flush=True)\nhttp.server.ThreadingHTTPServer(",
    )
}

async fn post(api: &ApiClient, path: &str, body: Value) -> anyhow::Result<Value> {
    api.call(Method::POST, path, Some(body)).await
}

/// A cluster of `n` process-running agents in one group, a tenant `t` and a pool `p`
/// of them all, and the instance program on disk.
async fn setup(n: usize) -> anyhow::Result<(TestCluster, tempfile::TempDir)> {
    let cluster = TestCluster::builder()
        .groups(1)
        .agents(n)
        .process_agents(n)
        .start()
        .await?;
    cluster
        .wait_all_up(n as u64, Duration::from_secs(30))
        .await?;
    post(&cluster.api, "/api/v1/tenants", json!({"name": "t"})).await?;
    post(
        &cluster.api,
        "/api/v1/pools",
        json!({"name": "p", "tenant": "t", "component": "custom:web", "size": n}),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("server.py"), server_program())?;
    Ok((cluster, dir))
}

fn web(dir: &tempfile::TempDir, listen: SocketAddr, min: u32, desired: u32, max: u32) -> Value {
    json!({
        "name": "web", "pool": "p",
        "command": ["python3", dir.path().join("server.py"), "{port}"],
        "port": 0,
        "health": {"kind": "http", "path": "/", "interval_seconds": 1, "timeout_seconds": 1, "failures": 2},
        "instances": {"min": min, "max": max, "desired": desired},
        "balancer": {"listen": listen.to_string(), "driver": "haproxy"}
    })
}

/// One request through the balancer: the id of the instance that answered.
async fn request(listen: SocketAddr) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(listen).await?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("not HTTP: {out:?}"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.0 200"), "answered {head:?}");
    Ok(body.to_string())
}

/// Requests in a loop until stopped: (ok, failed).
fn load(listen: SocketAddr, per_second: u64) -> (Arc<AtomicBool>, Arc<(AtomicU64, AtomicU64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let (s, c) = (stop.clone(), counts.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
        while !s.load(Ordering::Relaxed) {
            tick.tick().await;
            let c = c.clone();
            tokio::spawn(async move {
                match request(listen).await {
                    Ok(_) => c.0.fetch_add(1, Ordering::Relaxed),
                    Err(_) => c.1.fetch_add(1, Ordering::Relaxed),
                };
            });
        }
    });
    (stop, counts)
}

/// Wait until `check` holds for the service (GET /services/web), or fail with it.
async fn wait_service(
    api: &ApiClient,
    what: &str,
    within: Duration,
    check: impl Fn(&Value, &[Value]) -> bool,
) -> anyhow::Result<(Value, Vec<Value>)> {
    let deadline = Instant::now() + within;
    loop {
        let s = api.get("/api/v1/services/web").await?;
        let i = api.get("/api/v1/services/web/instances").await?;
        let items = i["items"].as_array().cloned().unwrap_or_default();
        if check(&s, &items) {
            return Ok((s, items));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:#}\n{items:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn healthy_ids(items: &[Value]) -> BTreeSet<String> {
    items
        .iter()
        .filter(|i| i["state"] == "healthy")
        .map(|i| i["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Instance ids seen answering `n` requests through the balancer.
async fn answering(listen: SocketAddr, n: usize) -> anyhow::Result<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(request(listen).await?);
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_run_heal_scale_and_restart_behind_haproxy() -> anyhow::Result<()> {
    let (cluster, dir) = setup(4).await?;
    let api = &cluster.api;
    let listen = free_tcp();
    let created = post(api, "/api/v1/services", web(&dir, listen, 2, 2, 4)).await?;
    assert_eq!(created["desired"], 2, "{created}");
    let mut events = api.events("/api/v1/pools/p/events").await?;
    let (_, items) = wait_service(
        api,
        "2 healthy instances in the balancer",
        Duration::from_secs(30),
        |s, i| healthy_ids(i).len() == 2 && s["balancer"]["serving"] == 2,
    )
    .await?;
    let first = healthy_ids(&items);
    let nodes: BTreeSet<&str> = items.iter().filter_map(|i| i["node"].as_str()).collect();
    assert_eq!(nodes.len(), 2, "spread over two nodes: {items:#?}");
    assert!(
        items
            .iter()
            .all(|i| i["port"].as_u64().is_some_and(|p| p > 0)),
        "ports picked: {items:#?}"
    );
    // Traffic reaches both through the balancer, on a loopback address glory owns.
    let seen = wait_until_answering(listen, &first).await?;
    assert_eq!(seen, first);
    // The last lines of each instance's output.
    let logs = api.get("/api/v1/services/web/logs").await?;
    assert!(
        logs["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["lines"][0]
                .as_str()
                .is_some_and(|s| s.starts_with("serving web-"))),
        "{logs:#}"
    );

    // An instance killed: drained, replaced on another node, HAProxy follows.
    let victim = items
        .iter()
        .find(|i| i["state"] == "healthy")
        .unwrap()
        .clone();
    let pid = victim["pid"]
        .as_u64()
        .expect("a running instance has a pid");
    let killed = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    let (_, items) = wait_service(api, "a replacement", Duration::from_secs(30), |s, i| {
        let h = healthy_ids(i);
        h.len() == 2 && !h.contains(victim["id"].as_str().unwrap()) && s["balancer"]["serving"] == 2
    })
    .await?;
    let replaced_in = killed.elapsed();
    let now = healthy_ids(&items);
    let seen = wait_until_answering(listen, &now).await?;
    assert_eq!(
        seen, now,
        "the balancer sends to the replacement, not the killed one"
    );
    eprintln!("instance killed -> replacement healthy in the balancer: {replaced_in:?}");
    let mut kinds = Vec::new();
    while !kinds
        .iter()
        .any(|(a, i): &(String, String)| a == "removed" && i == victim["id"].as_str().unwrap())
    {
        let msg = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await??
            .ok_or_else(|| anyhow::anyhow!("events ended"))?;
        if msg.event == "service_instance" {
            kinds.push((
                msg.data["action"].as_str().unwrap_or_default().to_string(),
                msg.data["instance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
    }
    let actions: Vec<&str> = kinds
        .iter()
        .filter(|(_, i)| i == victim["id"].as_str().unwrap())
        .map(|(a, _)| a.as_str())
        .collect();
    assert_eq!(actions, ["failed", "removed"], "{kinds:?}");

    // Scale up, then down under load: the removed instance is drained first.
    post(api, "/api/v1/services/web/scale", json!({"desired": 3})).await?;
    wait_service(api, "3 healthy", Duration::from_secs(30), |s, i| {
        healthy_ids(i).len() == 3 && s["balancer"]["serving"] == 3
    })
    .await?;
    let (stop, counts) = load(listen, 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    post(api, "/api/v1/services/web/scale", json!({"desired": 2})).await?;
    wait_service(
        api,
        "back to 2, the third removed",
        Duration::from_secs(30),
        |s, i| i.len() == 2 && s["balancer"]["serving"] == 2,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed) = (
        counts.0.load(Ordering::Relaxed),
        counts.1.load(Ordering::Relaxed),
    );
    eprintln!("scale-down under load: {ok} requests, {failed} failed");
    assert!(ok > 50, "{ok} requests went through");
    assert_eq!(
        failed, 0,
        "no request fails while an instance is drained and removed"
    );

    // A rolling restart: every instance replaced, never fewer than min (2) healthy.
    let before: BTreeSet<String> = healthy_ids(
        &api.get("/api/v1/services/web/instances").await?["items"]
            .as_array()
            .unwrap()
            .clone(),
    );
    post(api, "/api/v1/services/web/restart", json!({})).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut least = usize::MAX;
    loop {
        let s = api.get("/api/v1/services/web").await?;
        least = least.min(s["healthy"].as_u64().unwrap_or(0) as usize);
        if s["restarting"].is_null() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the rolling restart never ended: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, items) = wait_service(
        api,
        "2 healthy after the restart",
        Duration::from_secs(30),
        |_, i| healthy_ids(i).len() == 2 && i.len() == 2,
    )
    .await?;
    assert!(least >= 2, "at some moment only {least} were healthy");
    assert!(
        healthy_ids(&items).is_disjoint(&before),
        "all replaced: {before:?} -> {items:#?}"
    );

    // Stop keeps the placements; start brings them back.
    post(api, "/api/v1/services/web/stop", json!({})).await?;
    let (_, items) = wait_service(api, "stopped", Duration::from_secs(30), |s, i| {
        i.iter().all(|x| x["state"] == "stopped") && s["balancer"]["serving"] == 0
    })
    .await?;
    let pids: Vec<u64> = items.iter().filter_map(|i| i["pid"].as_u64()).collect();
    assert!(pids.is_empty(), "{items:#?}");
    post(api, "/api/v1/services/web/start", json!({})).await?;
    let (_, items) = wait_service(api, "started again", Duration::from_secs(30), |s, i| {
        healthy_ids(i).len() == 2 && s["balancer"]["serving"] == 2
    })
    .await?;
    let pids: Vec<u64> = items.iter().filter_map(|i| i["pid"].as_u64()).collect();

    // Deleted: its processes end and its balancer closes.
    let (status, _) = api
        .request(Method::DELETE, "/api/v1/services/web", None)
        .await?;
    assert_eq!(status, 204);
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|p| alive(*p)) || tokio::net::TcpStream::connect(listen).await.is_ok() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "instances {pids:?} or the balancer outlived the service"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await;
    Ok(())
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
}

/// Requests until every one of `want` answered (HAProxy may still be adding one).
async fn wait_until_answering(
    listen: SocketAddr,
    want: &BTreeSet<String>,
) -> anyhow::Result<BTreeSet<String>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = answering(listen, 20).await?;
        if &seen == want || Instant::now() > deadline {
            return Ok(seen);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_second_scale_a_service_up_and_down() -> anyhow::Result<()> {
    let (cluster, dir) = setup(3).await?;
    let api = &cluster.api;
    let listen = free_tcp();
    let mut spec = web(&dir, listen, 1, 1, 3);
    spec["scaling"] =
        json!({"metric": "requests_per_sec", "target": 5, "scale_down_window_seconds": 10});
    post(api, "/api/v1/services", spec).await?;
    wait_service(api, "1 healthy", Duration::from_secs(30), |s, i| {
        healthy_ids(i).len() == 1 && s["balancer"]["serving"] == 1
    })
    .await?;
    // 30 requests a second for a 5-per-instance target: ceil(1 x 30 / 5) = 6, at most 3.
    let (stop, counts) = load(listen, 30);
    let started = Instant::now();
    wait_service(
        api,
        "scaled up to 3, all in the balancer",
        Duration::from_secs(40),
        |s, i| healthy_ids(i).len() == 3 && s["balancer"]["serving"] == 3,
    )
    .await?;
    eprintln!(
        "load above the target -> 3 healthy in the balancer: {:?}",
        started.elapsed()
    );
    let scaling = api.get("/api/v1/services/web/scaling").await?;
    let up = scaling["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["desired"].as_u64() > d["current"].as_u64())
        .cloned()
        .unwrap_or_else(|| panic!("no scale-up decision: {scaling:#}"));
    assert_eq!(up["metric"], "requests_per_sec");
    assert!(up["value"].as_f64().is_some_and(|v| v > 5.5), "{up}");
    assert!(up["reason"].as_str().unwrap().contains("ceil("), "{up}");
    // Load gone: after the 10 s window, one instance fewer (one per minute), drained.
    stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    wait_service(api, "scaled down", Duration::from_secs(40), |s, _| {
        s["desired"] == 2
    })
    .await?;
    // Held, not at once. The 10 s window counts from the last recommendation of 3,
    // which comes before `stop` when a busy machine stalls the load generator and the
    // measured rate dips (a clean-clone run scaled down 8.98 s after `stop`); the
    // window itself is pinned exactly by service-manager's autoscale unit tests.
    assert!(
        stopped.elapsed() >= Duration::from_secs(5),
        "not before the window: {:?}",
        stopped.elapsed()
    );
    assert_eq!(counts.1.load(Ordering::Relaxed), 0, "no request failed");
    let last = api.get("/api/v1/services/web/scaling").await?;
    let down = last["items"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|d| d["desired"] == 2)
        .cloned();
    assert!(down.is_some_and(|d| d["current"] == 3), "{last:#}");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_services_are_refused_naming_the_field_and_tenants_see_their_own() -> anyhow::Result<()>
{
    let (cluster, dir) = setup(2).await?;
    let api = &cluster.api;
    let listen = free_tcp();
    let base = web(&dir, listen, 1, 1, 2);
    type Patch = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Patch)> = vec![
        ("pool", Box::new(|v| v["pool"] = "nope".into())),
        (
            "instances.min",
            Box::new(|v| v["instances"] = json!({"min": 3, "max": 2, "desired": 2})),
        ),
        ("port", Box::new(|v| v["port"] = 70000.into())),
        (
            "health.path",
            Box::new(|v| v["health"]["path"] = "no-slash".into()),
        ),
        ("name", Box::new(|v| v["name"] = "Web!".into())),
        (
            "balancer.listen",
            Box::new(|v| v["balancer"]["listen"] = "127.0.0.1:0".into()),
        ),
        (
            "package",
            Box::new(|v| {
                v["package"] = "web.tar.zst".into();
                v["command"] = json!([]);
            }),
        ),
    ];
    for (field, patch) in cases {
        let mut body = base.clone();
        patch(&mut body);
        let (status, answer) = api
            .request(Method::POST, "/api/v1/services", Some(body))
            .await?;
        // Rules between fields, or naming a pool that does not exist: 422.
        let rule = matches!(field, "pool" | "instances.min" | "health.path" | "package");
        assert_eq!(status, if rule { 422 } else { 400 }, "{field}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{field}: {message}");
    }
    let list = api.get("/api/v1/services").await?;
    assert_eq!(list["total"], 0, "nothing half-created: {list}");
    // A tenant sees its services; another tenant does not.
    post(api, "/api/v1/services", base.clone()).await?;
    post(api, "/api/v1/tenants", json!({"name": "other"})).await?;
    let token = post(
        api,
        "/api/v1/tokens",
        json!({"role": "tenant", "tenant": "other"}),
    )
    .await?;
    let other = api.with_token(token["token"].as_str().unwrap());
    let (status, _) = other
        .request(Method::GET, "/api/v1/services/web", None)
        .await?;
    assert_eq!(status, 404);
    assert_eq!(other.get("/api/v1/services").await?["total"], 0);
    let (status, _) = other
        .request(Method::POST, "/api/v1/services/web/stop", Some(json!({})))
        .await?;
    assert_eq!(status, 404);
    let token = post(
        api,
        "/api/v1/tokens",
        json!({"role": "tenant", "tenant": "t"}),
    )
    .await?;
    let own = api.with_token(token["token"].as_str().unwrap());
    assert_eq!(own.get("/api/v1/services").await?["total"], 1);
    // The same balancer address for a second service: 409.
    let mut second = base.clone();
    second["name"] = "web2".into();
    let (status, answer) = api
        .request(Method::POST, "/api/v1/services", Some(second))
        .await?;
    assert_eq!(status, 409, "{answer}");
    let (status, answer) = api
        .request(
            Method::POST,
            "/api/v1/services/web/scale",
            Some(json!({"desired": 5})),
        )
        .await?;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("desired"),
        "{answer}"
    );
    cluster.shutdown().await;
    Ok(())
}

/// The same service behind the kernel's own balancer: nftables DNAT rules on the
/// master's host (here loopback), changed in one transaction, removed with the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nftables_driver_balances_in_the_kernel() -> anyhow::Result<()> {
    let (cluster, dir) = setup(2).await?;
    let api = &cluster.api;
    let listen = free_tcp();
    let mut spec = web(&dir, listen, 2, 2, 2);
    spec["name"] = "web".into();
    spec["balancer"]["driver"] = "nftables".into();
    post(api, "/api/v1/services", spec).await?;
    let (_, items) = wait_service(
        api,
        "2 healthy in the kernel balancer",
        Duration::from_secs(30),
        |s, i| {
            healthy_ids(i).len() == 2
                && s["balancer"]["serving"] == 2
                && s["balancer"]["error"].is_null()
        },
    )
    .await?;
    let want = healthy_ids(&items);
    let seen = wait_until_answering(listen, &want).await?;
    assert_eq!(seen, want, "both instances answer through the DNAT rules");
    let table = format!("glory_{}", "web");
    let listed = std::process::Command::new("nft")
        .args(["list", "table", "ip", &table])
        .output()?;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let (status, _) = api
        .request(Method::DELETE, "/api/v1/services/web", None)
        .await?;
    assert_eq!(status, 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::process::Command::new("nft")
        .args(["list", "table", "ip", &table])
        .output()?
        .status
        .success()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "table {table} outlived the service"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await;
    Ok(())
}

/// A new cluster master takes over the services as they are: the same instances
/// (the same processes), not new ones, and its own HAProxy on the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_survive_a_cluster_master_restart() -> anyhow::Result<()> {
    let (mut cluster, dir) = setup(3).await?;
    let listen = free_tcp();
    post(&cluster.api, "/api/v1/services", web(&dir, listen, 2, 2, 3)).await?;
    let (_, before) = wait_service(
        &cluster.api,
        "2 healthy",
        Duration::from_secs(30),
        |s, i| healthy_ids(i).len() == 2 && s["balancer"]["serving"] == 2,
    )
    .await?;
    let pids = |items: &[Value]| -> BTreeSet<(String, u64)> {
        items
            .iter()
            .filter_map(|i| Some((i["id"].as_str()?.to_string(), i["pid"].as_u64()?)))
            .collect()
    };
    let was = pids(&before);
    assert_eq!(was.len(), 2, "{before:#?}");
    cluster.restart_cluster_master().await?;
    let api = &cluster.api;
    let (_, after) = wait_service(
        api,
        "the same 2 healthy again",
        Duration::from_secs(30),
        |s, i| healthy_ids(i).len() == 2 && s["balancer"]["serving"] == 2,
    )
    .await?;
    assert_eq!(pids(&after), was, "the same processes, nothing replaced");
    let want = healthy_ids(&after);
    let seen = wait_until_answering(listen, &want).await?;
    assert_eq!(seen, want, "the new master's HAProxy sends to them");
    cluster.shutdown().await;
    Ok(())
}
