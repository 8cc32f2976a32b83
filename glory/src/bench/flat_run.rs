//! The flat baseline's run: the lease controller, the agents' process, the scheduled
//! faults that apply, and the report.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glory_keymaster::KeyMaster;
use glory_protocol::now_ms;
use rand::seq::SliceRandom;
use tokio_util::sync::CancellationToken;

use super::flat::FlatController;
use super::measure::{base_report, snapshot, EnrollStart, SteadyWindow};
use super::procstat::sample;
use super::report::{percentiles, ApiLatency, Heartbeats, Report};
use super::{AgentsProcess, Detections, Fault, SimOptions};

/// The flat baseline: every node renews a lease in the key master.
pub(crate) async fn run(o: &SimOptions) -> anyhow::Result<Report> {
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
