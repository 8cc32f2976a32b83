//! The agents' process of `glory sim` (`glory sim-agents`, spawned by `glory sim`), so
//! masters and agents are measured apart. It runs the simulated fleet and takes line
//! commands on stdin: `kill I`, `start I`, `stats`, `stop`. It answers on stdout:
//! `ready`, `killed I MS`, `started I MS`, `stats SENT ENROLLED SESSIONS`, `stopped`
//! (MS: wall clock in ms since the epoch).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use glory_node_agent::AgentConfig;
use glory_protocol::{now_ms, CaTrust};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sim::SimFleet;

/// Arguments of `glory sim-agents`.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentsArgs {
    #[arg(long)]
    pub cluster_master: Option<SocketAddr>,
    /// More cluster masters (standbys), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub cluster_masters: Vec<SocketAddr>,
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Pin the cluster CA by its SHA-256 instead of --ca-file.
    #[arg(long)]
    pub ca_hash: Option<String>,
    #[arg(long)]
    pub nodes: usize,
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Metrics interval (0: none).
    #[arg(long, default_value_t = 5000)]
    pub metrics_ms: u64,
    /// Client endpoints to spread the agents over.
    #[arg(long, default_value_t = 8)]
    pub endpoints: usize,
    /// Flat baseline: renew leases at this HTTP base URL instead of running agents.
    #[arg(long)]
    pub flat_api: Option<String>,
    /// Power agents on at most this many a second (0: all at once).
    #[arg(long, default_value_t = 1000)]
    pub ramp_per_sec: usize,
    /// Flat baseline: lease renewal period, seconds.
    #[arg(long, default_value_t = 10)]
    pub flat_renew_secs: u64,
}

/// Kubernetes-style nodes: each renews its lease over HTTP every `renew`.
struct FlatFleet {
    api: String,
    renew: Duration,
    http: reqwest::Client,
    power: Mutex<Vec<Option<CancellationToken>>>,
    sent: Arc<AtomicU64>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl FlatFleet {
    fn start(&self, index: usize) -> bool {
        let mut power = self.power.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = power.get_mut(index) else {
            return false;
        };
        if slot.is_some() {
            return false;
        }
        let token = self.shutdown.child_token();
        *slot = Some(token.clone());
        let url = format!("{}/flat/leases/sim-{index:05}", self.api);
        let (http, sent, renew) = (self.http.clone(), self.sent.clone(), self.renew);
        self.tasks.spawn(async move {
            // First renewal at once (registration), then every `renew` at a random phase.
            let phase = renew.mul_f64(rand::random::<f64>());
            let mut next = tokio::time::Instant::now();
            let mut first = true;
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep_until(next) => {}
                }
                if http
                    .put(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                next += if first { phase } else { renew };
                first = false;
            }
        });
        true
    }

    fn kill(&self, index: usize) -> bool {
        let mut power = self.power.lock().unwrap_or_else(|p| p.into_inner());
        match power.get_mut(index).and_then(Option::take) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

enum Fleet {
    Hierarchy(SimFleet),
    Flat(Arc<FlatFleet>),
}

impl Fleet {
    fn kill(&self, i: usize) -> bool {
        match self {
            Fleet::Hierarchy(f) => f.kill_index(i),
            Fleet::Flat(f) => f.kill(i),
        }
    }
    fn start(&self, i: usize) -> bool {
        match self {
            Fleet::Hierarchy(f) => f.start_index(i),
            Fleet::Flat(f) => f.start(i),
        }
    }
    fn stats(&self) -> (u64, u64, u64) {
        match self {
            Fleet::Hierarchy(f) => {
                let s = f.stats();
                (
                    s.heartbeats_sent.load(Ordering::Relaxed),
                    s.enrollments.load(Ordering::Relaxed),
                    s.sessions.load(Ordering::Relaxed),
                )
            }
            Fleet::Flat(f) => (f.sent.load(Ordering::Relaxed), 0, 0),
        }
    }
}

/// Run the agents' process until `stop` or end of input.
pub async fn run(args: AgentsArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let fleet = match &args.flat_api {
        Some(api) => {
            let fleet = Arc::new(FlatFleet {
                api: api.trim_end_matches('/').to_string(),
                renew: Duration::from_secs(args.flat_renew_secs.max(1)),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()?,
                power: Mutex::new(vec![None; args.nodes]),
                sent: Arc::default(),
                tasks: TaskTracker::new(),
                shutdown: shutdown.clone(),
            });
            for i in 0..args.nodes {
                fleet.start(i);
            }
            Fleet::Flat(fleet)
        }
        None => {
            let mut settings = AgentConfig {
                cluster_master: args
                    .cluster_master
                    .context("--cluster-master is required")?,
                cluster_masters: args.cluster_masters.clone(),
                token: Some(args.token.clone().context("--token is required")?),
                heartbeat_interval_ms: args.heartbeat_ms,
                metrics_interval_ms: args.metrics_ms,
                // Two minutes per simulated node: 10,000 of them share this process.
                metrics_buffer_seconds: 120,
                max_backoff_ms: 2000,
                request_timeout_ms: 10_000,
                ..Default::default()
            }
            .validate()?;
            settings.ca_trust = match (&args.ca_file, &args.ca_hash) {
                (Some(file), _) => {
                    CaTrust::Pem(std::fs::read_to_string(file).context("read --ca-file")?)
                }
                (None, Some(hash)) => CaTrust::Sha256(hash.clone()),
                (None, None) => anyhow::bail!("--ca-file or --ca-hash is required"),
            };
            let fleet = SimFleet::new(settings, args.endpoints, shutdown.clone())?;
            if args.ramp_per_sec == 0 {
                fleet.add(args.nodes);
            } else {
                fleet.add_ramped(args.nodes, args.ramp_per_sec);
            }
            Fleet::Hierarchy(fleet)
        }
    };
    println!("ready");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split_whitespace();
        let index = |w: Option<&str>| w.and_then(|w| w.parse::<usize>().ok());
        match words.next() {
            Some("kill") => {
                if let Some(i) = index(words.next()) {
                    if fleet.kill(i) {
                        println!("killed {i} {}", now_ms());
                    }
                }
            }
            Some("start") => {
                if let Some(i) = index(words.next()) {
                    if fleet.start(i) {
                        println!("started {i} {}", now_ms());
                    }
                }
            }
            Some("load") => {
                let (i, cpu, secs) = (
                    index(words.next()),
                    words.next().and_then(|w| w.parse::<f64>().ok()),
                    words.next().and_then(|w| w.parse::<u64>().ok()),
                );
                if let (Some(i), Some(cpu), Some(secs), Fleet::Hierarchy(f)) =
                    (i, cpu, secs, &fleet)
                {
                    if f.load_index(i, cpu, secs) {
                        println!("loaded {i} {}", now_ms());
                    }
                }
            }
            Some("stats") => {
                let (sent, enrolled, sessions) = fleet.stats();
                println!("stats {sent} {enrolled} {sessions}");
            }
            Some("stop") => break,
            _ => eprintln!("sim-agents: unknown command {line:?}"),
        }
    }
    shutdown.cancel();
    match &fleet {
        Fleet::Hierarchy(f) => f.wait().await,
        Fleet::Flat(f) => {
            f.tasks.close();
            f.tasks.wait().await;
        }
    }
    let (sent, enrolled, sessions) = fleet.stats();
    if let Fleet::Hierarchy(f) = &fleet {
        eprintln!("simulated agents: {}", f.stats().retries_summary());
    }
    println!("stats {sent} {enrolled} {sessions}");
    println!("stopped");
    Ok(())
}
