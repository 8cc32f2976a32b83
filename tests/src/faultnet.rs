//! A network for fault injection: each process that matters runs in a network
//! namespace of its own, and every packet between namespaces passes through a switch in
//! this test process, which can drop, delay and partition.
//!
//! Each namespace (and this host, for the test's own clients) has one TUN device with
//! an address of a /24 of the test's own; the switch reads IPv4 packets from each
//! device and writes them to the device of their destination address. Per node it
//! applies an [`Impairment`] (delay and loss, on every packet the node sends and on
//! every packet it receives, as `tc netem` on both ends of its link would), and per
//! ordered pair of nodes a cut (a one-way partition; both directions make a full one).
//!
//! Why a switch in user space rather than veth pairs and `tc netem`: this machine's
//! kernel is built without netem (and without the prio qdisc and the gact action that
//! would drop by filter), so loss and delay cannot be had from `tc` here. The switch
//! gives the same effects, deterministically seeded, and partitions in either
//! direction, with nothing to install. Packets of a delayed link keep their order.
//!
//! Dropping the net stops the switch, closes the devices (the kernel removes them) and
//! deletes the namespaces.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::netns::run;

/// What a node's link does to each packet it carries, each way.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Added to every packet the node sends and to every packet it receives (a round
    /// trip to an unimpaired node takes twice this).
    pub delay: Duration,
    /// Probability of losing a packet, each way (0.05: 5%).
    pub loss: f64,
}

/// How many packets the switch carried and dropped (by rule), since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchStats {
    pub delivered: u64,
    pub lost: u64,
    pub cut: u64,
}

struct Rules {
    impairments: Vec<Impairment>,
    /// (from, to): packets from node `from` to node `to` are dropped.
    cuts: HashSet<(usize, usize)>,
    rng: crate::rng::Rng,
}

impl Rules {
    /// A uniform number in [0, 1) (xorshift64*; seeded, so a run can be replayed).
    fn uniform(&mut self) -> f64 {
        self.rng.uniform()
    }
}

/// What to do with one packet.
enum Fate {
    Cut,
    Lost,
    Deliver(Duration),
}

struct Pending {
    due: Instant,
    seq: u64,
    to: usize,
    packet: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

struct Shared {
    stop: AtomicBool,
    devices: Vec<tun::Device>,
    rules: Mutex<Rules>,
    delayed: Mutex<(BinaryHeap<Reverse<Pending>>, u64)>,
    wake: Condvar,
    delivered: AtomicU64,
    lost: AtomicU64,
    cut: AtomicU64,
}

impl Shared {
    fn fate(&self, from: usize, to: usize) -> Fate {
        let mut rules = self.rules.lock().expect("switch rules");
        if rules.cuts.contains(&(from, to)) {
            return Fate::Cut;
        }
        let (a, b) = (rules.impairments[from], rules.impairments[to]);
        for loss in [a.loss, b.loss] {
            if loss > 0.0 && rules.uniform() < loss {
                return Fate::Lost;
            }
        }
        Fate::Deliver(a.delay + b.delay)
    }

