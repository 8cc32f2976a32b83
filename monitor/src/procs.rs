//! Process monitors: which processes a monitor watches ([`Matcher`]), what they use
//! ([`ProcInfo`], read from /proc on a real host by [`scan`]), and the series one probe
//! gives ([`Tracker`]: alive, count, CPU %, RSS, threads, open files, restarts).

use std::collections::BTreeSet;
use std::path::Path;

use glory_protocol::monitoring::{ProcessMatch, SeriesKey};
use regex::Regex;

/// Clock ticks per second of `/proc/PID/stat`'s CPU times: Linux's `USER_HZ`, 100 on
/// every architecture we run on (it is part of the user-space ABI).
const USER_HZ: f64 = 100.0;

/// Longest command-line pattern accepted (a pattern is compiled once per probe).
const MAX_PATTERN: usize = 1024;

/// A compiled [`ProcessMatch`].
#[derive(Clone, Debug)]
pub struct Matcher {
    spec: ProcessMatch,
    cmdline: Option<Regex>,
}

/// What a candidate process looks like to a matcher.
pub struct Candidate<'a> {
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub name: &'a str,
    /// Arguments joined by spaces.
    pub cmdline: &'a str,
    /// The control group path (`/system.slice/ssh.service`).
    pub cgroup: &'a str,
}

impl Matcher {
    /// Compile `spec`; errors name the field.
    pub fn new(spec: &ProcessMatch) -> Result<Self, String> {
        if spec.name.is_none()
            && spec.cmdline.is_none()
            && spec.pidfile.is_none()
            && spec.unit.is_none()
        {
            return Err("match: give at least one of name, cmdline, pidfile, unit".into());
        }
        for (field, value) in [
            ("name", &spec.name),
            ("pidfile", &spec.pidfile),
            ("unit", &spec.unit),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(format!("match.{field}: empty"));
            }
        }
        if spec
            .pidfile
            .as_deref()
            .is_some_and(|p| !Path::new(p).is_absolute())
        {
            return Err("match.pidfile: not an absolute path".into());
        }
        let cmdline = match &spec.cmdline {
            Some(p) if p.len() > MAX_PATTERN => {
                return Err(format!("match.cmdline: longer than {MAX_PATTERN} bytes"))
            }
            Some(p) => Some(
                Regex::new(p)
                    .map_err(|e| format!("match.cmdline: not a regular expression: {e}"))?,
            ),
            None => None,
        };
        Ok(Matcher {
            spec: spec.clone(),
            cmdline,
        })
    }

    pub fn spec(&self) -> &ProcessMatch {
        &self.spec
    }

    /// Whether `c` is watched; `pidfile_pid` is the pid the pidfile holds now.
    pub fn matches(&self, c: &Candidate<'_>, pidfile_pid: Option<u32>) -> bool {
        self.spec.name.as_deref().is_none_or(|n| n == c.name)
            && self.cmdline.as_ref().is_none_or(|r| r.is_match(c.cmdline))
            && (self.spec.pidfile.is_none() || pidfile_pid == Some(c.pid))
            && self
                .spec
                .unit
                .as_deref()
                .is_none_or(|u| c.cgroup.rsplit('/').any(|part| part == u))
    }

    /// The pid in the pidfile, if it names one.
    pub fn pidfile_pid(&self) -> Option<u32> {
        let path = self.spec.pidfile.as_deref()?;
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

/// What one matching process uses.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcInfo {
    pub pid: u32,
    /// CPU time used since it started, user and system.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub threads: u64,
    pub fds: u64,
}

/// The processes of this machine that `matcher` watches, from /proc. Processes that
/// end while being read are skipped.
pub fn scan(matcher: &Matcher) -> Vec<ProcInfo> {
    let pidfile_pid = matcher.pidfile_pid();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pidfile_pid.is_some_and(|p| p != pid) {
            continue;
        }
        let dir = entry.path();
        let read = |name: &str| std::fs::read(dir.join(name)).ok();
        let Some(comm) = read("comm") else { continue };
        let name = String::from_utf8_lossy(&comm);
        let cmdline = read("cmdline")
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(String::from_utf8_lossy)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let cgroup = if matcher.spec.unit.is_some() {
            read("cgroup")
                .map(|c| String::from_utf8_lossy(&c).into_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let candidate = Candidate {
            pid,
            name: name.trim_end(),
            cmdline: &cmdline,
            cgroup: cgroup.lines().next_back().unwrap_or("").trim_end(),
        };
        if !matcher.matches(&candidate, pidfile_pid) {
            continue;
        }
        let Some(info) = usage(pid, &dir) else {
            continue;
        };
        found.push(info);
    }
    found
}

/// What process `pid` (its /proc directory `dir`) uses.
fn usage(pid: u32, dir: &Path) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // Fields after the command name, which may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(dir.join("fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcInfo {
        pid,
        cpu_seconds: ticks as f64 / USER_HZ,
        rss_bytes: field("VmRSS:").unwrap_or(0) * 1024,
        threads: field("Threads:").unwrap_or(1),
        fds,
    })
}

/// One probe's memory between runs: the processes it saw, for CPU rates and restarts.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Pids and CPU seconds at the last run, and when it was (ms).
    last: Vec<(u32, f64)>,
    last_ms: u64,
    /// The pids of the last run that found any.
    alive_pids: BTreeSet<u32>,
    restarts: u64,
}

