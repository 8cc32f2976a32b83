//! Node metrics of the machine this process runs on (sysinfo, which reads /proc):
//! CPU (total and per core), load, memory, swap, disk use per mount, disk and network
//! throughput per second, uptime.

use std::collections::HashSet;
use std::time::Instant;

use glory_protocol::monitoring::SeriesKey;
use sysinfo::{Disks, Networks, System};

/// File systems that say nothing about the server's disks.
const PSEUDO_FS: &[&str] = &[
    "tmpfs",
    "devtmpfs",
    "overlay",
    "squashfs",
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "nsfs",
    "ramfs",
    "autofs",
    "fuse.lxcfs",
];

/// Samples this host. Rates (disk, network) are over the time since the previous call;
/// the first call reports them as 0.
pub struct Collector {
    system: System,
    disks: Disks,
    networks: Networks,
    last: Option<Instant>,
}

impl Default for Collector {
    fn default() -> Self {
        let mut system = System::new();
        system.refresh_cpu_usage();
        Collector {
            system,
            disks: Disks::new_with_refreshed_list(),
            networks: Networks::new_with_refreshed_list(),
            last: None,
        }
    }
}

impl Collector {
    /// Every node metric now.
    pub fn sample(&mut self) -> Vec<(SeriesKey, f64)> {
        let now = Instant::now();
        let seconds = self
            .last
            .map(|l| now.duration_since(l).as_secs_f64())
            .filter(|s| *s > 0.0);
        self.last = Some(now);
        let per_second = |bytes: u64| seconds.map_or(0.0, |s| bytes as f64 / s);

        let sys = &mut self.system;
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        let mut out = vec![(SeriesKey::new("cpu.percent"), sys.global_cpu_usage() as f64)];
        for (i, cpu) in sys.cpus().iter().enumerate() {
            out.push((
                SeriesKey::new("cpu.percent").label("core", &i.to_string()),
                cpu.cpu_usage() as f64,
            ));
        }
        let load = System::load_average();
        out.push((SeriesKey::new("load.1"), load.one));
        out.push((SeriesKey::new("load.5"), load.five));
        out.push((SeriesKey::new("load.15"), load.fifteen));
        out.push((SeriesKey::new("mem.used_bytes"), sys.used_memory() as f64));
        out.push((
            SeriesKey::new("mem.available_bytes"),
            sys.available_memory() as f64,
        ));
        out.push((SeriesKey::new("swap.used_bytes"), sys.used_swap() as f64));
        out.push((SeriesKey::new("uptime.seconds"), System::uptime() as f64));

        self.disks.refresh(true);
        let (mut read, mut written) = (0u64, 0u64);
        let mut devices = HashSet::new();
        for disk in self.disks.list() {
            let fs = disk.file_system().to_string_lossy();
            if PSEUDO_FS.contains(&fs.as_ref()) || disk.total_space() == 0 {
                continue;
            }
            let total = disk.total_space() as f64;
            let used = total - disk.available_space() as f64;
            let mount = disk.mount_point().to_string_lossy();
            out.push((
                SeriesKey::new("disk.used_percent").label("mount", &mount),
                100.0 * used / total,
            ));
            // A device mounted twice (bind mounts) counts once.
            if devices.insert(disk.name().to_os_string()) {
                let usage = disk.usage();
                read += usage.read_bytes;
                written += usage.written_bytes;
            }
        }
        out.push((SeriesKey::new("disk.read_bytes"), per_second(read)));
        out.push((SeriesKey::new("disk.write_bytes"), per_second(written)));

        self.networks.refresh(true);
        for (name, data) in self.networks.list() {
            if name == "lo" {
                continue;
            }
            out.push((
                SeriesKey::new("net.rx_bytes").label("iface", name),
                per_second(data.received()),
            ));
            out.push((
                SeriesKey::new("net.tx_bytes").label("iface", name),
                per_second(data.transmitted()),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_reports_every_node_metric() {
        let mut collector = Collector::default();
        let _ = collector.sample();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let sample = collector.sample();
        let items: HashSet<&str> = sample.iter().map(|(k, _)| k.item.as_str()).collect();
        // Every node item; per-mount and per-interface ones only where this host has
        // a real file system or a network interface.
        let optional = ["disk.used_percent", "net.rx_bytes", "net.tx_bytes"];
        for item in crate::items::NODE_ITEMS
            .iter()
            .filter(|i| !optional.contains(i))
        {
            assert!(items.contains(item), "{item} missing from {items:?}");
        }
        assert!(sample.iter().all(|(_, v)| v.is_finite() && *v >= 0.0));
        let cores = sample
            .iter()
            .filter(|(k, _)| k.item == "cpu.percent" && k.get("core").is_some())
            .count();
        assert!(cores >= 1);
        let mem = sample
            .iter()
            .find(|(k, _)| k.item == "mem.used_bytes")
            .map(|(_, v)| *v)
            .unwrap_or(0.0);
        assert!(mem > 0.0);
    }
}
