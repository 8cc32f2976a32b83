//! The two scenarios: GLORY-CL's hierarchy, and the flat baseline.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use glory_cluster_master::{ClusterMasterConfig, ClusterMasterHandle, KeyMasterConfig};
use glory_group_master::{GroupMaster, GroupMasterConfig};
use glory_keymaster::schema::BootstrapScope;
use glory_keymaster::KeyMaster;
use glory_protocol::now_ms;
use rand::seq::SliceRandom;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::flat::FlatController;
use super::procstat::{machine_cpu, sample, steal_fraction, MachineSample, ProcSample};
use super::relay::Relay;
use super::report::{percentiles, ApiLatency, Heartbeats, PartitionReport, Report};
use super::{cores, sim_index, AgentsProcess, Detections, Fault, SimOptions};
use crate::client::ApiClient;

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cores} cores, {:.0} GiB, Linux {}",
        mem_kib as f64 / (1 << 20) as f64,
        kernel.trim()
    )
}

fn base_report(o: &SimOptions, mode: &str) -> Report {
    Report {
        nodes: o.nodes,
        groups: if mode == "flat" { 0 } else { o.groups },
        mode: mode.to_string(),
        keymaster: if o.etcd.is_some() {
            "etcd".to_string()
        } else {
            "embedded".to_string()
        },
        duration_seconds: o.duration.as_secs_f64(),
        heartbeat_interval_ms: o.heartbeat_ms,
        down_after_ms: o.down_after_ms,
        faults: o.faults_spec.clone(),
        machine: machine(),
        started_at_ms: now_ms(),
        ..Default::default()
    }
}

/// CPU and memory of both processes and the key master's write counter, at one moment.
#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    machine: MachineSample,
    masters: ProcSample,
    agents: ProcSample,
    km_writes: u64,
}

fn snapshot(agents_pid: u32, km_writes: u64) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        machine: machine_cpu(),
        masters: sample(None).unwrap_or_default(),
        agents: sample(Some(agents_pid)).unwrap_or_default(),
        km_writes,
    }
}

/// The machine's and both processes' CPU at the start of a run, for what enrollment
/// cost once every node is up.
struct EnrollStart {
    machine: MachineSample,
    masters: ProcSample,
    agents: ProcSample,
    agents_pid: u32,
}

impl EnrollStart {
    fn now(agents_pid: u32) -> EnrollStart {
        EnrollStart {
            machine: machine_cpu(),
            masters: sample(None).unwrap_or_default(),
            agents: sample(Some(agents_pid)).unwrap_or_default(),
            agents_pid,
        }
    }

    fn finish(&self, report: &mut Report) {
        report.cpu_steal.enrollment = steal_fraction(&self.machine, &machine_cpu());
        let spent = |before: &ProcSample, now: std::io::Result<ProcSample>| {
            now.ok().map(|now| now.cpu_seconds - before.cpu_seconds)
        };
        report.enroll_cpu_seconds.masters = spent(&self.masters, sample(None));
        report.enroll_cpu_seconds.agents = spent(&self.agents, sample(Some(self.agents_pid)));
    }
}

fn fill_steady(report: &mut Report, a: &Snapshot, b: &Snapshot, baseline_rss: u64, nodes: usize) {
    let wall = b.at.duration_since(a.at);
    report.masters_cpu_cores = cores(&a.masters, &b.masters, wall);
    report.cpu_steal.steady = steal_fraction(&a.machine, &b.machine);
    report.agents_cpu_cores = cores(&a.agents, &b.agents, wall);
    report.masters_rss_bytes = Some(b.masters.rss_bytes);
    report.masters_peak_rss_bytes = Some(b.masters.peak_rss_bytes);
    report.agents_rss_bytes = Some(b.agents.rss_bytes);
    report.master_bytes_per_node =
        Some(b.masters.rss_bytes.saturating_sub(baseline_rss) as f64 / nodes as f64);
    report.keymaster_writes_per_sec.steady =
        Some(b.km_writes.saturating_sub(a.km_writes) as f64 / wall.as_secs_f64().max(1e-9));
    report.notes.push(format!(
        "steady state measured over {:.1} s",
        wall.as_secs_f64()
    ));
}

/// The steady-state window: from 3 s after every node is up until the first fault (or
/// 1 s before the end). Its first half measures what keeping the nodes costs, with the
/// API asked only for counts and down nodes; the all-nodes listing is timed from the
/// second half on (10,000 nodes serialised every 2 s is an operator's load, not the
/// cluster's), and that half's master CPU is reported apart.
struct SteadyWindow {
    /// The first fault, or 1 s before the end.
    end_at: Duration,
    baseline_rss: u64,
    nodes: usize,
    start: Option<Snapshot>,
    mid: Option<Snapshot>,
    done: bool,
}

