//! The benchmark report: JSON for scripts (`--report`), a table for people.

use serde::Serialize;

/// `{count, p50, p99, max}` of a sample, in the unit of the field's name.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentiles; `None` for an empty sample.
pub fn percentiles(samples: &[f64]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank =
        |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    Some(Percentiles {
        count: sorted.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        max: sorted[sorted.len() - 1],
    })
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Heartbeats {
    pub sent: Option<u64>,
    pub received: Option<u64>,
    /// Sequence gaps seen by the group masters (datagrams that never arrived).
    pub lost: Option<u64>,
}

/// Fractions of the machine's CPU time stolen, by phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Steal {
    pub enrollment: Option<f64>,
    pub steady: Option<f64>,
}

/// CPU seconds each process spent from the start of a run until every node was up:
/// what enrollment costs, less noisy than its wall time on a shared machine.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EnrollCpu {
    pub masters: Option<f64>,
    pub agents: Option<f64>,
}

/// What monitoring did in a run (agents sending metrics).
#[derive(Clone, Debug, Default, Serialize)]
pub struct MonitoringReport {
    pub metrics_interval_ms: u64,
    /// Samples the group masters stored per second, from all nodes up to the end.
    pub samples_per_sec: Option<f64>,
    /// Sample batches the group masters dropped because they fell behind.
    pub batches_dropped: u64,
    /// Bytes the group masters' statistics stores held at the end.
    pub store_bytes: u64,
    /// How fast the stores grew from all nodes up to the end, per node and day (the
    /// group masters report their size every 5 s, so a minute's run is within ~10 %).
    pub store_bytes_per_node_day: Option<f64>,
    /// `spike-load`: nodes loaded, nodes whose critical alert the API showed, and how
    /// long after the load each one showed (polled every 200 ms).
    pub spiked_nodes: usize,
    pub alerted_nodes: usize,
    pub alert_latency_seconds: Option<Percentiles>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct WritesPerSec {
    pub steady: Option<f64>,
    pub faults: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ApiLatency {
    pub count: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RenewalReport {
    pub lifetime: String,
    /// Node certificates the cluster master renewed during the run.
    pub renewed: u64,
    /// Most renewals in one second, and in how many seconds any happened.
    pub busiest_second: u64,
    pub seconds_with_renewals: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PartitionReport {
    pub group: String,
    /// From the partition until the group's nodes showed `unreachable`.
    pub unreachable_after_seconds: Option<f64>,
    /// From the heal until every node of the group was `up` again.
    pub recovered_seconds: Option<f64>,
    pub wrong_downs: u64,
}

/// Every figure of one `glory sim` run. A figure the run did not exercise is `null`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub groups: usize,
    pub mode: String,
    pub keymaster: String,
    pub duration_seconds: f64,
    pub heartbeat_interval_ms: u64,
    pub down_after_ms: u64,
    pub faults: String,
    pub machine: String,
    pub started_at_ms: u64,
    pub enroll_seconds: Option<f64>,
    pub enroll_cpu_seconds: EnrollCpu,
    pub detection_seconds: Option<Percentiles>,
    pub missed_detections: Option<u64>,
    pub false_downs: Option<u64>,
    pub restart_up_seconds: Option<Percentiles>,
    pub gm_failover_seconds: Option<f64>,
    pub gm_failover_wrong_downs: Option<u64>,
    pub cm_failover_seconds: Option<f64>,
    /// With standby cluster masters: from the leader's kill until a standby's API
    /// answers as the leader.
    pub cm_takeover_api_seconds: Option<f64>,
    pub partition: Option<PartitionReport>,
    /// With `--cert-lifetime`: node certificates renewed during the run.
    pub cert_renewals: Option<RenewalReport>,
    /// With `--api-load`: what `wrk` measured against the API.
    pub api_load: Option<super::api_load::ApiLoadReport>,
    pub heartbeats: Heartbeats,
    /// Share of the machine's CPU the hypervisor gave to other guests (a VM's steal
    /// time): figures from a run with much of it are not comparable with others.
    pub cpu_steal: Steal,
    pub masters_cpu_cores: Option<f64>,
    /// Masters' CPU over the second half of the steady window, while the sim also
    /// times a listing of every node every 2 s.
    pub masters_cpu_cores_listing: Option<f64>,
    pub agents_cpu_cores: Option<f64>,
    pub masters_rss_bytes: Option<u64>,
    pub masters_peak_rss_bytes: Option<u64>,
    pub agents_rss_bytes: Option<u64>,
    pub master_bytes_per_node: Option<f64>,
    pub keymaster_writes_per_sec: WritesPerSec,
    pub monitoring: Option<MonitoringReport>,
    pub api_list_nodes_ms: ApiLatency,
    /// Nodes the cluster master lists at the end (nothing acknowledged may be lost).
    pub nodes_at_end: Option<u64>,
    /// Node records in the key master at the end.
    pub nodes_recorded_at_end: Option<u64>,
    /// How each figure was measured, and what limited it.
    pub notes: Vec<String>,
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "null".into())
}

fn f2(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}"))
        .unwrap_or_else(|| "null".into())
}

fn share(v: Option<f64>) -> String {
    v.map(|v| format!("{:.0}%", v * 100.0))
        .unwrap_or_else(|| "null".into())
}

fn mib(v: Option<u64>) -> String {
    v.map(|v| format!("{:.1} MiB", v as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "null".into())
}

fn pct(p: &Option<Percentiles>) -> String {
    p.as_ref()
        .map(|p| {
            format!(
                "n={} p50={:.2} p99={:.2} max={:.2}",
                p.count, p.p50, p.p99, p.max
            )
        })
        .unwrap_or_else(|| "null".into())
}

impl Report {
    /// The human summary printed at the end of a run.
    pub fn table(&self) -> String {
        let rows: Vec<Vec<String>> = vec![
            vec![
                "mode".into(),
                format!("{} ({} key master)", self.mode, self.keymaster),
            ],
            vec![
                "nodes / groups".into(),
                format!("{} / {}", self.nodes, self.groups),
            ],
            vec!["duration".into(), format!("{:.0} s", self.duration_seconds)],
            vec![
                "faults".into(),
                if self.faults.is_empty() {
                    "none".into()
                } else {
                    self.faults.clone()
                },
            ],
            vec![
                "enroll (all up)".into(),
                format!("{} s", f2(self.enroll_seconds)),
            ],
            vec![
                "  cpu seconds".into(),
                format!(
                    "masters {} agents {}",
                    f2(self.enroll_cpu_seconds.masters),
                    f2(self.enroll_cpu_seconds.agents)
                ),
            ],
            vec!["detection (s)".into(), pct(&self.detection_seconds)],
            vec!["missed detections".into(), opt(&self.missed_detections)],
            vec!["false downs".into(), opt(&self.false_downs)],
            vec!["restart -> up (s)".into(), pct(&self.restart_up_seconds)],
            vec![
                "gm failover".into(),
                format!(
                    "{} s, wrong downs {}",
                    f2(self.gm_failover_seconds),
                    opt(&self.gm_failover_wrong_downs)
                ),
            ],
            vec![
                "cm failover".into(),
                format!(
                    "{} s (API back after {} s)",
                    f2(self.cm_failover_seconds),
                    f2(self.cm_takeover_api_seconds)
                ),
            ],
            vec![
                "partition".into(),
                self.partition
                    .as_ref()
                    .map(|p| {
                        format!(
                            "{}: unreachable after {} s, recovered {} s after heal, wrong downs {}",
                            p.group,
                            f2(p.unreachable_after_seconds),
                            f2(p.recovered_seconds),
                            p.wrong_downs
                        )
                    })
                    .unwrap_or_else(|| "null".into()),
            ],
            vec![
                "api load (wrk)".into(),
                self.api_load
                    .as_ref()
                    .map(|l| {
                        format!(
                            "{} req/s asked, {} achieved, p50 {} ms, p99 {} ms, non-2xx {}, socket errors {}",
                            l.target_per_sec,
                            f2(l.achieved_per_sec),
                            f2(l.p50_ms),
                            f2(l.p99_ms),
                            l.non_2xx,
                            l.socket_errors
                        )
                    })
                    .unwrap_or_else(|| "null".into()),
            ],
            vec![
                "cert renewals".into(),
                self.cert_renewals
                    .as_ref()
                    .map(|r| {
                        format!(
                            "lifetime {}: {} renewed, busiest second {}, {} seconds with any",
                            r.lifetime, r.renewed, r.busiest_second, r.seconds_with_renewals
                        )
                    })
                    .unwrap_or_else(|| "null".into()),
            ],
            vec![
                "heartbeats".into(),
                format!(
                    "sent {} received {} lost {}",
                    opt(&self.heartbeats.sent),
                    opt(&self.heartbeats.received),
                    opt(&self.heartbeats.lost)
                ),
            ],
            vec![
                "nodes at end".into(),
                format!(
                    "{} listed, {} in the key master",
                    opt(&self.nodes_at_end),
                    opt(&self.nodes_recorded_at_end)
                ),
            ],
            vec![
                "cpu steal".into(),
                format!(
                    "enrollment {} steady {}",
                    share(self.cpu_steal.enrollment),
                    share(self.cpu_steal.steady)
                ),
            ],
            vec!["masters cpu (cores)".into(), f2(self.masters_cpu_cores)],
            vec!["  while listing".into(), f2(self.masters_cpu_cores_listing)],
            vec!["agents cpu (cores)".into(), f2(self.agents_cpu_cores)],
            vec![
                "masters rss".into(),
                format!(
                    "{} (peak {})",
                    mib(self.masters_rss_bytes),
                    mib(self.masters_peak_rss_bytes)
                ),
            ],
            vec![
                "master bytes / node".into(),
                self.master_bytes_per_node
                    .map(|b| format!("{:.0} B ({:.1} KiB)", b, b / 1024.0))
                    .unwrap_or_else(|| "null".into()),
            ],
            vec!["agents rss".into(), mib(self.agents_rss_bytes)],
            vec![
                "keymaster writes/s".into(),
                format!(
                    "steady {} faults {}",
                    f2(self.keymaster_writes_per_sec.steady),
                    f2(self.keymaster_writes_per_sec.faults)
                ),
            ],
            vec![
                "GET /nodes (all)".into(),
                format!(
                    "n={} p50={} ms p99={} ms",
                    self.api_list_nodes_ms.count,
                    f2(self.api_list_nodes_ms.p50),
                    f2(self.api_list_nodes_ms.p99)
                ),
            ],
        ];
        crate::table::render(&["FIGURE", "VALUE"], &rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert!(percentiles(&[]).is_none());
        let p = percentiles(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((p.count, p.p50, p.p99, p.max), (3, 2.0, 3.0, 3.0));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&hundred).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (50.0, 99.0, 100.0));
    }

    #[test]
    fn unexercised_figures_are_null_in_json() {
        let json = serde_json::to_value(Report::default()).unwrap();
        for key in [
            "enroll_seconds",
            "detection_seconds",
            "cm_failover_seconds",
            "master_bytes_per_node",
        ] {
            assert!(json[key].is_null(), "{key}");
        }
        assert!(json["heartbeats"]["sent"].is_null());
    }
}
