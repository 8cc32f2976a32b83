//! `glory sim`: the scale and fault benchmark. The real cluster and group master code
//! run in this process; the simulated agents (the real agent code over simulated hosts)
//! run in a child process (`glory sim-agents`) so the two are measured apart. Faults are
//! scheduled; figures are measured at the cluster master's API and from /proc.

pub mod agents;
pub mod api_load;
pub mod boot_storm;
mod cm_process;
pub mod dhcp;
pub mod faults;
mod flat;
mod flat_run;
mod hier;
pub mod lab;
mod masters;
mod measure;
pub mod procstat;
mod relay;
pub mod report;
pub mod services;
pub mod sharing;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub use faults::{parse_duration, parse_faults, Fault, Scheduled};
pub use report::Report;

/// How the nodes are watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// GLORY-CL: agents heartbeat group masters; only changes reach the key master.
    Hierarchy,
    /// The Kubernetes way: every node renews a lease in the key master every 10 s; a
    /// controller marks it down after 40 s without renewal.
    Flat,
}

/// Options of one run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub nodes: usize,
    pub groups: usize,
    pub duration: Duration,
    pub mode: Mode,
    pub faults: Vec<Scheduled>,
    pub faults_spec: String,
    pub report: Option<PathBuf>,
    pub heartbeat_ms: u64,
    /// Agents' metrics interval (0: monitoring off).
    pub metrics_ms: u64,
    pub down_after_ms: u64,
    /// Client endpoints the agents' process spreads its agents over.
    pub agent_endpoints: usize,
    /// Print progress lines.
    pub progress: bool,
    /// etcd endpoints for the key master; `None`: the embedded store.
    pub etcd: Option<Vec<String>>,
    /// Simulated servers are powered on at most this many a second (0: all at once).
    pub ramp_per_sec: usize,
    /// `cert_lifetime` of the cluster master (`None`: its default).
    pub cert_lifetime: Option<String>,
    /// Requests a second `wrk` sends the API once every node is up (0: none).
    pub api_load: usize,
    /// Standby cluster masters (etcd only): each master then runs on a runtime of its
    /// own, and `kill-cluster-master` kills the leader.
    pub standby_cluster_masters: usize,
}

impl SimOptions {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.nodes == 0 || self.groups == 0 {
            bail!("--nodes and --groups must be positive");
        }
        if self.mode == Mode::Hierarchy && self.nodes.div_ceil(self.groups) > 250 * 4 {
            bail!(
                "{} nodes in {} groups is over 1000 per group: use more --groups",
                self.nodes,
                self.groups
            );
        }
        if self.standby_cluster_masters > 0 && (self.etcd.is_none() || self.mode != Mode::Hierarchy)
        {
            bail!(
                "--standby-cluster-masters needs the hierarchy on an etcd key master (--keymaster http://...): the embedded store lives in one cluster master's process"
            );
        }
        if self.standby_cluster_masters > 0
            && self
                .faults
                .iter()
                .any(|f| matches!(f.fault, Fault::PartitionGroup { .. }))
        {
            bail!(
                "partition-group cuts a group master's relay to the cluster master; with --standby-cluster-masters group masters dial the cluster masters directly"
            );
        }
        for f in &self.faults {
            if f.at >= self.duration {
                bail!(
                    "fault {:?} at {:?} is after the end of the run ({:?})",
                    f.fault,
                    f.at,
                    self.duration
                );
            }
            match &f.fault {
                Fault::KillGroupMaster(g) | Fault::PartitionGroup { group: g, .. } => {
                    let known = (0..self.groups).any(|i| &format!("g{i:02}") == g);
                    if !known {
                        bail!(
                            "fault names group {g}, but groups are g00..g{:02}",
                            self.groups - 1
                        );
                    }
                }
                Fault::KillAgents(n) | Fault::RestartAgents(n) | Fault::SpikeLoad(n)
                    if *n > self.nodes =>
                {
                    bail!("fault {:?} names more agents than --nodes", f.fault)
                }
                Fault::SpikeLoad(_) if self.mode != Mode::Hierarchy || self.metrics_ms == 0 => {
                    bail!("spike-load needs the hierarchy with monitoring on (--metrics-ms > 0)")
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The agents' child process and what it tells us.
pub(crate) struct AgentsProcess {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    events: mpsc::UnboundedReceiver<String>,
    pub pid: u32,
}

impl AgentsProcess {
    pub(crate) async fn spawn(args: &[String]) -> anyhow::Result<AgentsProcess> {
        let exe = std::env::current_exe().context("find the glory binary")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("sim-agents")
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("GLORY_SIM_AGENT_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn the agents' process")?;
        let pid = child.id().context("agents' process has no pid")?;
        let stdin = child.stdin.take().context("agents' stdin")?;
        let stdout = child.stdout.take().context("agents' stdout")?;
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = AgentsProcess {
            child,
            stdin,
            events,
            pid,
        };
        process.expect("ready", Duration::from_secs(30)).await?;
        Ok(process)
    }

    pub(crate) async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .context("write to the agents' process")?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Wait for a line starting with `prefix`; other lines are returned to the caller
    /// through `seen` handling in [`AgentsProcess::drain`].
    pub(crate) async fn expect(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(line)) if line.starts_with(prefix) => return Ok(line),
                Ok(Some(_)) => continue,
                Ok(None) => bail!("the agents' process ended while we waited for {prefix:?}"),
                Err(_) => bail!("the agents' process did not say {prefix:?} within {timeout:?}"),
            }
        }
    }

    /// Kill agent `index`; returns the agents' wall clock of the kill (ms).
    pub(crate) async fn kill(&mut self, index: usize) -> anyhow::Result<Option<u64>> {
        self.send(&format!("kill {index}")).await?;
        self.ack("killed", index).await
    }

    /// Hold agent `index`'s CPU at `cpu` % for `seconds`; returns the agents' wall
    /// clock (ms) when it took effect.
    pub(crate) async fn load(
        &mut self,
        index: usize,
        cpu: f64,
        seconds: u64,
    ) -> anyhow::Result<Option<u64>> {
        self.send(&format!("load {index} {cpu} {seconds}")).await?;
        self.ack("loaded", index).await
    }

    pub(crate) async fn start(&mut self, index: usize) -> anyhow::Result<Option<u64>> {
        self.send(&format!("start {index}")).await?;
        self.ack("started", index).await
    }

    async fn ack(&mut self, word: &str, index: usize) -> anyhow::Result<Option<u64>> {
        // Commands on a stopped (or running) agent are ignored silently; a `stats`
        // round trip tells us the command was processed.
        self.send("stats").await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut at = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(line)) => line,
                _ => bail!("the agents' process did not answer"),
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() == Some(&word)
                && words.get(1).and_then(|w| w.parse::<usize>().ok()) == Some(index)
            {
                at = words.get(2).and_then(|w| w.parse().ok());
            } else if words.first() == Some(&"stats") {
                return Ok(at);
            }
        }
    }

    /// Stop every agent cleanly; returns the final stats.
    pub(crate) async fn stop(mut self) -> anyhow::Result<(u64, u64, u64)> {
        self.send("stop").await?;
        let mut last = (0, 0, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(line)) if line.starts_with("stats") => {
                    let n: Vec<u64> = line
                        .split_whitespace()
                        .skip(1)
                        .filter_map(|w| w.parse().ok())
                        .collect();
                    last = (
                        n.first().copied().unwrap_or(0),
                        n.get(1).copied().unwrap_or(0),
                        n.get(2).copied().unwrap_or(0),
                    );
                }
                Ok(Some(line)) if line == "stopped" => break,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        Ok(last)
    }
}