impl SteadyWindow {
    fn new(o: &SimOptions, baseline_rss: u64) -> Self {
        let first_fault = o.faults.first().map(|f| f.at);
        SteadyWindow {
            end_at: first_fault.unwrap_or(o.duration.saturating_sub(Duration::from_secs(1))),
            baseline_rss,
            nodes: o.nodes,
            start: None,
            mid: None,
            done: false,
        }
    }

    /// Take the window's snapshots as time passes. Returns whether the listing may be
    /// timed now.
    fn advance(
        &mut self,
        elapsed: Duration,
        enrolled: Option<f64>,
        take: impl Fn() -> Snapshot,
        report: &mut Report,
    ) -> bool {
        let end_at = self.end_at;
        let Some(enrolled) = enrolled else {
            return false;
        };
        let start_at = Duration::from_secs_f64(enrolled + 3.0);
        let mid_at = start_at + end_at.saturating_sub(start_at) / 2;
        if self.start.is_none() && elapsed >= start_at && start_at + Duration::from_secs(4) < end_at
        {
            self.start = Some(take());
        }
        if let (Some(a), None) = (self.start, self.mid) {
            if elapsed >= mid_at {
                let b = take();
                fill_steady(report, &a, &b, self.baseline_rss, self.nodes);
                self.mid = Some(b);
            }
        }
        if let (Some(b), false) = (self.mid, self.done) {
            if elapsed >= end_at {
                let c = take();
                let wall = c.at.duration_since(b.at);
                report.masters_cpu_cores_listing = cores(&b.masters, &c.masters, wall);
                self.done = true;
            }
        }
        match self.mid {
            Some(_) => true,
            // No window (faults too early): time the listing once everything is up.
            None => self.start.is_none() && elapsed >= start_at.max(end_at),
        }
    }

    fn note_missing(&self, report: &mut Report) {
        if self.mid.is_none() {
            report
                .notes
                .push("no steady-state window (enrollment too late or faults too early)".into());
        }
    }
}

struct GroupSlot {
    id: String,
    relay: Relay,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The masters of a hierarchy run, in this process.
struct Masters {
    km: Arc<dyn KeyMaster>,
    cm_config: ClusterMasterConfig,
    cm: Option<ClusterMasterHandle>,
    cm_stop: CancellationToken,
    groups: Vec<GroupSlot>,
    /// Standby group masters (for the groups a fault will kill), promoted by the
    /// cluster master when their active one stops.
    standbys: Vec<GroupSlot>,
    options: SimOptions,
    shutdown: CancellationToken,
    /// Down transitions counted by cluster master instances that were replaced.
    past_downs: u64,
    past_writes: u64,
    /// Observations for the report's notes.
    notes: Vec<String>,
}

impl Masters {
    fn cm(&self) -> &ClusterMasterHandle {
        self.cm.as_ref().expect("cluster master running")
    }

    fn downs(&self) -> u64 {
        let now = self.cm.as_ref().map(|cm| {
            cm.cluster
                .transition_counts()
                .into_iter()
                .find(|(s, _)| *s == glory_protocol::NodeState::Down)
                .map(|(_, n)| n)
                .unwrap_or(0)
        });
        self.past_downs + now.unwrap_or(0)
    }

    fn km_writes(&self) -> u64 {
        self.past_writes
            + self
                .cm
                .as_ref()
                .map(|cm| cm.cluster.keymaster_writes())
                .unwrap_or(0)
    }

