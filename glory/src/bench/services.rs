//! `glory services-bench`: the service manager's numbers (docs/BENCHMARKS.md).
//!
//! With real agents on this machine (`glory up --real-agents`), a small HTTP server
//! per instance and the cluster master's HAProxy in front, under an open-loop load
//! (a new TCP connection and request every 1/rate s):
//! - `failover`: an instance killed (`kill -9`): failed requests, when the last one
//!   failed, and when a replacement was healthy in the balancer.
//! - `scale-up`: load from nothing to twice the per-instance target of a
//!   `requests_per_sec` policy: when the first new instance serves, and the last.
//! - `scale-down`: 3 instances scaled to 1 under load: failed requests (drained first).
//!
//! With simulated nodes (`steady`): N services of 3 instances on M simulated nodes;
//! the reconcile loop's CPU at steady state, from its own counters.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::ApiClient;
use crate::up::{Up, UpOptions};

/// Arguments of `glory services-bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServicesBenchArgs {
    /// failover, scale-up, scale-down, steady, or all.
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// Requests per second of the load.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Simulated nodes of the steady-state scenario.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// Services of the steady-state scenario (3 instances each).
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// How long the steady state is measured, seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

/// The instance program of the benchmark and the tests: answers `GET` with its
/// instance id (`$GLORY_INSTANCE`), serving on the port given as its argument.
pub const SERVER: &str = r#"
import http.server, os, sys
name = os.environ["GLORY_INSTANCE"].encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

/// One request's outcome: when it started (ms after the load began) and whether it
/// got a 200.
type Outcome = (u64, bool);

/// An open-loop load: a request every 1/rate s until stopped.
struct Load {
    start: Instant,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Load {
    fn start(listen: SocketAddr, rate: u64) -> Load {
        let start = Instant::now();
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (o, s) = (outcomes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let at = start.elapsed().as_millis() as u64;
                let o = o.clone();
                tokio::spawn(async move {
                    let ok = request(listen).await.is_ok();
                    o.lock().unwrap_or_else(|p| p.into_inner()).push((at, ok));
                });
            }
        });
        Load {
            start,
            outcomes,
            stop,
        }
    }

    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Stop, let requests in flight end; every outcome.
    async fn finish(self) -> Vec<Outcome> {
        self.stop.cancel();
        tokio::time::sleep(Duration::from_secs(6)).await;
        let mut all = self
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        all.sort();
        all
    }
}

async fn request(listen: SocketAddr) -> anyhow::Result<()> {
    let run = async {
        let mut s = tokio::net::TcpStream::connect(listen).await?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::ensure!(out.starts_with(b"HTTP/1.0 200"), "not a 200");
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), run).await?
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScaleUp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScaleDown>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steady: Option<Steady>,
}