/// The items of a process probe.
pub const PROCESS_ITEMS: [&str; 7] = [
    "proc.alive",
    "proc.count",
    "proc.cpu_percent",
    "proc.rss_bytes",
    "proc.threads",
    "proc.fds",
    "proc.restarts",
];

impl Tracker {
    /// The series of one run that found `procs` at `now_ms`, labelled
    /// `monitor=<monitor>`. A restart is counted when processes are found again and
    /// none of them is one seen before (the pid changed).
    pub fn observe(
        &mut self,
        monitor: &str,
        procs: &[ProcInfo],
        now_ms: u64,
        out: &mut dyn FnMut(&SeriesKey, f64),
    ) {
        let pids: BTreeSet<u32> = procs.iter().map(|p| p.pid).collect();
        if !pids.is_empty() {
            if !self.alive_pids.is_empty() && self.alive_pids.is_disjoint(&pids) {
                self.restarts += 1;
            }
            self.alive_pids = pids;
        }
        // CPU: what the processes seen last time used since, over the wall time.
        let wall = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        let used: f64 = procs
            .iter()
            .filter_map(|p| {
                let (_, before) = self.last.iter().find(|(pid, _)| *pid == p.pid)?;
                Some((p.cpu_seconds - before).max(0.0))
            })
            .sum();
        let cpu = if self.last_ms == 0 || wall <= 0.0 {
            0.0
        } else {
            used / wall * 100.0
        };
        self.last = procs.iter().map(|p| (p.pid, p.cpu_seconds)).collect();
        self.last_ms = now_ms;
        let values = [
            if procs.is_empty() { 0.0 } else { 1.0 },
            procs.len() as f64,
            cpu,
            procs.iter().map(|p| p.rss_bytes).sum::<u64>() as f64,
            procs.iter().map(|p| p.threads).sum::<u64>() as f64,
            procs.iter().map(|p| p.fds).sum::<u64>() as f64,
            self.restarts as f64,
        ];
        for (item, value) in PROCESS_ITEMS.iter().zip(values) {
            out(&SeriesKey::new(item).label("monitor", monitor), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: Option<&str>, cmdline: Option<&str>, unit: Option<&str>) -> ProcessMatch {
        ProcessMatch {
            name: name.map(str::to_string),
            cmdline: cmdline.map(str::to_string),
            pidfile: None,
            unit: unit.map(str::to_string),
        }
    }

    #[test]
    fn matchers_check_every_criterion_and_name_bad_fields() {
        let m = Matcher::new(&spec(Some("sshd"), Some("-D$"), Some("ssh.service"))).unwrap();
        let c = Candidate {
            pid: 7,
            name: "sshd",
            cmdline: "/usr/sbin/sshd -D",
            cgroup: "0::/system.slice/ssh.service",
        };
        assert!(m.matches(&c, None));
        assert!(!m.matches(&Candidate { name: "sshd2", ..c }, None));
        assert!(!m.matches(
            &Candidate {
                cmdline: "sshd -f x",
                ..c
            },
            None
        ));
        assert!(!m.matches(
            &Candidate {
                cgroup: "0::/user.slice",
                ..c
            },
            None
        ));
        let e = Matcher::new(&spec(None, Some("(unclosed"), None)).unwrap_err();
        assert!(e.starts_with("match.cmdline"), "{e}");
        let e = Matcher::new(&spec(None, None, None)).unwrap_err();
        assert!(e.starts_with("match:"), "{e}");
        let e = Matcher::new(&ProcessMatch {
            pidfile: Some("run/x.pid".into()),
            ..ProcessMatch::default()
        })
        .unwrap_err();
        assert!(e.starts_with("match.pidfile"), "{e}");
    }

    #[test]
    fn a_scan_finds_this_test_process_with_its_usage() {
        let me = std::process::id();
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        let m = Matcher::new(&spec(Some(comm.trim()), None, None)).unwrap();
        let found = scan(&m);
        let mine = found.iter().find(|p| p.pid == me).expect("this process");
        assert!(
            mine.rss_bytes > 0 && mine.threads >= 1 && mine.fds >= 3,
            "{mine:?}"
        );
    }

    #[test]
    fn trackers_count_restarts_and_cpu() {
        let mut t = Tracker::default();
        let mut run = |procs: &[ProcInfo], at: u64| {
            let mut got = std::collections::BTreeMap::new();
            t.observe("m", procs, at, &mut |k, v| {
                got.insert(k.item.clone(), v);
            });
            got
        };
        let p = |pid, cpu| ProcInfo {
            pid,
            cpu_seconds: cpu,
            rss_bytes: 100,
            threads: 2,
            fds: 5,
        };
        let first = run(&[p(10, 1.0)], 1_000);
        assert_eq!(first["proc.alive"], 1.0);
        assert_eq!(first["proc.restarts"], 0.0);
        let second = run(&[p(10, 1.5)], 6_000);
        assert!((second["proc.cpu_percent"] - 10.0).abs() < 1e-9);
        let dead = run(&[], 11_000);
        assert_eq!((dead["proc.alive"], dead["proc.count"]), (0.0, 0.0));
        let back = run(&[p(11, 0.0)], 16_000);
        assert_eq!(back["proc.restarts"], 1.0);
        // The same pid again is no restart.
        assert_eq!(run(&[p(11, 0.1)], 21_000)["proc.restarts"], 1.0);
    }
}
