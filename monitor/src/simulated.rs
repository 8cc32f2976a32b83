//! Metrics of simulated hosts: realistic, seeded series (a daily cycle, noise and the
//! occasional spike), deterministic per host, so a simulation's alerts and charts look
//! like a datacenter's and repeat from run to run.

use glory_protocol::monitoring::SeriesKey;

const DAY_MS: f64 = 86_400_000.0;
/// Noise and spikes change every this many ms (one sampling interval).
const SLOT_MS: u64 = 5_000;

/// A simulated host's series.
#[derive(Clone, Debug)]
pub struct SimSeries {
    seed: u64,
    cpus: u32,
    memory_bytes: u64,
    boot_ms: u64,
    keys: Vec<SeriesKey>,
    mounts: Vec<String>,
    ifaces: Vec<String>,
}

/// splitmix64: a fast, well-mixed hash of one word.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A number in [0, 1) from `seed` and `salt`.
fn unit(seed: u64, salt: u64) -> f64 {
    (mix(seed ^ mix(salt)) >> 11) as f64 / (1u64 << 53) as f64
}

/// The seed of a host name (FNV-1a).
fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl SimSeries {
    /// The series of host `name` with `cpus` cores and `memory_bytes` of memory, up
    /// since `boot_ms`, with `mounts` and network interfaces `ifaces`.
    pub fn new(
        name: &str,
        cpus: u32,
        memory_bytes: u64,
        boot_ms: u64,
        mounts: &[&str],
        ifaces: &[&str],
    ) -> Self {
        let cpus = cpus.max(1);
        let mut keys = vec![SeriesKey::new("cpu.percent")];
        for core in 0..cpus {
            keys.push(SeriesKey::new("cpu.percent").label("core", &core.to_string()));
        }
        for item in [
            "load.1",
            "load.5",
            "load.15",
            "mem.used_bytes",
            "mem.available_bytes",
            "swap.used_bytes",
            "uptime.seconds",
        ] {
            keys.push(SeriesKey::new(item));
        }
        for mount in mounts {
            keys.push(SeriesKey::new("disk.used_percent").label("mount", mount));
        }
        for item in ["disk.read_bytes", "disk.write_bytes"] {
            keys.push(SeriesKey::new(item));
        }
        for iface in ifaces {
            keys.push(SeriesKey::new("net.rx_bytes").label("iface", iface));
            keys.push(SeriesKey::new("net.tx_bytes").label("iface", iface));
        }
        SimSeries {
            seed: seed_of(name),
            cpus,
            memory_bytes,
            boot_ms,
            keys,
            mounts: mounts.iter().map(|m| m.to_string()).collect(),
            ifaces: ifaces.iter().map(|i| i.to_string()).collect(),
        }
    }

    /// The series, in the order [`SimSeries::values`] gives their values.
    pub fn keys(&self) -> &[SeriesKey] {
        &self.keys
    }

    /// Total CPU at `now_ms`: a daily cycle peaking at a host-specific hour, noise, and
    /// a spike in about one interval of 500; `forced` (a simulation hook) overrides it.
    pub fn cpu(&self, now_ms: u64, forced: Option<f64>) -> f64 {
        if let Some(cpu) = forced {
            return cpu.clamp(0.0, 100.0);
        }
        let base = 10.0 + 30.0 * unit(self.seed, 1);
        let amplitude = 5.0 + 20.0 * unit(self.seed, 2);
        let phase = unit(self.seed, 3);
        let day = (now_ms as f64 / DAY_MS + phase) * std::f64::consts::TAU;
        let slot = now_ms / SLOT_MS;
        let noise = (unit(self.seed, slot.wrapping_mul(7) + 11) - 0.5) * 12.0;
        let spike = if unit(self.seed, slot.wrapping_mul(13) + 5) < 0.002 {
            40.0 + 30.0 * unit(self.seed, slot)
        } else {
            0.0
        };
        (base + amplitude * day.sin() + noise + spike).clamp(0.0, 100.0)
    }

    /// Every series' value at `now_ms`, in [`SimSeries::keys`] order.
    pub fn values(&self, now_ms: u64, forced_cpu: Option<f64>) -> Vec<f64> {
        let slot = now_ms / SLOT_MS;
        let jitter = |salt: u64| unit(self.seed, slot.wrapping_mul(31).wrapping_add(salt));
        let cpu = self.cpu(now_ms, forced_cpu);
        let mut out = Vec::with_capacity(self.keys.len());
        out.push(cpu);
        for core in 0..self.cpus as u64 {
            out.push((cpu + (jitter(100 + core) - 0.5) * 20.0).clamp(0.0, 100.0));
        }
        let busy = cpu / 100.0 * self.cpus as f64;
        out.push(busy * (0.8 + 0.4 * jitter(1)));
        out.push(busy * (0.9 + 0.2 * jitter(2)));
        out.push(busy * (0.95 + 0.1 * jitter(3)));
        let memory = self.memory_bytes as f64;
        let used = memory * (0.25 + 0.3 * unit(self.seed, 4) + 0.2 * cpu / 100.0);
        out.push(used.min(memory));
        out.push((memory - used).max(0.0));
        out.push(memory * 0.01 * unit(self.seed, 5));
        out.push(now_ms.saturating_sub(self.boot_ms) as f64 / 1000.0);
        for (i, _) in self.mounts.iter().enumerate() {
            let base = 20.0 + 50.0 * unit(self.seed, 40 + i as u64);
            let growth = now_ms.saturating_sub(self.boot_ms) as f64 / DAY_MS * 0.5;
            out.push((base + growth).min(99.0));
        }
        let io = 2e6 + 5e7 * cpu / 100.0;
        out.push(io * (0.5 + jitter(6)));
        out.push(io * 0.6 * (0.5 + jitter(7)));
        for (i, _) in self.ifaces.iter().enumerate() {
            let net = 1e5 + 1e8 * cpu / 100.0 / (i + 1) as f64;
            out.push(net * (0.5 + jitter(60 + i as u64)));
            out.push(net * 0.8 * (0.5 + jitter(80 + i as u64)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> SimSeries {
        SimSeries::new(name, 4, 16 << 30, 0, &["/", "/data"], &["eth0"])
    }

    #[test]
    fn series_are_deterministic_per_host_and_differ_between_hosts() {
        let (a, b) = (host("sim-0001"), host("sim-0002"));
        let t = 1_700_000_000_000;
        assert_eq!(a.values(t, None), host("sim-0001").values(t, None));
        assert_ne!(a.values(t, None), b.values(t, None));
        assert_eq!(a.keys().len(), a.values(t, None).len());
        assert_eq!(a.keys().len(), 1 + 4 + 7 + 2 + 2 + 2);
    }

    #[test]
    fn values_stay_in_range_over_a_day_with_a_cycle_and_spikes() {
        let s = host("sim-0042");
        let mut cpus = Vec::new();
        for slot in 0..(86_400 / 5) {
            let t = 1_700_000_000_000 + slot * 5000;
            let v = s.values(t, None);
            assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0), "{v:?}");
            assert!(v[0] <= 100.0);
            cpus.push(v[0]);
        }
        let (min, max) = cpus
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        assert!(max - min > 10.0, "a daily cycle: {min}..{max}");
        // Spikes: a few intervals a day jump well above their neighbours.
        let spikes = cpus
            .windows(3)
            .filter(|w| w[1] > w[0] + 30.0 && w[1] > w[2] + 30.0)
            .count();
        assert!((1..100).contains(&spikes), "spikes in a day: {spikes}");
    }

    #[test]
    fn forced_load_overrides_the_cpu() {
        let s = host("sim-0007");
        assert_eq!(s.values(5000, Some(95.0))[0], 95.0);
        assert_eq!(s.cpu(5000, Some(150.0)), 100.0);
    }
}
