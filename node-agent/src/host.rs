//! What the agent reports about the machine it runs on. [`RealHost`] reads the real
//! machine with `sysinfo`; [`SimHost`] is a cheap stand-in for `glory up` and `glory sim`.

use std::sync::Mutex;

use glory_monitor::collect::Collector;
use glory_monitor::procs::{Candidate, Matcher, ProcInfo};
use glory_monitor::simulated::SimSeries;
use glory_protocol::monitoring::SeriesKey;
use glory_protocol::{Disk, Inventory, Load, Nic};

use crate::node_identity::{boot_mac_from_cmdline, node_identity, HardwareFacts};
use sysinfo::{Disks, Networks, ProcessRefreshKind, ProcessesToUpdate, System};

/// A source of inventory and load.
pub trait Host: Send + Sync + 'static {
    fn inventory(&self) -> Inventory;
    fn load(&self) -> Load;
    /// Node metrics now (one call per monitoring interval), each given to `out`.
    fn sample(&self, now_ms: u64, out: &mut dyn FnMut(&SeriesKey, f64));
    /// The processes `matcher` watches, with what they use (process monitors).
    fn processes(&self, matcher: &Matcher, now_ms: u64) -> Vec<ProcInfo>;
    /// Whether processes the cluster master asks for are really run here (simulated
    /// hosts only record them).
    fn runs_processes(&self) -> bool {
        !self.inventory().simulated
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The machine this process runs on.
pub struct RealHost {
    system: Mutex<System>,
    /// What this server enrolls as (see [`crate::node_identity`]); read once, the
    /// hardware does not change under a running agent.
    identity: String,
    /// When the process table was last scanned: a full /proc walk every heartbeat
    /// would cost more than the heartbeat itself on a busy server.
    procs_scanned: Mutex<Option<std::time::Instant>>,
    collector: Mutex<Option<Collector>>,
}

/// How often the process count in the load is refreshed.
const PROCESS_SCAN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Default for RealHost {
    fn default() -> Self {
        Self::new()
    }
}

impl RealHost {
    pub fn new() -> Self {
        Self::with_node_name(None)
    }

    /// This machine, enrolling as `name:<node_name>` when a name is given (several
    /// agents on one host) and by its hardware otherwise.
    pub fn with_node_name(node_name: Option<String>) -> Self {
        let mut system = System::new();
        system.refresh_cpu_all();
        system.refresh_memory();
        let facts = Self::hardware_facts(node_name);
        let identity = node_identity(&facts);
        RealHost {
            system: Mutex::new(system),
            identity,
            procs_scanned: Mutex::new(None),
            collector: Mutex::new(None),
        }
    }

    /// What the hardware says about itself: SMBIOS UUID, boot NIC, physical NICs.
    pub fn hardware_facts(node_name: Option<String>) -> HardwareFacts {
        let mut macs = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
            for entry in dir.flatten() {
                // Physical NICs have a backing device; lo, bridges, veths and bonds don't.
                if entry.path().join("device").exists() {
                    if let Some(mac) =
                        read_trimmed(&format!("{}/address", entry.path().to_string_lossy()))
                    {
                        macs.push(mac);
                    }
                }
            }
        }
        HardwareFacts {
            node_name,
            system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
            boot_mac: read_trimmed("/proc/cmdline")
                .as_deref()
                .and_then(boot_mac_from_cmdline),
            macs,
            machine_id: Some(Self::machine_id()),
        }
    }

    /// The systemd/dbus machine id, or the hostname when there is none.
    pub fn machine_id() -> String {
        read_trimmed("/etc/machine-id")
            .or_else(|| read_trimmed("/var/lib/dbus/machine-id"))
            .or_else(System::host_name)
            .unwrap_or_else(|| "unknown-machine".to_string())
    }
}

