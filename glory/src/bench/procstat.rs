//! CPU time and memory of a process, from /proc (Linux).

/// /proc/<pid>/stat times are in USER_HZ, which Linux fixes at 100 for user space.
const USER_HZ: f64 = 100.0;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// User + system CPU seconds so far.
    pub cpu_seconds: f64,
    /// Resident set size now.
    pub rss_bytes: u64,
    /// Peak resident set size.
    pub peak_rss_bytes: u64,
}

/// Sample process `pid` (`None`: this process).
pub fn sample(pid: Option<u32>) -> std::io::Result<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_string(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    Ok(parse(&stat, &status))
}

fn parse(stat: &str, status: &str) -> ProcSample {
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime is field 14, stime 15 (1-based); `fields[0]` is field 3.
    let cpu_seconds = (ticks(11) + ticks(12)) / USER_HZ;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    ProcSample {
        cpu_seconds,
        rss_bytes: kib("VmRSS:"),
        peak_rss_bytes: kib("VmHWM:"),
    }
}

/// CPU time of the whole machine so far, from the first line of /proc/stat (ticks).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MachineSample {
    pub total: u64,
    /// Time the hypervisor gave this VM's CPUs to someone else.
    pub steal: u64,
}

pub fn machine_cpu() -> MachineSample {
    std::fs::read_to_string("/proc/stat")
        .map(|s| parse_machine(&s))
        .unwrap_or_default()
}

fn parse_machine(stat: &str) -> MachineSample {
    let fields: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    MachineSample {
        total: fields.iter().take(8).sum(),
        steal: fields.get(7).copied().unwrap_or(0),
    }
}

/// Share of the machine's CPU time stolen by the hypervisor between two samples.
pub fn steal_fraction(a: &MachineSample, b: &MachineSample) -> Option<f64> {
    let total = b.total.checked_sub(a.total)?;
    (total > 0).then(|| b.steal.saturating_sub(a.steal) as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn steal_is_the_eighth_column_of_the_cpu_line() {
        let a = super::parse_machine("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n");
        let b = super::parse_machine("cpu  200 0 100 1600 20 0 0 80 0 0\n");
        assert_eq!(
            a,
            super::MachineSample {
                total: 1000,
                steal: 40
            }
        );
        let f = super::steal_fraction(&a, &b).unwrap();
        assert!((f - 0.04).abs() < 1e-9, "{f}");
    }

    #[test]
    fn parses_proc_files_with_spaces_in_the_name() {
        let stat = "1234 (glory sim (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100 1000 200";
        let status = "Name:\tglory\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        let s = super::parse(stat, status);
        assert!((s.cpu_seconds - 3.0).abs() < 1e-9, "{s:?}");
        assert_eq!((s.rss_bytes, s.peak_rss_bytes), (1024 * 1024, 2048 * 1024));
    }

    #[test]
    fn samples_this_process() {
        let s = super::sample(None).unwrap();
        assert!(s.rss_bytes > 0 && s.peak_rss_bytes >= s.rss_bytes);
    }
}
