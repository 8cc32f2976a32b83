//! What a run measures besides the API: the report's header (settings, machine), CPU and
//! memory snapshots, the enrollment cost and the steady-state window.

use std::time::{Duration, Instant};

use glory_protocol::now_ms;

use super::cores;
use super::procstat::{machine_cpu, sample, steal_fraction, MachineSample, ProcSample};
use super::report::Report;
use super::SimOptions;

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

pub(super) fn base_report(o: &SimOptions, mode: &str) -> Report {
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
pub(super) struct Snapshot {
    pub(super) at: Instant,
    machine: MachineSample,
    masters: ProcSample,
    agents: ProcSample,
    pub(super) km_writes: u64,
}

pub(super) fn snapshot(agents_pid: u32, km_writes: u64) -> Snapshot {
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
pub(super) struct EnrollStart {
    machine: MachineSample,
    masters: ProcSample,
    agents: ProcSample,
    agents_pid: u32,
}

impl EnrollStart {
    pub(super) fn now(agents_pid: u32) -> EnrollStart {
        EnrollStart {
            machine: machine_cpu(),
            masters: sample(None).unwrap_or_default(),
            agents: sample(Some(agents_pid)).unwrap_or_default(),
            agents_pid,
        }
    }

    pub(super) fn finish(&self, report: &mut Report) {
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
pub(super) struct SteadyWindow {
    /// The first fault, or 1 s before the end.
    end_at: Duration,
    baseline_rss: u64,
    nodes: usize,
    start: Option<Snapshot>,
    mid: Option<Snapshot>,
    done: bool,
}

impl SteadyWindow {
    pub(super) fn new(o: &SimOptions, baseline_rss: u64) -> Self {
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
    pub(super) fn advance(
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

    pub(super) fn note_missing(&self, report: &mut Report) {
        if self.mid.is_none() {
            report
                .notes
                .push("no steady-state window (enrollment too late or faults too early)".into());
        }
    }
}