/// CPU cores used by a process between two samples.
pub(crate) fn cores(
    a: &procstat::ProcSample,
    b: &procstat::ProcSample,
    wall: Duration,
) -> Option<f64> {
    (wall.as_secs_f64() > 0.0).then(|| (b.cpu_seconds - a.cpu_seconds) / wall.as_secs_f64())
}

/// Index of the simulated host named `sim-NNNNN`.
pub(crate) fn sim_index(hostname: &str) -> Option<usize> {
    hostname.strip_prefix("sim-").and_then(|n| n.parse().ok())
}

/// Tracks kills and when each killed node was first seen down.
#[derive(Default)]
pub(crate) struct Detections {
    /// node id -> kill time (agents' wall clock, ms)
    pub killed_at: HashMap<String, u64>,
    /// node id -> first time seen down at the API (ms)
    pub seen_down: HashMap<String, u64>,
    /// Nodes seen down that were never killed.
    pub unexplained: HashSet<String>,
}

impl Detections {
    pub fn observe_down(&mut self, nodes: &[String], now_ms: u64, excused: &HashSet<String>) {
        for node in nodes {
            if self.killed_at.contains_key(node) {
                self.seen_down.entry(node.clone()).or_insert(now_ms);
            } else if !excused.contains(node) {
                self.unexplained.insert(node.clone());
            }
        }
    }

    /// Seconds from each kill to down, and how many kills were never seen down.
    pub fn detection(&self) -> (Vec<f64>, u64) {
        let mut out = Vec::new();
        let mut missed = 0;
        for (node, killed) in &self.killed_at {
            match self.seen_down.get(node) {
                Some(down) => out.push(down.saturating_sub(*killed) as f64 / 1000.0),
                None => missed += 1,
            }
        }
        (out, missed)
    }
}

/// Run a benchmark and return its report (also written to `--report`).
pub async fn run(options: SimOptions) -> anyhow::Result<Report> {
    options.validate()?;
    let report = match options.mode {
        Mode::Hierarchy => hier::run(&options).await?,
        Mode::Flat => flat_run::run(&options).await?,
    };
    if let Some(path) = &options.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detections_separate_kills_from_false_downs() {
        let mut d = Detections::default();
        d.killed_at.insert("a".into(), 1000);
        d.killed_at.insert("b".into(), 1000);
        let excused: HashSet<String> = ["x".to_string()].into();
        d.observe_down(&["a".into(), "x".into(), "z".into()], 4200, &excused);
        d.observe_down(&["a".into()], 9000, &excused);
        let (secs, missed) = d.detection();
        assert_eq!(secs, vec![3.2]);
        assert_eq!(missed, 1);
        assert_eq!(d.unexplained, ["z".to_string()].into());
    }

    #[test]
    fn sim_hostnames_map_to_indices() {
        assert_eq!(sim_index("sim-00042"), Some(42));
        assert_eq!(sim_index("web-1"), None);
    }
}