impl Host for RealHost {
    fn inventory(&self) -> Inventory {
        let (cpus, cpu_model, memory_bytes) = match self.system.lock() {
            Ok(mut sys) => {
                sys.refresh_cpu_all();
                sys.refresh_memory();
                let model = sys
                    .cpus()
                    .first()
                    .map(|c| c.brand().to_string())
                    .unwrap_or_default();
                (sys.cpus().len() as u32, model, sys.total_memory())
            }
            Err(_) => (0, String::new(), 0),
        };
        let disks = Disks::new_with_refreshed_list()
            .iter()
            .map(|d| Disk {
                name: d.name().to_string_lossy().into_owned(),
                mount_point: d.mount_point().to_string_lossy().into_owned(),
                file_system: d.file_system().to_string_lossy().into_owned(),
                total_bytes: d.total_space(),
                available_bytes: d.available_space(),
            })
            .collect();
        let mut nics: Vec<Nic> = Networks::new_with_refreshed_list()
            .iter()
            .map(|(name, data)| Nic {
                name: name.clone(),
                mac: data.mac_address().to_string(),
                addresses: data
                    .ip_networks()
                    .iter()
                    .map(|n| format!("{}/{}", n.addr, n.prefix))
                    .collect(),
            })
            .collect();
        nics.sort_by(|a, b| a.name.cmp(&b.name));
        let image = std::fs::read_to_string("/proc/cmdline")
            .ok()
            .and_then(|c| image_from_cmdline(&c));
        Inventory {
            hostname: System::host_name().unwrap_or_default(),
            identity: self.identity.clone(),
            machine_id: Self::machine_id(),
            cpus,
            cpu_model,
            memory_bytes,
            disks,
            nics,
            kernel: System::kernel_version().unwrap_or_default(),
            os: System::long_os_version().unwrap_or_default(),
            product: read_trimmed("/sys/class/dmi/id/product_name"),
            serial: read_trimmed("/sys/class/dmi/id/product_serial"),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            simulated: false,
            image: image.as_ref().map(|(n, _)| n.clone()),
            image_version: image.and_then(|(_, v)| v),
        }
    }

    fn load(&self) -> Load {
        let Ok(mut sys) = self.system.lock() else {
            return Load::default();
        };
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        if let Ok(mut scanned) = self.procs_scanned.lock() {
            if scanned.is_none_or(|at| at.elapsed() >= PROCESS_SCAN_INTERVAL) {
                sys.refresh_processes_specifics(
                    ProcessesToUpdate::All,
                    true,
                    ProcessRefreshKind::nothing(),
                );
                *scanned = Some(std::time::Instant::now());
            }
        }
        Load {
            cpu: sys.global_cpu_usage(),
            load1: System::load_average().one as f32,
            mem_used: sys.used_memory(),
            mem_total: sys.total_memory(),
            procs: sys.processes().len() as u32,
        }
    }

    fn sample(&self, _now_ms: u64, out: &mut dyn FnMut(&SeriesKey, f64)) {
        let Ok(mut collector) = self.collector.lock() else {
            return;
        };
        for (key, value) in collector.get_or_insert_with(Collector::default).sample() {
            out(&key, value);
        }
    }

    fn processes(&self, matcher: &Matcher, _now_ms: u64) -> Vec<ProcInfo> {
        glory_monitor::procs::scan(matcher)
    }
}

/// A process a simulated host pretends to run: the daemons every server has.
struct SimProcess {
    name: &'static str,
    cmdline: &'static str,
    unit: &'static str,
    /// CPU it uses (fraction of one core), resident bytes, threads, open files.
    cpu: f64,
    rss: u64,
    threads: u64,
    fds: u64,
    pid: u32,
    /// When it started (ms); None while it is dead.
    started_ms: Option<u64>,
}

/// The daemons of a simulated host, each `(name, command line, unit, CPU, RSS MiB,
/// threads, open files)`.
const SIM_PROCESSES: [(&str, &str, &str, f64, u64, u64, u64); 3] = [
    ("sshd", "/usr/sbin/sshd -D", "ssh.service", 0.001, 8, 1, 9),
    (
        "chronyd",
        "/usr/sbin/chronyd -F 1",
        "chrony.service",
        0.002,
        4,
        1,
        6,
    ),
    (
        "glory-node-agent",
        "/usr/bin/glory-node-agent --config /etc/glory/agent.toml",
        "glory-node-agent.service",
        0.01,
        24,
        4,
        21,
    ),
];

fn sim_processes(index: u32, boot_ms: u64) -> Vec<SimProcess> {
    SIM_PROCESSES
        .iter()
        .enumerate()
        .map(
            |(i, &(name, cmdline, unit, cpu, rss_mib, threads, fds))| SimProcess {
                name,
                cmdline,
                unit,
                cpu,
                rss: rss_mib << 20,
                threads,
                fds,
                pid: 400 + (index % 97) * 3 + i as u32,
                started_ms: Some(boot_ms),
            },
        )
        .collect()
}