    fn deliver(&self, to: usize, packet: &[u8]) {
        // A full device queue drops, as a full link would.
        let _ = self.devices[to].send(packet);
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// The network: this host (node 0, named `host`) and the named nodes, each in its own
/// namespace.
pub struct FaultNet {
    names: Vec<String>,
    namespaces: Vec<Option<String>>,
    ips: Vec<Ipv4Addr>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// Nets made by this process so far: names carry the count, so that tests running side
/// by side in one process do not meet.
static NETS: AtomicU64 = AtomicU64::new(0);
/// Held while a net is made: its subnet counts as free until its host address is set.
static CREATING: Mutex<()> = Mutex::new(());

/// The third octet of a 10.218.x.0/24 no interface here has yet.
fn free_subnet(seq: u64) -> anyhow::Result<u8> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()?;
    let taken = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = u64::from(std::process::id()) + seq * 37;
    (0..200u64)
        .map(|i| (20 + (start + i) % 200) as u8)
        .find(|x| !taken.contains(&format!("10.218.{x}.")))
        .context("no free 10.218.x.0/24 for a fault-injection net")
}

impl FaultNet {
    /// Namespaces for `nodes` (at most 100, names unique and not `host`), each with its
    /// own address, all reachable from each other and from this host, unimpaired.
    pub fn create(nodes: &[&str]) -> anyhow::Result<FaultNet> {
        anyhow::ensure!(nodes.len() <= 100, "at most 100 nodes");
        let _creating = CREATING.lock().unwrap_or_else(|p| p.into_inner());
        let seq = NETS.fetch_add(1, Ordering::Relaxed);
        // At most 13 characters in a device name (glf, 7 digits, n, 2 digits).
        let id = format!("{}{seq}", std::process::id() % 100_000);
        let subnet = free_subnet(seq)?;
        let mut names = vec!["host".to_string()];
        for n in nodes {
            anyhow::ensure!(!names.iter().any(|m| m == n), "node {n} named twice");
            names.push(n.to_string());
        }
        let mut net = FaultNet {
            namespaces: Vec::new(),
            ips: Vec::new(),
            shared: Arc::new(Shared {
                stop: AtomicBool::new(false),
                devices: Vec::new(),
                rules: Mutex::new(Rules {
                    impairments: vec![Impairment::default(); names.len()],
                    cuts: HashSet::new(),
                    rng: crate::rng::Rng(
                        0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()) ^ seq,
                    ),
                }),
                delayed: Mutex::new((BinaryHeap::new(), 0)),
                wake: Condvar::new(),
                delivered: AtomicU64::new(0),
                lost: AtomicU64::new(0),
                cut: AtomicU64::new(0),
            }),
            names,
            threads: Vec::new(),
        };
        let mut devices = Vec::new();
        for (i, name) in net.names.clone().iter().enumerate() {
            let ip = Ipv4Addr::new(10, 218, subnet, if i == 0 { 1 } else { 10 + i as u8 });
            let dev = format!("glf{id}n{i}");
            let mut config = tun::Configuration::default();
            config.tun_name(&dev).mtu(1500);
            let device = tun::Device::new(&config)
                .with_context(|| format!("create TUN device {dev} (needs root)"))?;
            let ns = (i > 0).then(|| format!("glf-{id}-{name}"));
            // Recorded before it exists, so that a failure below still removes it.
            net.namespaces.push(ns.clone());
            net.ips.push(ip);
            let mut prefix: Vec<&str> = Vec::new();
            if let Some(ns) = &ns {
                run(&["ip", "netns", "add", ns])?;
                run(&["ip", "link", "set", &dev, "netns", ns])?;
                prefix = vec!["ip", "netns", "exec", ns];
            }
            let inside = |args: &[&str]| {
                let mut all = prefix.clone();
                all.extend_from_slice(args);
                run(&all)
            };
            if ns.is_some() {
                inside(&["ip", "link", "set", "lo", "up"])?;
            }
            inside(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &dev])?;
            inside(&["ip", "link", "set", &dev, "up"])?;
            devices.push(device);
        }
        Arc::get_mut(&mut net.shared)
            .expect("no thread runs yet")
            .devices = devices;
        for from in 0..net.names.len() {
            let shared = net.shared.clone();
            let subnet_of = [10, 218, subnet];
            net.threads.push(std::thread::spawn(move || {
                forward(&shared, from, subnet_of)
            }));
        }
        let shared = net.shared.clone();
        net.threads
            .push(std::thread::spawn(move || release_delayed(&shared)));
        Ok(net)
    }

    fn index(&self, node: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == node)
            .unwrap_or_else(|| panic!("no node {node} in this net (nodes: {:?})", self.names))
    }

