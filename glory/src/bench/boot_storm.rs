//! `glory provision boot-storm`: N simulated servers ask one provisioner for their
//! iPXE script and their kernel over HTTP within a time window (a rack row powered on
//! together). The provisioner is the real one, linked to a real cluster master
//! (`glory up` in this process, embedded key master): every script is a boot plan
//! with a token minted in the key master. Reports scripts and kernels per second,
//! latency percentiles, bytes per second, failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use glory_keymaster::schema::BootstrapScope;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::report::{percentiles, Percentiles};

#[derive(Debug, Serialize)]
pub struct BootStormReport {
    pub servers: usize,
    pub window_seconds: f64,
    pub concurrency: usize,
    pub kernel_bytes: u64,
    pub elapsed_seconds: f64,
    pub scripts_ok: usize,
    pub scripts_per_sec: f64,
    pub script_latency_ms: Option<Percentiles>,
    pub kernels_ok: usize,
    pub kernel_latency_ms: Option<Percentiles>,
    pub bytes_per_sec: f64,
    pub failures: usize,
    pub first_failure: Option<String>,
    pub boot_records: usize,
}

struct One {
    script_ms: Option<f64>,
    kernel_ms: Option<f64>,
    error: Option<String>,
}

async fn one_server(http: reqwest::Client, base: String, mac: String, kernel_len: u64) -> One {
    let mut out = One {
        script_ms: None,
        kernel_ms: None,
        error: None,
    };
    let t = Instant::now();
    let script = match http.get(format!("{base}/boot/{mac}.ipxe")).send().await {
        Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
        Ok(r) => {
            out.error = Some(format!("script: HTTP {}", r.status()));
            return out;
        }
        Err(e) => {
            out.error = Some(format!("script: {e}"));
            return out;
        }
    };
    if !script.contains("glory.token=") {
        out.error = Some(format!("script without a token: {script}"));
        return out;
    }
    out.script_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
    let t = Instant::now();
    match http.get(format!("{base}/boot/{mac}/vmlinuz")).send().await {
        Ok(r) if r.status().is_success() => match r.bytes().await {
            Ok(b) if b.len() as u64 == kernel_len => {
                out.kernel_ms = Some(t.elapsed().as_secs_f64() * 1000.0)
            }
            Ok(b) => out.error = Some(format!("kernel: {} of {kernel_len} bytes", b.len())),
            Err(e) => out.error = Some(format!("kernel: {e}")),
        },
        Ok(r) => out.error = Some(format!("kernel: HTTP {}", r.status())),
        Err(e) => out.error = Some(format!("kernel: {e}")),
    }
    out
}

/// Run the storm: `servers` arrive evenly over `window`, at most `concurrency` at once.
pub async fn run(
    servers: usize,
    window: Duration,
    concurrency: usize,
    agent: Option<std::path::PathBuf>,
) -> anyhow::Result<BootStormReport> {
    let dir = tempfile::tempdir()?;
    let up = crate::up::Up::start(crate::up::UpOptions {
        data_dir: dir.path().join("cluster"),
        nodes: 0,
        groups: 1,
        api_listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    })
    .await?;
    let cluster = up.cluster();
    let (token, _) = cluster
        .create_bootstrap_token(
            Some(Duration::from_secs(600)),
            true,
            BootstrapScope::Provisioner,
            "boot storm",
        )
        .await?;
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = glory_provisioner::config::ProvisionerConfig {
        name: "storm".into(),
        cluster_master: up.quic_addr,
        token: Some(token),
        state_dir: dir.path().join("provisioner"),
        server_ip: std::net::Ipv4Addr::LOCALHOST,
        dhcp_port: 0,
        tftp_port: 0,
        http_port,
        range_first: Some(std::net::Ipv4Addr::new(127, 1, 0, 1)),
        range_last: Some(std::net::Ipv4Addr::new(127, 1, 255, 254)),
        router_advertisements: false,
        agent_binary: agent,
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let running = glory_provisioner::run::start(config.clone(), shutdown.clone())
        .await
        .context("start the provisioner")?;
    let kernel_len = std::fs::metadata(config.state_dir.join("boot").join("vmlinuz"))?.len();
    let base = format!("http://{}", running.http);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(120))
        .build()?;
    // The link is up once a plan comes back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http
            .get(format!("{base}/boot/02:00:00:00:00:00.ipxe"))
            .send()
            .await;
        if let Ok(r) = r {
            if r.text().await.unwrap_or_default().contains("glory.token=") {
                break;
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("the provisioner got no boot plan within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gate = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(servers);
    for i in 0..servers {
        let at = window.mul_f64(i as f64 / servers.max(1) as f64);
        let (http, base, gate) = (http.clone(), base.clone(), gate.clone());
        let mac = format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:01",
            (i >> 24) & 0xff,
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        );
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until((start + at).into()).await;
            let _permit = gate.acquire_owned().await;
            one_server(http, base, mac, kernel_len).await
        }));
    }
    let mut scripts = Vec::new();
    let mut kernels = Vec::new();
    let mut failures = 0;
    let mut first_failure = None;
    for t in tasks {
        let one = t.await?;
        scripts.extend(one.script_ms);
        kernels.extend(one.kernel_ms);
        if let Some(e) = one.error {
            failures += 1;
            first_failure.get_or_insert(e);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Progress reports travel in 200 ms batches.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api = crate::client::ApiClient::new(&up.api_addr.to_string(), &up.operator_token)?;
    let boot_records = api.get("/api/v1/boot?limit=1").await?["total"]
        .as_u64()
        .unwrap_or(0) as usize;
    shutdown.cancel();
    up.shutdown().await;
    Ok(BootStormReport {
        servers,
        window_seconds: window.as_secs_f64(),
        concurrency,
        kernel_bytes: kernel_len,
        elapsed_seconds: elapsed,
        scripts_ok: scripts.len(),
        scripts_per_sec: scripts.len() as f64 / elapsed,
        script_latency_ms: percentiles(&scripts),
        kernels_ok: kernels.len(),
        kernel_latency_ms: percentiles(&kernels),
        bytes_per_sec: kernels.len() as f64 * kernel_len as f64 / elapsed,
        failures,
        first_failure,
        boot_records,
    })
}