#[derive(Debug, Serialize)]
pub struct Failover {
    pub rate: u64,
    pub requests: usize,
    pub failed: usize,
    /// From the kill to the last failed request (traffic moved away).
    pub last_failure_after_ms: Option<u64>,
    /// From the kill to a replacement healthy in the balancer.
    pub replacement_serving_after_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct ScaleUp {
    pub rate: u64,
    pub target_per_instance: f64,
    /// From the load starting (above the target at once) to the first new instance
    /// healthy in the balancer.
    pub first_new_serving_ms: u64,
    /// ... to every instance the autoscaler asked for serving.
    pub all_serving_ms: u64,
    pub instances: u64,
    pub failed: usize,
}

#[derive(Debug, Serialize)]
pub struct ScaleDown {
    pub rate: u64,
    pub requests: usize,
    pub failed: usize,
    /// From the scale request to one instance left.
    pub done_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Steady {
    pub nodes: usize,
    pub services: usize,
    pub instances: u64,
    pub seconds: u64,
    pub passes_per_second: f64,
    /// The reconcile loop's CPU time per wall second (1.0 = one core).
    pub reconcile_cpu_cores: f64,
    pub cpu_ms_per_pass: f64,
}

pub async fn run(args: ServicesBenchArgs) -> anyhow::Result<Report> {
    let all = args.scenario == "all";
    let known = ["all", "failover", "scale-up", "scale-down", "steady"];
    anyhow::ensure!(
        known.contains(&args.scenario.as_str()),
        "--scenario: one of {}",
        known.join(", ")
    );
    let mut report = Report::default();
    let wants = |s: &str| all || args.scenario == s;
    if wants("failover") || wants("scale-up") || wants("scale-down") {
        let dir = tempfile::tempdir()?;
        let up = Up::start(UpOptions {
            data_dir: dir.path().to_path_buf(),
            nodes: 0,
            groups: 1,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            real_agents: 4,
            ..Default::default()
        })
        .await?;
        let api = ApiClient::new(&format!("http://{}", up.api_addr), &up.operator_token)?;
        let group = up.real_group.clone().context("no real agents' group")?;
        let result = real_scenarios(&api, &args, &group, dir.path(), &mut report).await;
        up.shutdown().await;
        result?;
    }
    if wants("steady") {
        report.steady = Some(steady(&args).await?);
    }
    Ok(report)
}

async fn real_scenarios(
    api: &ApiClient,
    args: &ServicesBenchArgs,
    group: &str,
    dir: &std::path::Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    wait(
        api,
        "the real agents up",
        |v| v["nodes_by_state"]["up"] == 4,
        "/api/v1/cluster",
    )
    .await?;
    api.call(
        Method::POST,
        "/api/v1/tenants",
        Some(json!({"name": "bench"})),
    )
    .await?;
    api.call(
        Method::POST,
        "/api/v1/pools",
        Some(
            json!({"name": "real", "tenant": "bench", "component": "custom:bench", "size": 4,
                    "selector": {"groups": [group]}}),
        ),
    )
    .await?;
    let script = dir.join("server.py");
    std::fs::write(&script, SERVER)?;
    let spec = |name: &str, listen: SocketAddr, desired: u32| {
        json!({
            "name": name, "pool": "real",
            "command": ["python3", script, "{port}"],
            "health": {"kind": "http", "path": "/", "interval_seconds": 1, "timeout_seconds": 1, "failures": 2},
            "instances": {"min": 1, "max": 4, "desired": desired},
            "balancer": {"listen": listen.to_string(), "driver": "haproxy"}
        })
    };
    let wanted = |name: &str, n: u64| {
        let path = format!("/api/v1/services/{name}");
        (path, move |v: &Value| {
            v["healthy"] == n && v["balancer"]["serving"] == n
        })
    };
    if args.scenario == "all" || args.scenario == "failover" {
        let listen = free_port()?;
        api.call(
            Method::POST,
            "/api/v1/services",
            Some(spec("fo", listen, 3)),
        )
        .await?;
        let (path, ok) = wanted("fo", 3);
        wait(api, "3 instances serving", ok, &path).await?;
        let load = Load::start(listen, args.rate);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let items = api.get("/api/v1/services/fo/instances").await?;
        let victim = items["items"][0].clone();
        let pid = victim["pid"].as_u64().context("instance without a pid")?;
        let killed_at = load.ms();
        let killed = Instant::now();
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
        let victim_id = victim["id"].as_str().unwrap_or_default().to_string();
        loop {
            let s = api.get(&path).await?;
            let i = api.get("/api/v1/services/fo/instances").await?;
            let gone = !i["items"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x["id"] == victim_id.as_str() && x["state"] == "healthy")
            });
            if gone && s["healthy"] == 3 && s["balancer"]["serving"] == 3 {
                break;
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(60),
                "no replacement within 60 s: {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let replaced = killed.elapsed().as_millis() as u64;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let outcomes = load.finish().await;
        let failed: Vec<u64> = outcomes.iter().filter(|o| !o.1).map(|o| o.0).collect();
        report.failover = Some(Failover {
            rate: args.rate,
            requests: outcomes.len(),
            failed: failed.len(),
            last_failure_after_ms: failed.last().map(|at| at.saturating_sub(killed_at)),
            replacement_serving_after_ms: replaced,
        });
        api.request(Method::DELETE, "/api/v1/services/fo", None)
            .await?;
    }
    if args.scenario == "all" || args.scenario == "scale-up" {
        let listen = free_port()?;
        let target = (args.rate as f64 / 2.0).max(1.0);
        let mut s = spec("up", listen, 1);
        s["scaling"] = json!({"metric": "requests_per_sec", "target": target, "scale_down_window_seconds": 300});
        api.call(Method::POST, "/api/v1/services", Some(s)).await?;
        let (path, ok) = wanted("up", 1);
        wait(api, "1 instance serving", ok, &path).await?;
        let load = Load::start(listen, args.rate);
        let started = Instant::now();
        let mut first = None;
        let (all_ms, n) = loop {
            let s = api.get(&path).await?;
            let serving = s["balancer"]["serving"].as_u64().unwrap_or(0);
            if serving >= 2 && first.is_none() {
                first = Some(started.elapsed().as_millis() as u64);
            }
            let desired = s["desired"].as_u64().unwrap_or(0);
            if desired >= 2 && serving == desired && s["healthy"] == desired {
                break (started.elapsed().as_millis() as u64, desired);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(90),
                "no scale-up within 90 s: {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let outcomes = load.finish().await;
        report.scale_up = Some(ScaleUp {
            rate: args.rate,
            target_per_instance: target,
            first_new_serving_ms: first.unwrap_or(all_ms),
            all_serving_ms: all_ms,
            instances: n,
            failed: outcomes.iter().filter(|o| !o.1).count(),
        });
        api.request(Method::DELETE, "/api/v1/services/up", None)
            .await?;
    }
    if args.scenario == "all" || args.scenario == "scale-down" {
        let listen = free_port()?;
        api.call(
            Method::POST,
            "/api/v1/services",
            Some(spec("down", listen, 3)),
        )
        .await?;
        let (path, ok) = wanted("down", 3);
        wait(api, "3 instances serving", ok, &path).await?;
        let load = Load::start(listen, args.rate);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let asked = Instant::now();
        api.call(
            Method::POST,
            "/api/v1/services/down/scale",
            Some(json!({"desired": 1})),
        )
        .await?;
        loop {
            let i = api.get("/api/v1/services/down/instances").await?;
            if i["total"] == 1 {
                break;
            }
            anyhow::ensure!(
                asked.elapsed() < Duration::from_secs(90),
                "still {} instances",
                i["total"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let done_ms = asked.elapsed().as_millis() as u64;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let outcomes = load.finish().await;
        report.scale_down = Some(ScaleDown {
            rate: args.rate,
            requests: outcomes.len(),
            failed: outcomes.iter().filter(|o| !o.1).count(),
            done_ms,
        });
        api.request(Method::DELETE, "/api/v1/services/down", None)
            .await?;
    }
    Ok(())
}

async fn steady(args: &ServicesBenchArgs) -> anyhow::Result<Steady> {
    let dir = tempfile::tempdir()?;
    let groups = args.nodes.div_ceil(250).max(1);
    let up = Up::start(UpOptions {
        data_dir: dir.path().to_path_buf(),
        nodes: args.nodes,
        groups,
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Default::default()
    })
    .await?;
    let api = ApiClient::new(&format!("http://{}", up.api_addr), &up.operator_token)?
        .with_timeout(Duration::from_secs(60))?;
    let nodes = args.nodes as u64;
    let result = async {
        wait_long(&api, "every simulated node up", |v| v["nodes_by_state"]["up"] == nodes, "/api/v1/cluster", 300).await?;
        api.call(Method::POST, "/api/v1/tenants", Some(json!({"name": "bench"}))).await?;
        // Ten pools share the nodes; the services are spread over them.
        let pools = 10.min(args.nodes.max(1));
        for p in 0..pools {
            api.call(
                Method::POST,
                "/api/v1/pools",
                Some(json!({"name": format!("p{p}"), "tenant": "bench", "component": "custom:bench", "size": args.nodes / pools})),
            )
            .await?;
        }
        for s in 0..args.services {
            api.call(
                Method::POST,
                "/api/v1/services",
                Some(json!({
                    "name": format!("s{s:04}"), "pool": format!("p{}", s % pools),
                    "command": ["srv", "{port}"],
                    "health": {"kind": "tcp"},
                    "instances": {"min": 1, "max": 5, "desired": 3}
                })),
            )
            .await?;
        }
        let want = args.services as u64 * 3;
        let healthy = |v: &Value| {
            v["items"].as_array().map_or(0, |a| a.iter().map(|s| s["healthy"].as_u64().unwrap_or(0)).sum::<u64>())
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let v = api.get("/api/v1/services").await?;
            if healthy(&v) == want {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "only {} of {want} instances healthy", healthy(&v));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Let the placements settle, then measure.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let counters = || async {
            let text = reqwest::Client::new()
                .get(format!("http://{}/metrics", up.api_addr))
                .bearer_auth(&up.operator_token)
                .send()
                .await?
                .text()
                .await?;
            let value = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            anyhow::Ok((
                value("glory_services_reconcile_passes_total"),
                value("glory_services_reconcile_cpu_seconds_total"),
            ))
        };
        let (p0, c0) = counters().await?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let (p1, c1) = counters().await?;
        let secs = t0.elapsed().as_secs_f64();
        anyhow::Ok(Steady {
            nodes: args.nodes,
            services: args.services,
            instances: want,
            seconds: args.seconds,
            passes_per_second: (p1 - p0) / secs,
            reconcile_cpu_cores: (c1 - c0) / secs,
            cpu_ms_per_pass: if p1 > p0 { (c1 - c0) * 1000.0 / (p1 - p0) } else { 0.0 },
        })
    }
    .await;
    up.shutdown().await;
    result
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

async fn wait(
    api: &ApiClient,
    what: &str,
    ok: impl Fn(&Value) -> bool,
    path: &str,
) -> anyhow::Result<()> {
    wait_long(api, what, ok, path, 60).await
}

async fn wait_long(
    api: &ApiClient,
    what: &str,
    ok: impl Fn(&Value) -> bool,
    path: &str,
    seconds: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let v = api.get(path).await?;
        if ok(&v) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not within {seconds} s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