/// A simulated server: a stable identity derived from its index and a plausible,
/// cheaply varying load. Its addresses are only data (never dialled): index `i` sits in
/// subnet `10.{i / 250 / 256}.{i / 250 % 256}.0/24`, 250 machines per subnet like a rack.
pub struct SimHost {
    index: u32,
    inventory: Inventory,
    /// Run the processes the cluster master asks for on this machine (tests of
    /// component masters), instead of only recording them.
    run_processes: bool,
    series: SimSeries,
    /// CPU forced by a simulation hook, and until when (ms since the epoch).
    forced_cpu: Mutex<Option<(f64, u64)>>,
    /// The daemons it runs, which simulation hooks kill and start.
    processes: Mutex<Vec<SimProcess>>,
}

impl SimHost {
    pub fn new(index: u32) -> Self {
        let subnet = index / 250;
        let host = index % 250 + 1;
        let address = format!("10.{}.{}.{}/24", subnet / 256 % 256, subnet % 256, host);
        // A mixed fleet, so pool selectors have something to choose between: every
        // fourth machine is small (8 cores, 32 GiB), every fourth large (64, 256 GiB).
        let size = [16u32, 8, 32, 64][(index % 4) as usize];
        let inventory = Inventory {
            hostname: format!("sim-{index:05}"),
            // Like a real board's SMBIOS UUID: unique per simulated server.
            identity: format!("uuid:00000000-0000-4000-8000-{index:012x}"),
            machine_id: format!("sim-machine-{index:05}"),
            cpus: size,
            cpu_model: "Simulated CPU".to_string(),
            memory_bytes: (size as u64 * 4) << 30,
            disks: vec![Disk {
                name: "sda".to_string(),
                mount_point: "/".to_string(),
                file_system: "ext4".to_string(),
                total_bytes: 2 << 40,
                available_bytes: 1 << 40,
            }],
            nics: vec![Nic {
                name: "eth0".to_string(),
                mac: format!(
                    "02:00:{:02x}:{:02x}:{:02x}:{:02x}",
                    index >> 24 & 0xff,
                    index >> 16 & 0xff,
                    index >> 8 & 0xff,
                    index & 0xff
                ),
                addresses: vec![address],
            }],
            kernel: "6.1.0-sim".to_string(),
            os: "GLORY simulated host".to_string(),
            product: Some("SimServer 1000".to_string()),
            serial: Some(format!("SIM{index:08}")),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            simulated: true,
            image: None,
            image_version: None,
        };
        // Booted at a host-specific time in the last 30 days.
        let boot_ms =
            glory_protocol::now_ms().saturating_sub((index as u64 * 7_919_000) % (30 * 86_400_000));
        let series = SimSeries::new(
            &inventory.hostname,
            inventory.cpus,
            inventory.memory_bytes,
            boot_ms,
            &["/"],
            &["eth0"],
        );
        SimHost {
            index,
            inventory,
            run_processes: false,
            series,
            forced_cpu: Mutex::new(None),
            processes: Mutex::new(sim_processes(index, boot_ms)),
        }
    }

    /// Kill (`start` false) or start one of the host's daemons (a simulation hook).
    /// Errors when there is no such daemon or it already is in that state.
    pub fn set_process(&self, name: &str, start: bool) -> Result<(), String> {
        let mut procs = self.processes.lock().map_err(|_| "poisoned".to_string())?;
        let known = || {
            SIM_PROCESSES
                .iter()
                .map(|p| p.0)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let p = procs
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| format!("no process {name} on this host (it runs {})", known()))?;
        match (p.started_ms.is_some(), start) {
            (true, true) => Err(format!("{name} is already running")),
            (false, false) => Err(format!("{name} is not running")),
            (_, true) => {
                // A new process: a new pid.
                p.pid += 1000;
                p.started_ms = Some(glory_protocol::now_ms());
                Ok(())
            }
            (_, false) => {
                p.started_ms = None;
                Ok(())
            }
        }
    }

    /// Hold the CPU at `cpu_percent` until `until_ms` (a simulation hook: load spikes
    /// that alerts must catch).
    pub fn force_cpu(&self, cpu_percent: f64, until_ms: u64) {
        if let Ok(mut forced) = self.forced_cpu.lock() {
            *forced = Some((cpu_percent, until_ms));
        }
    }

    fn forced(&self, now_ms: u64) -> Option<f64> {
        let forced = self.forced_cpu.lock().ok()?;
        forced
            .filter(|(_, until)| now_ms < *until)
            .map(|(cpu, _)| cpu)
    }

    /// A simulated server that really runs the processes it is asked to run, on this
    /// machine, as the agent's user.
    pub fn with_processes(index: u32) -> Self {
        SimHost {
            run_processes: true,
            ..SimHost::new(index)
        }
    }
}