    fn start_group(&self, id: &str, listen: SocketAddr, relay: Relay) -> anyhow::Result<GroupSlot> {
        let config = GroupMasterConfig {
            group: id.to_string(),
            listen,
            cluster_master: relay.local,
            heartbeat_interval_ms: self.options.heartbeat_ms,
            down_after_ms: self.options.down_after_ms,
            ..Default::default()
        };
        let identity = self.cm().cluster.issue_group_master_identity(id)?;
        let gm = GroupMaster::bind(config.validate()?, identity)?;
        let stop = self.shutdown.child_token();
        let token = stop.clone();
        let gid = id.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = gm.serve(token).await {
                tracing::error!(group = %gid, error = %format!("{e:#}"), "group master failed");
            }
        });
        Ok(GroupSlot {
            id: id.to_string(),
            relay,
            stop,
            task,
        })
    }

    async fn start(options: &SimOptions) -> anyhow::Result<(Masters, tempfile::TempDir)> {
        let dir = tempfile::tempdir()?;
        let per_group = options.nodes.div_ceil(options.groups);
        let cm_config = ClusterMasterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().to_path_buf(),
            keymaster: match &options.etcd {
                Some(endpoints) => KeyMasterConfig::Etcd {
                    endpoints: endpoints.clone(),
                },
                None => KeyMasterConfig::Embedded { path: None },
            },
            group_size_limit: per_group.max(1),
            ..Default::default()
        };
        let km =
            glory_cluster_master::open_keymaster(&cm_config, &CancellationToken::new()).await?;
        let shutdown = CancellationToken::new();
        let cm_stop = shutdown.child_token();
        let cm =
            glory_cluster_master::start(cm_config.validate()?, km.clone(), None, cm_stop.clone())
                .await?;
        // Restarts reuse the addresses the first instance got.
        let cm_config = ClusterMasterConfig {
            listen: cm.quic_addr,
            api_listen: cm.api_addr,
            ..cm_config
        };
        let mut masters = Masters {
            km,
            cm_config,
            cm: Some(cm),
            cm_stop,
            groups: Vec::new(),
            standbys: Vec::new(),
            options: options.clone(),
            shutdown,
            past_downs: 0,
            past_writes: 0,
            notes: Vec::new(),
        };
        for g in 0..options.groups {
            let id = format!("g{g:02}");
            let relay = Relay::start(masters.cm().quic_addr, masters.shutdown.clone()).await?;
            let slot = masters.start_group(&id, SocketAddr::from(([127, 0, 0, 1], 0)), relay)?;
            masters.groups.push(slot);
        }
        let doomed: Vec<String> = options
            .faults
            .iter()
            .filter_map(|f| match &f.fault {
                Fault::KillGroupMaster(g) => Some(g.clone()),
                _ => None,
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while masters.cm().cluster.connected_groups() < options.groups {
            anyhow::ensure!(
                Instant::now() < deadline,
                "group masters did not all register within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Standbys register after the actives, so they stand by.
        for id in &doomed {
            let relay = Relay::start(masters.cm().quic_addr, masters.shutdown.clone()).await?;
            let slot = masters.start_group(id, SocketAddr::from(([127, 0, 0, 1], 0)), relay)?;
            masters.standbys.push(slot);
        }
        while doomed
            .iter()
            .any(|g| masters.cm().cluster.group_master_count(g) < 2)
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "group masters did not all register within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((masters, dir))
    }

    /// Stop group master `id` and start a replacement on its address at once.
    /// Stop the active group master of `id`; its standby takes over (the cluster
    /// master promotes it, the agents move to it).
    async fn replace_group(&mut self, id: &str) -> anyhow::Result<()> {
        let idx = self
            .groups
            .iter()
            .position(|g| g.id == id)
            .context("no such group")?;
        let standby = self
            .standbys
            .iter()
            .position(|g| g.id == id)
            .context("no standby for the group")?;
        let old = self.groups.remove(idx);
        let t = Instant::now();
        old.stop.cancel();
        let _ = old.task.await;
        let promoted = self.standbys.remove(standby);
        self.groups.insert(idx, promoted);
        self.notes.push(format!(
            "group master {id} stopped in {:.2} s; its standby (on another address) took over",
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Stop the cluster master and start a replacement on the same key master and
    /// addresses.
    async fn replace_cluster_master(&mut self) -> anyhow::Result<()> {
        let t = Instant::now();
        self.past_downs = self.downs();
        self.past_writes = self.km_writes();
        self.cm_stop.cancel();
        if let Some(cm) = self.cm.take() {
            cm.wait().await;
        }
        self.cm_stop = self.shutdown.child_token();
        // The replacement comes up on new addresses, as a standby on another host would;
        // the group masters' links (through their relays) are pointed at it.
        let config = ClusterMasterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..self.cm_config.clone()
        };
        let cm = glory_cluster_master::start(
            config.validate()?,
            self.km.clone(),
            None,
            self.cm_stop.clone(),
        )
        .await?;
        for group in self.groups.iter().chain(self.standbys.iter()) {
            group.relay.set_target(cm.quic_addr);
        }
        self.cm = Some(cm);
        let note = format!(
            "cluster master replaced by a new one on new addresses, serving after {:.2} s; group masters were pointed at it",
            t.elapsed().as_secs_f64()
        );
        if self.options.progress {
            eprintln!("{note}");
        }
        self.notes.push(note);
        Ok(())
    }

    async fn stop(mut self) {
        let standbys: Vec<GroupSlot> = self.standbys.drain(..).collect();
        self.groups.extend(standbys);
        for g in &self.groups {
            g.stop.cancel();
        }
        for g in self.groups.drain(..) {
            let _ = g.task.await;
        }
        self.shutdown.cancel();
        if let Some(cm) = self.cm.take() {
            cm.wait().await;
        }
    }
}

struct Tracker {
    detections: Detections,
    /// node id -> (restart time ms, up time ms)
    restarted: HashMap<String, (u64, Option<u64>)>,
    killed_indices: Vec<usize>,
    ever_killed: HashSet<usize>,
    /// Nodes whose agent is powered off now.
    dead: HashSet<String>,
}

fn ids(items: &Value) -> Vec<String> {
    items["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn progress(o: &SimOptions, elapsed: Duration, summary: &Value) {
    if !o.progress {
        return;
    }
    let by = &summary["nodes_by_state"];
    let n = |k: &str| by[k].as_u64().unwrap_or(0);
    eprintln!(
        "[{:6.1}s] enrolled {}/{}  up {}  down {}  suspect {}  unreachable {}  groups {}/{}",
        elapsed.as_secs_f64(),
        summary["nodes"].as_u64().unwrap_or(0),
        o.nodes,
        n("up"),
        n("down"),
        n("suspect"),
        n("unreachable"),
        summary["groups_connected"].as_u64().unwrap_or(0),
        o.groups
    );
}

/// Learn which node id each simulated host enrolled as, and its group.
async fn map_hosts(
    api: &ApiClient,
    host_ids: &mut HashMap<usize, String>,
    group_of: &mut HashMap<String, String>,
) -> anyhow::Result<()> {
    /// What the benchmark needs of a node record (the rest is skipped unparsed).
    #[derive(serde::Deserialize)]
    struct Host {
        id: String,
        hostname: String,
        #[serde(default)]
        group: String,
    }
    for n in api.all_nodes_as::<Host>("").await? {
        if let Some(i) = sim_index(&n.hostname) {
            host_ids.insert(i, n.id.clone());
            group_of.insert(n.id, n.group);
        }
    }
    Ok(())
}

/// GLORY-CL's hierarchy under the scheduled faults.
pub(crate) async fn run(o: &SimOptions) -> anyhow::Result<Report> {
    let mut report = base_report(o, "hierarchy");
    let (mut masters, dir) = Masters::start(o).await?;
    let mut api = ApiClient::new(
        &masters.cm().api_addr.to_string(),
        &masters.cm().operator_token,
    )?;
    let baseline = sample(None).unwrap_or_default();
    let (token, _) = masters
        .cm()
        .cluster
        .create_bootstrap_token(None, false, BootstrapScope::Node, "glory sim agents")
        .await?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, masters.cm().cluster.ca_pem())?;
    let mut agents = AgentsProcess::spawn(&[
        "--cluster-master".into(),
        masters.cm().quic_addr.to_string(),
        "--token".into(),
        token,
        "--ca-file".into(),
        ca_file.display().to_string(),
        "--nodes".into(),
        o.nodes.to_string(),
        "--heartbeat-ms".into(),
        o.heartbeat_ms.to_string(),
        "--endpoints".into(),
        o.agent_endpoints.to_string(),
        "--ramp-per-sec".into(),
        o.ramp_per_sec.to_string(),
    ])
    .await?;
    let t0 = Instant::now();
    let at_start = EnrollStart::now(agents.pid);
    if o.ramp_per_sec > 0 {
        report.notes.push(format!(
            "agents powered on at {} per second; enroll_seconds includes that ramp",
            o.ramp_per_sec
        ));
    }
    report.notes.push(format!(
        "masters (key master, cluster master, {} group masters) in pid {}; agents in pid {}",
        o.groups,
        std::process::id(),
        agents.pid
    ));

    let mut tracker = Tracker {
        detections: Detections::default(),
        restarted: HashMap::new(),
        killed_indices: Vec::new(),
        ever_killed: HashSet::new(),
        dead: HashSet::new(),
    };
    let mut host_ids: HashMap<usize, String> = HashMap::new();
    let mut group_of: HashMap<String, String> = HashMap::new();
    let mut pending: Vec<super::Scheduled> = o.faults.clone();
    let mut steady = SteadyWindow::new(o, baseline.rss_bytes);
    let mut fault_start: Option<Snapshot> = None;
    let mut latencies: Vec<f64> = Vec::new();
    let mut last_progress = Instant::now() - Duration::from_secs(10);
    let mut last_latency = Instant::now();
    let mut excused: HashSet<String> = HashSet::new();
    // Group master failover in progress: (group, killed at, members).
    let mut gm_failover: Option<(String, Instant, Vec<String>)> = None;
    let mut gm_wrong: HashSet<String> = HashSet::new();
    let mut cm_failover: Option<Instant> = None;
    let mut partition: Option<(String, Instant, Duration, Vec<String>)> = None;
    let mut partition_report: Option<PartitionReport> = None;
    let mut partition_healed: Option<Instant> = None;
    let mut partition_wrong: HashSet<String> = HashSet::new();
    let mut summary = Value::Null;

    while t0.elapsed() < o.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = t0.elapsed();
        let api_up = masters.cm.is_some();
        if let (true, Ok(s)) = (api_up, api.get("/api/v1/cluster").await) {
            summary = s;
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            progress(o, elapsed, &summary);
            last_progress = Instant::now();
        }
        let up = summary["nodes_by_state"]["up"].as_u64().unwrap_or(0) as usize;
        if report.enroll_seconds.is_none()
            && up == o.nodes
            && summary["nodes"].as_u64() == Some(o.nodes as u64)
        {
            report.enroll_seconds = Some(elapsed.as_secs_f64());
            at_start.finish(&mut report);
            map_hosts(&api, &mut host_ids, &mut group_of).await?;
            if o.progress {
                eprintln!(
                    "all {} nodes up after {:.2} s",
                    o.nodes,
                    elapsed.as_secs_f64()
                );
            }
        }
        let list_now = steady.advance(
            elapsed,
            report.enroll_seconds,
            || snapshot(agents.pid, masters.km_writes()),
            &mut report,
        );
        if list_now && api_up && last_latency.elapsed() >= Duration::from_secs(2) {
            let t = Instant::now();
            if api
                .get_as::<serde::de::IgnoredAny>("/api/v1/nodes?limit=10000")
                .await
                .is_ok()
            {
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            last_latency = Instant::now();
        }
        // Who is down now.
        if api_up {
            if let Ok(down) = api.get("/api/v1/nodes?state=down&limit=10000").await {
                let down = ids(&down);
                let now = now_ms();
                for id in &down {
                    if let Some((g, ..)) = &gm_failover {
                        if group_of.get(id) == Some(g)
                            && !tracker.detections.killed_at.contains_key(id)
                        {
                            gm_wrong.insert(id.clone());
                        }
                    }
                    if let Some((g, ..)) = &partition {
                        if group_of.get(id) == Some(g)
                            && !tracker.detections.killed_at.contains_key(id)
                        {
                            partition_wrong.insert(id.clone());
                        }
                    }
                }
                tracker.detections.observe_down(&down, now, &excused);
                let down: HashSet<&String> = down.iter().collect();
                for (id, (_, up_at)) in tracker.restarted.iter_mut() {
                    if up_at.is_none() && !down.contains(id) {
                        *up_at = Some(now);
                    }
                }
            }
        }
        // Group master failover finished?
        if let Some((g, killed, members)) = &gm_failover {
            if report.gm_failover_seconds.is_none() {
                if let Ok(group) = api.get(&format!("/api/v1/groups/{g}")).await {
                    let live = members
                        .iter()
                        .filter(|m| !tracker.dead.contains(*m))
                        .count();
                    if group["connected"] == true
                        && group["nodes_by_state"]["up"].as_u64() == Some(live as u64)
                    {
                        report.gm_failover_seconds = Some(killed.elapsed().as_secs_f64());
                    }
                }
            }
        }
        // Cluster master back, every group reconnected and every live node up?
        if let Some(killed) = cm_failover {
            let live = o.nodes - tracker.killed_indices.len();
            if summary["groups_connected"].as_u64() == Some(o.groups as u64)
                && summary["nodes_by_state"]["up"].as_u64() == Some(live as u64)
                && summary["uptime_seconds"]
                    .as_u64()
                    .is_some_and(|u| (u as f64) <= killed.elapsed().as_secs_f64() + 1.0)
            {
                report.cm_failover_seconds = Some(killed.elapsed().as_secs_f64());
                cm_failover = None;
            }
        }
        // Partition: when did the group turn unreachable, when did it recover?
        if let Some((g, started, until, members)) = &partition {
            let pr = partition_report.get_or_insert_with(|| PartitionReport {
                group: g.clone(),
                ..Default::default()
            });
            if let Ok(group) = api.get(&format!("/api/v1/groups/{g}")).await {
                let unreachable = group["nodes_by_state"]["unreachable"].as_u64().unwrap_or(0);
                if pr.unreachable_after_seconds.is_none() && unreachable > 0 {
                    pr.unreachable_after_seconds = Some(started.elapsed().as_secs_f64());
                }
                let live = members
                    .iter()
                    .filter(|m| !tracker.dead.contains(*m))
                    .count();
                if let Some(healed) = partition_healed {
                    if pr.recovered_seconds.is_none()
                        && group["connected"] == true
                        && group["nodes_by_state"]["up"].as_u64() == Some(live as u64)
                    {
                        pr.recovered_seconds = Some(healed.elapsed().as_secs_f64());
                    }
                }
            }
            if partition_healed.is_none() && elapsed >= *until {
                if let Some(slot) = masters.groups.iter().find(|s| &s.id == g) {
                    slot.relay.set_blocked(false);
                }
                partition_healed = Some(Instant::now());
            }
        }
        // Faults that are due.
        while pending.first().is_some_and(|f| elapsed >= f.at) {
            let fault = pending.remove(0);
            if fault_start.is_none() {
                fault_start = Some(snapshot(agents.pid, masters.km_writes()));
            }
            if o.progress {
                eprintln!("[{:6.1}s] fault: {:?}", elapsed.as_secs_f64(), fault.fault);
            }
            match fault.fault {
                Fault::KillAgents(n) => {
                    if host_ids.len() < o.nodes {
                        map_hosts(&api, &mut host_ids, &mut group_of).await?;
                    }
                    // Only agents we can name (enrolled) are candidates.
                    let mut candidates: Vec<usize> = host_ids
                        .keys()
                        .copied()
                        .filter(|i| !tracker.ever_killed.contains(i))
                        .collect();
                    candidates.shuffle(&mut rand::rng());
                    for i in candidates.into_iter().take(n) {
                        if let (Some(at), Some(id)) = (agents.kill(i).await?, host_ids.get(&i)) {
                            tracker.detections.killed_at.insert(id.clone(), at);
                            tracker.dead.insert(id.clone());
                            tracker.killed_indices.push(i);
                            tracker.ever_killed.insert(i);
                        }
                    }
                }
                Fault::RestartAgents(n) => {
                    let chosen: Vec<usize> = tracker
                        .killed_indices
                        .drain(..n.min(tracker.killed_indices.len()))
                        .collect();
                    for i in chosen {
                        if let (Some(at), Some(id)) = (agents.start(i).await?, host_ids.get(&i)) {
                            tracker.restarted.insert(id.clone(), (at, None));
                            tracker.dead.remove(id);
                        }
                    }
                }
                Fault::KillGroupMaster(g) => {
                    map_hosts(&api, &mut host_ids, &mut group_of).await?;
                    let members: Vec<String> = group_of
                        .iter()
                        .filter(|(_, grp)| **grp == g)
                        .map(|(id, _)| id.clone())
                        .collect();
                    gm_failover = Some((g.clone(), Instant::now(), members));
                    masters.replace_group(&g).await?;
                }
                Fault::KillClusterMaster => {
                    cm_failover = Some(Instant::now());
                    masters.replace_cluster_master().await?;
                    api = ApiClient::new(
                        &masters.cm().api_addr.to_string(),
                        &masters.cm().operator_token,
                    )?;
                }
                Fault::PartitionGroup { group, until } => {
                    map_hosts(&api, &mut host_ids, &mut group_of).await?;
                    let members: Vec<String> = group_of
                        .iter()
                        .filter(|(_, grp)| **grp == group)
                        .map(|(id, _)| id.clone())
                        .collect();
                    if let Some(slot) = masters.groups.iter().find(|s| s.id == group) {
                        slot.relay.set_blocked(true);
                    }
                    excused.extend(members.iter().cloned());
                    partition = Some((group, Instant::now(), until, members));
                }
            }
        }
    }
    // Nodes seen down in a failed-over or partitioned group are reported there.
    for id in gm_wrong.iter().chain(partition_wrong.iter()) {
        tracker.detections.unexplained.remove(id);
    }
    let end = snapshot(agents.pid, masters.km_writes());
    if let Some(a) = fault_start {
        let wall = end.at.duration_since(a.at).as_secs_f64().max(1e-9);
        report.keymaster_writes_per_sec.faults =
            Some(end.km_writes.saturating_sub(a.km_writes) as f64 / wall);
    }
    steady.note_missing(&mut report);
    let (detected, missed) = tracker.detections.detection();
    let killed_any = !tracker.detections.killed_at.is_empty();
    report.detection_seconds = percentiles(&detected);
    report.missed_detections = killed_any.then_some(missed);
    let restart_secs: Vec<f64> = tracker
        .restarted
        .values()
        .filter_map(|(at, up)| up.map(|u| u.saturating_sub(*at) as f64 / 1000.0))
        .collect();
    report.restart_up_seconds = percentiles(&restart_secs);
    if gm_failover.is_some() {
        report.gm_failover_wrong_downs = Some(gm_wrong.len() as u64);
        report.notes.push(
            "group master failover here: the active group master is stopped (its connections close) and its standby, started with the run, is promoted; failover after kill -9 is measured by tests/ha.rs"
                .into(),
        );
    }
    if o.faults
        .iter()
        .any(|f| matches!(f.fault, Fault::KillClusterMaster))
    {
        report.notes.push(
            "cluster master failover here: the cluster master is stopped and a new one starts on the same key master at new addresses; failover to a standby after kill -9 is measured by tests/ha.rs"
                .into(),
        );
    }
    if let Some(mut pr) = partition_report {
        pr.wrong_downs = partition_wrong.len() as u64;
        report.partition = Some(pr);
    }
    report.api_list_nodes_ms = ApiLatency {
        count: latencies.len(),
        p50: percentiles(&latencies).map(|p| p.p50),
        p99: percentiles(&latencies).map(|p| p.p99),
    };

    let (sent, _, _) = agents.stop().await?;
    let final_summary = api.get("/api/v1/cluster").await.unwrap_or(summary);
    report.heartbeats = Heartbeats {
        sent: Some(sent),
        received: final_summary["heartbeats"]["received"].as_u64(),
        lost: final_summary["heartbeats"]["lost"].as_u64(),
    };
    // Nothing acknowledged may be lost: every node that enrolled is still recorded, in
    // memory and in the key master.
    let recorded = masters
        .km
        .get_prefix(glory_keymaster::schema::NODES_PREFIX)
        .await
        .map(|(kvs, _)| kvs.len() as u64);
    report.nodes_at_end = final_summary["nodes"].as_u64();
    report.nodes_recorded_at_end = recorded.ok();
    let downs = masters.downs();
    let explained = detected.len() as u64 + gm_wrong.len() as u64 + partition_wrong.len() as u64;
    report.false_downs = Some(
        downs
            .saturating_sub(explained)
            .max(tracker.detections.unexplained.len() as u64),
    );
    if report.heartbeats.received.is_some()
        && o.faults.iter().any(|f| {
            matches!(
                f.fault,
                Fault::KillClusterMaster | Fault::KillGroupMaster(_)
            )
        })
    {
        report.notes.push(
            "heartbeats received/lost count since the last (re)start of each group master".into(),
        );
    }
    report.notes.append(&mut masters.notes);
    masters.stop().await;
    Ok(report)
}

/// The flat baseline: every node renews a lease in the key master.
pub(crate) async fn run_flat(o: &SimOptions) -> anyhow::Result<Report> {
    const RENEW: Duration = Duration::from_secs(10);
    const GRACE: Duration = Duration::from_secs(40);
    let mut report = base_report(o, "flat");
    report.notes.push(format!(
        "flat baseline: each node renews its lease through an HTTP API server into the key master every {} s; \
         a controller marks it down after {} s without renewal (Kubernetes' defaults)",
        RENEW.as_secs(),
        GRACE.as_secs()
    ));
    let dir = tempfile::tempdir()?;
    let km: Arc<dyn KeyMaster> =
        glory_keymaster::EmbeddedKeyMaster::open(&dir.path().join("keymaster.db"))?;
    let shutdown = CancellationToken::new();
    let controller = FlatController::new(km, GRACE);
    let addr = controller
        .clone()
        .serve(SocketAddr::from(([127, 0, 0, 1], 0)), shutdown.clone())
        .await?;
    let baseline = sample(None).unwrap_or_default();
    let mut agents = AgentsProcess::spawn(&[
        "--nodes".into(),
        o.nodes.to_string(),
        "--flat-api".into(),
        format!("http://{addr}"),
        "--flat-renew-secs".into(),
        RENEW.as_secs().to_string(),
    ])
    .await?;
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let at_start = EnrollStart::now(agents.pid);
    let mut detections = Detections::default();
    let mut pending = o.faults.clone();
    let mut fault_start = None;
    let mut steady = SteadyWindow::new(o, baseline.rss_bytes);
    let mut killed: Vec<usize> = Vec::new();
    let mut ever_killed: HashSet<usize> = HashSet::new();
    let mut restarted: HashMap<String, (u64, Option<u64>)> = HashMap::new();
    let mut latencies = Vec::new();
    let (mut last_progress, mut last_latency) =
        (Instant::now() - Duration::from_secs(10), Instant::now());
    let writes = || controller.writes.load(Ordering::Relaxed);
    while t0.elapsed() < o.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = t0.elapsed();
        let (up, total) = controller.counts();
        if o.progress && last_progress.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "[{:6.1}s] registered {total}/{}  up {up}  down {}",
                elapsed.as_secs_f64(),
                o.nodes,
                total - up
            );
            last_progress = Instant::now();
        }
        if report.enroll_seconds.is_none() && up == o.nodes {
            report.enroll_seconds = Some(elapsed.as_secs_f64());
            at_start.finish(&mut report);
        }
        let list_now = steady.advance(
            elapsed,
            report.enroll_seconds,
            || snapshot(agents.pid, writes()),
            &mut report,
        );
        if list_now && last_latency.elapsed() >= Duration::from_secs(2) {
            let t = Instant::now();
            // The whole body is read, as the hierarchy's listing reads it.
            let listed = match http.get(format!("http://{addr}/flat/nodes")).send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            if listed {
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            last_latency = Instant::now();
        }
        let down = controller.down_nodes();
        let now = now_ms();
        detections.observe_down(&down, now, &HashSet::new());
        let down: HashSet<&String> = down.iter().collect();
        for (id, (_, up_at)) in restarted.iter_mut() {
            if up_at.is_none() && !down.contains(id) {
                *up_at = Some(now);
            }
        }
        while pending.first().is_some_and(|f| elapsed >= f.at) {
            let fault = pending.remove(0);
            fault_start.get_or_insert_with(|| snapshot(agents.pid, writes()));
            if o.progress {
                eprintln!("[{:6.1}s] fault: {:?}", elapsed.as_secs_f64(), fault.fault);
            }
            match fault.fault {
                Fault::KillAgents(n) => {
                    let mut candidates: Vec<usize> =
                        (0..o.nodes).filter(|i| !ever_killed.contains(i)).collect();
                    candidates.shuffle(&mut rand::rng());
                    for i in candidates.into_iter().take(n) {
                        if let Some(at) = agents.kill(i).await? {
                            detections.killed_at.insert(format!("sim-{i:05}"), at);
                            killed.push(i);
                            ever_killed.insert(i);
                        }
                    }
                }
                Fault::RestartAgents(n) => {
                    for i in killed.drain(..n.min(killed.len())).collect::<Vec<_>>() {
                        if let Some(at) = agents.start(i).await? {
                            restarted.insert(format!("sim-{i:05}"), (at, None));
                        }
                    }
                }
                other => report.notes.push(format!(
                    "fault {other:?} does not apply to the flat baseline (no masters to kill)"
                )),
            }
        }
    }
    let end = snapshot(agents.pid, writes());
    if let Some(a) = fault_start {
        let wall = end.at.duration_since(a.at).as_secs_f64().max(1e-9);
        report.keymaster_writes_per_sec.faults =
            Some(end.km_writes.saturating_sub(a.km_writes) as f64 / wall);
    }
    steady.note_missing(&mut report);
    let (detected, missed) = detections.detection();
    report.detection_seconds = percentiles(&detected);
    report.missed_detections = (!detections.killed_at.is_empty()).then_some(missed);
    let restart_secs: Vec<f64> = restarted
        .values()
        .filter_map(|(at, up)| up.map(|u| u.saturating_sub(*at) as f64 / 1000.0))
        .collect();
    report.restart_up_seconds = percentiles(&restart_secs);
    report.api_list_nodes_ms = ApiLatency {
        count: latencies.len(),
        p50: percentiles(&latencies).map(|p| p.p50),
        p99: percentiles(&latencies).map(|p| p.p99),
    };
    let (sent, _, _) = agents.stop().await?;
    let received = controller.renewals.load(Ordering::Relaxed);
    report.heartbeats = Heartbeats {
        sent: Some(sent),
        received: Some(received),
        lost: Some(sent.saturating_sub(received)),
    };
    let downs = controller.down_transitions.load(Ordering::Relaxed);
    report.false_downs = Some(
        downs
            .saturating_sub(detected.len() as u64)
            .max(detections.unexplained.len() as u64),
    );
    shutdown.cancel();
    Ok(report)
}
