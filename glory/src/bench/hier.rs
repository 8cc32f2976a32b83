//! GLORY-CL's hierarchy scenario: masters in this process, agents in a child process,
//! the scheduled faults applied as the run goes, and the report.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use glory_keymaster::schema::BootstrapScope;
use glory_protocol::now_ms;
use rand::seq::SliceRandom;
use serde_json::Value;

use super::masters::Masters;
use super::measure::{base_report, snapshot, EnrollStart, Snapshot, SteadyWindow};
use super::procstat::sample;
use super::report::{percentiles, ApiLatency, Heartbeats, PartitionReport, Report};
use super::{sim_index, AgentsProcess, Detections, Fault, SimOptions};
use crate::client::ApiClient;

/// The monitor `spike-load` faults are caught by.
const SPIKE_MONITOR: &str = "sim-spike";

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
    let mut cm_args = vec![
        "--cluster-master".into(),
        masters.cm().quic_addr.to_string(),
    ];
    if masters.cm_quic.len() > 1 {
        let standbys: Vec<String> = masters.cm_quic[1..].iter().map(|a| a.to_string()).collect();
        cm_args.extend(["--cluster-masters".into(), standbys.join(",")]);
    }
    let mut agents = AgentsProcess::spawn(
        &[
            cm_args,
            vec![
                "--token".into(),
                token,
                "--ca-file".into(),
                ca_file.display().to_string(),
                "--nodes".into(),
                o.nodes.to_string(),
                "--heartbeat-ms".into(),
                o.heartbeat_ms.to_string(),
                "--metrics-ms".into(),
                o.metrics_ms.to_string(),
                "--endpoints".into(),
                o.agent_endpoints.to_string(),
                "--ramp-per-sec".into(),
                o.ramp_per_sec.to_string(),
            ],
        ]
        .concat(),
    )
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
    // Samples stored when every node was up: the run's sample rate is counted from there.
    // When all nodes were up: samples stored and bytes the statistics stores held.
    let mut samples_at_up: Option<(Instant, u64, u64)> = None;
    let mut fault_start: Option<Snapshot> = None;
    let mut latencies: Vec<f64> = Vec::new();
    let mut last_progress = Instant::now() - Duration::from_secs(10);
    let mut last_latency = Instant::now();
    let mut excused: HashSet<String> = HashSet::new();
    // Group master failover in progress: (group, killed at, members).
    let mut gm_failover: Option<(String, Instant, Vec<String>)> = None;
    let mut gm_wrong: HashSet<String> = HashSet::new();
    let mut cm_failover: Option<Instant> = None;
    // After a kill -9 of the leading cluster master: the standbys' APIs, probed until
    // one serves.
    let mut standby_apis: Vec<ApiClient> = Vec::new();
    let mut partition: Option<(String, Instant, Duration, Vec<String>)> = None;
    let mut partition_report: Option<PartitionReport> = None;
    let mut partition_healed: Option<Instant> = None;
    let mut partition_wrong: HashSet<String> = HashSet::new();
    let mut summary = Value::Null;
    // Node certificates renewed by the end of each second of the run.
    let mut renewed_by_second: Vec<u64> = Vec::new();
    let mut api_load: Option<super::api_load::ApiLoad> = None;
    // spike-load: node -> when its load began (agents' clock, ms), and the latency of
    // its alert once the API shows it.
    let mut spiked: HashMap<String, u64> = HashMap::new();
    let mut alerted: HashMap<String, f64> = HashMap::new();
    let mut last_alert_poll = Instant::now();
    if o.faults
        .iter()
        .any(|f| matches!(f.fault, Fault::SpikeLoad(_)))
    {
        api.call(
            reqwest::Method::POST,
            "/api/v1/monitors",
            Some(serde_json::json!({
                "name": SPIKE_MONITOR, "scope": {"all": true}, "item": "cpu.percent",
                "rules": [{"level": "critical", "op": ">", "threshold": 90, "for_seconds": 0}]
            })),
        )
        .await
        .map_err(|e| e.context("create the spike-load monitor"))?;
    }

    while t0.elapsed() < o.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = t0.elapsed();
        if let (Some(killed), false) = (cm_failover, standby_apis.is_empty()) {
            for probe in &standby_apis {
                if probe.get("/api/v1/cluster").await.is_ok() {
                    report.cm_takeover_api_seconds = Some(killed.elapsed().as_secs_f64());
                    standby_apis.clear();
                    break;
                }
            }
        }
        if masters.cm.is_none() && masters.took_over().await? {
            api = ApiClient::new(
                &masters.cm().api_addr.to_string(),
                &masters.cm().operator_token,
            )?;
        }
        let api_up = masters.cm.is_some();
        if let Some(cm) = &masters.cm {
            let second = elapsed.as_secs() as usize;
            let count = cm.cluster.certificates_renewed();
            let last = renewed_by_second.last().copied().unwrap_or(0);
            renewed_by_second.resize(second + 1, last);
            renewed_by_second[second] = count.max(last);
        }
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
            samples_at_up = masters.cm.as_ref().map(|cm| {
                (
                    Instant::now(),
                    cm.cluster.monitoring_samples().0,
                    cm.cluster.stats_store_bytes(),
                )
            });
            at_start.finish(&mut report);
            map_hosts(&api, &mut host_ids, &mut group_of).await?;
            if o.api_load > 0 {
                let ids: Vec<String> = host_ids.values().cloned().collect();
                api_load = Some(super::api_load::ApiLoad::start(
                    api.base(),
                    &masters.cm().operator_token,
                    o.api_load,
                    o.duration.saturating_sub(t0.elapsed()).as_secs(),
                    &ids,
                    dir.path(),
                )?);
            }
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
                    slot.set_blocked(false);
                }
                partition_healed = Some(Instant::now());
            }
        }
        if spiked.len() > alerted.len() && last_alert_poll.elapsed() >= Duration::from_millis(200) {
            last_alert_poll = Instant::now();
            if let Ok(firing) = api
                .get("/api/v1/alerts?state=firing&level=critical&limit=1000")
                .await
            {
                let now = glory_protocol::now_ms();
                for a in firing["items"].as_array().into_iter().flatten() {
                    let Some(node) = a["node"].as_str() else {
                        continue;
                    };
                    if a["monitor"] != SPIKE_MONITOR || alerted.contains_key(node) {
                        continue;
                    }
                    if let Some(at) = spiked.get(node) {
                        alerted.insert(node.to_string(), now.saturating_sub(*at) as f64 / 1000.0);
                    }
                }
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
                Fault::SpikeLoad(n) => {
                    if host_ids.len() < o.nodes {
                        map_hosts(&api, &mut host_ids, &mut group_of).await?;
                    }
                    let mut candidates: Vec<usize> = host_ids
                        .iter()
                        .filter(|(_, id)| !tracker.dead.contains(*id) && !spiked.contains_key(*id))
                        .map(|(i, _)| *i)
                        .collect();
                    candidates.shuffle(&mut rand::rng());
                    for i in candidates.into_iter().take(n) {
                        if let (Some(at), Some(id)) =
                            (agents.load(i, 95.0, 30).await?, host_ids.get(&i))
                        {
                            spiked.insert(id.clone(), at);
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
                Fault::KillClusterMaster if masters.has_standby_cluster_masters() => {
                    let token = masters.cm().operator_token.clone();
                    masters.kill_cluster_master()?;
                    cm_failover = Some(Instant::now());
                    standby_apis = masters
                        .standby_apis()
                        .iter()
                        .map(|a| {
                            ApiClient::new(&a.to_string(), &token)?
                                .with_timeout(Duration::from_secs(1))
                        })
                        .collect::<anyhow::Result<_>>()?;
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
                        slot.set_blocked(true);
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
    if o.metrics_ms > 0 {
        let (ingested, dropped) = masters
            .cm
            .as_ref()
            .map(|cm| cm.cluster.monitoring_samples())
            .unwrap_or_default();
        let store_bytes_now = masters
            .cm
            .as_ref()
            .map(|cm| cm.cluster.stats_store_bytes())
            .unwrap_or_default();
        report.monitoring = Some(super::report::MonitoringReport {
            metrics_interval_ms: o.metrics_ms,
            samples_per_sec: samples_at_up.map(|(at, before, _)| {
                ingested.saturating_sub(before) as f64 / at.elapsed().as_secs_f64().max(1e-9)
            }),
            store_bytes: store_bytes_now,
            // What the stores grew by from all-up to the end, per node, for a day.
            store_bytes_per_node_day: samples_at_up.map(|(at, _, before)| {
                store_bytes_now.saturating_sub(before) as f64
                    / o.nodes.max(1) as f64
                    / at.elapsed().as_secs_f64().max(1e-9)
                    * 86_400.0
            }),
            batches_dropped: dropped,
            spiked_nodes: spiked.len(),
            alerted_nodes: alerted.len(),
            alert_latency_seconds: percentiles(&alerted.values().copied().collect::<Vec<_>>()),
        });
    }
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
        && o.standby_cluster_masters > 0
    {
        report.notes.push(format!(
            "cluster master failover here: {} standby cluster master(s) on the same etcd, each on a runtime of its own; the leader is killed (kill -9 semantics) and a standby takes over through the leadership lease; cm_takeover_api_seconds is until a standby's API answers, cm_failover_seconds until every group is connected and every live node up",
            o.standby_cluster_masters
        ));
    } else if o
        .faults
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
    if let Some(load) = api_load {
        report.api_load = Some(load.finish().await?);
    }
    if let Some(lifetime) = &o.cert_lifetime {
        let per_second: Vec<u64> = renewed_by_second
            .iter()
            .scan(0u64, |before, &total| {
                let n = total.saturating_sub(*before);
                *before = total;
                Some(n)
            })
            .collect();
        report.cert_renewals = Some(super::report::RenewalReport {
            lifetime: lifetime.clone(),
            renewed: renewed_by_second.last().copied().unwrap_or(0),
            busiest_second: per_second.iter().copied().max().unwrap_or(0),
            seconds_with_renewals: per_second.iter().filter(|n| **n > 0).count() as u64,
        });
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