impl Host for SimHost {
    fn inventory(&self) -> Inventory {
        self.inventory.clone()
    }

    fn runs_processes(&self) -> bool {
        self.run_processes
    }

    fn load(&self) -> Load {
        // The same CPU as the metrics say.
        let now = glory_protocol::now_ms();
        let cpu = self.series.cpu(now, self.forced(now));
        let memory = self.inventory.memory_bytes;
        Load {
            cpu: cpu as f32,
            load1: (cpu / 100.0 * self.inventory.cpus as f64) as f32,
            mem_used: (memory as f64 * (0.3 + 0.3 * cpu / 100.0)) as u64,
            mem_total: memory,
            procs: 200 + (self.index % 50),
        }
    }

    fn sample(&self, now_ms: u64, out: &mut dyn FnMut(&SeriesKey, f64)) {
        let values = self.series.values(now_ms, self.forced(now_ms));
        for (key, value) in self.series.keys().iter().zip(values) {
            out(key, value);
        }
    }

    fn processes(&self, matcher: &Matcher, now_ms: u64) -> Vec<ProcInfo> {
        let Ok(procs) = self.processes.lock() else {
            return Vec::new();
        };
        let pidfile = matcher.spec().pidfile.as_deref();
        procs
            .iter()
            .filter_map(|p| {
                let started = p.started_ms?;
                let cgroup = format!("0::/system.slice/{}", p.unit);
                let candidate = Candidate {
                    pid: p.pid,
                    name: p.name,
                    cmdline: p.cmdline,
                    cgroup: &cgroup,
                };
                // Each daemon writes /run/<name>.pid.
                let pidfile_pid =
                    (pidfile == Some(format!("/run/{}.pid", p.name).as_str())).then_some(p.pid);
                matcher.matches(&candidate, pidfile_pid).then(|| ProcInfo {
                    pid: p.pid,
                    cpu_seconds: now_ms.saturating_sub(started) as f64 / 1000.0 * p.cpu,
                    rss_bytes: p.rss,
                    threads: p.threads,
                    fds: p.fds,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_host_reports_this_machine() {
        let host = RealHost::new();
        let inv = host.inventory();
        assert!(inv.cpus >= 1, "cpus: {}", inv.cpus);
        assert!(inv.memory_bytes > 0);
        assert!(!inv.hostname.is_empty());
        assert!(!inv.machine_id.is_empty());
        assert!(
            ["uuid:", "mac:", "machine-id:"]
                .iter()
                .any(|p| inv.identity.starts_with(p)),
            "identity: {}",
            inv.identity
        );
        let named = RealHost::with_node_name(Some("lab-1".into())).inventory();
        assert_eq!(named.identity, "name:lab-1");
        assert!(!inv.kernel.is_empty());
        assert!(
            inv.nics.iter().any(|n| n.name == "lo"),
            "nics: {:?}",
            inv.nics
        );
        let load = host.load();
        assert!(load.mem_total > 0 && load.procs > 0);
    }

    #[test]
    fn sim_hosts_are_distinct_and_grouped_by_subnet() {
        let a = SimHost::new(0).inventory();
        let b = SimHost::new(249).inventory();
        let c = SimHost::new(250).inventory();
        assert_ne!(a.machine_id, b.machine_id);
        assert_ne!(a.identity, b.identity);
        assert_eq!(a.nics[0].addresses[0], "10.0.0.1/24");
        assert_eq!(b.nics[0].addresses[0], "10.0.0.250/24");
        assert_eq!(c.nics[0].addresses[0], "10.0.1.1/24");
    }
}

/// The OS image a deployed node booted: `glory.image=NAME:VERSION` on its kernel
/// command line.
pub fn image_from_cmdline(cmdline: &str) -> Option<(String, Option<u32>)> {
    let value = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("glory.image="))?;
    let (name, version) = match value.split_once(':') {
        Some((n, v)) => (n, v.parse().ok()),
        None => (value, None),
    };
    (!name.is_empty()).then(|| (name.to_string(), version))
}

#[cfg(test)]
mod image_tests {
    #[test]
    fn the_image_comes_from_the_kernel_command_line() {
        assert_eq!(
            super::image_from_cmdline("quiet glory.image=web:3 BOOTIF=01-aa"),
            Some(("web".to_string(), Some(3)))
        );
        assert_eq!(super::image_from_cmdline("quiet"), None);
    }
}