    /// A node's address (`host` is this host's).
    pub fn ip(&self, node: &str) -> Ipv4Addr {
        self.ips[self.index(node)]
    }

    /// A node's namespace.
    pub fn namespace(&self, node: &str) -> &str {
        self.namespaces[self.index(node)]
            .as_deref()
            .expect("the host has no namespace of its own")
    }

    /// `program` to be run inside `node`'s namespace (`ip netns exec` execs it, so the
    /// child's pid is the program's).
    pub fn command(&self, node: &str, program: &std::ffi::OsStr) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.namespace(node)])
            .arg(program);
        cmd
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.shared.rules.lock().expect("switch rules")
    }

    /// Delay and loss on `node`'s link from now on (both ways).
    pub fn impair(&self, node: &str, impairment: Impairment) {
        let i = self.index(node);
        self.rules().impairments[i] = impairment;
    }

    /// Nothing from `from` reaches `to` (what `to` sends still reaches `from`).
    pub fn cut_one_way(&self, from: &str, to: &str) {
        let (a, b) = (self.index(from), self.index(to));
        self.rules().cuts.insert((a, b));
    }

    /// Nothing passes between `a` and `b`, either way.
    pub fn partition(&self, a: &str, b: &str) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Every cut and impairment removed.
    pub fn heal(&self) {
        let mut rules = self.rules();
        rules.cuts.clear();
        rules.impairments.fill(Impairment::default());
    }

    pub fn stats(&self) -> SwitchStats {
        SwitchStats {
            delivered: self.shared.delivered.load(Ordering::Relaxed),
            lost: self.shared.lost.load(Ordering::Relaxed),
            cut: self.shared.cut.load(Ordering::Relaxed),
        }
    }
}

/// Read node `from`'s packets and send each on its way.
fn forward(shared: &Shared, from: usize, subnet: [u8; 3]) {
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Relaxed) {
        let n = match shared.devices[from].recv_timeout(&mut buf, Duration::from_millis(200)) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let packet = &buf[..n];
        // IPv4 only (the kernel's IPv6 chatter is not ours); to this net's nodes only.
        if n < 20 || packet[0] >> 4 != 4 || packet[16..19] != subnet {
            continue;
        }
        let last = packet[19] as usize;
        let to = match last {
            1 => 0,
            x if x >= 11 && x - 10 < shared.devices.len() => x - 10,
            _ => continue,
        };
        match shared.fate(from, to) {
            Fate::Cut => {
                shared.cut.fetch_add(1, Ordering::Relaxed);
            }
            Fate::Lost => {
                shared.lost.fetch_add(1, Ordering::Relaxed);
            }
            Fate::Deliver(delay) if delay.is_zero() => shared.deliver(to, packet),
            Fate::Deliver(delay) => {
                let mut queue = shared.delayed.lock().expect("delayed packets");
                queue.1 += 1;
                let seq = queue.1;
                queue.0.push(Reverse(Pending {
                    due: Instant::now() + delay,
                    seq,
                    to,
                    packet: packet.to_vec(),
                }));
                shared.wake.notify_one();
            }
        }
    }
}

/// Send delayed packets when they are due.
fn release_delayed(shared: &Shared) {
    let mut queue = shared.delayed.lock().expect("delayed packets");
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = match queue.0.peek() {
            Some(Reverse(p)) if p.due <= now => {
                let Reverse(p) = queue.0.pop().expect("peeked");
                shared.deliver(p.to, &p.packet);
                continue;
            }
            Some(Reverse(p)) => p.due - now,
            None => Duration::from_millis(200),
        };
        queue = shared
            .wake
            .wait_timeout(queue, wait)
            .expect("delayed packets")
            .0;
    }
}

impl Drop for FaultNet {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        for ns in self.namespaces.iter().flatten() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        // The devices go with the last reference to them (the threads are joined).
    }
}
