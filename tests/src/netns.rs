//! Network namespaces of a test's own: a hub namespace with a bridge, joined to this
//! host by a veth pair, and peer namespaces on the bridge, each link optionally capped
//! by `tc` in both directions. Removed when dropped.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::Context;

/// Run a command to completion; its stderr in the error.
pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The hub, this host's link to it and the peers. Names carry this process's id, so
/// runs side by side do not meet.
pub struct Net {
    hub: String,
    host_if: String,
    hub_end: String,
    /// This host's address on the hub's bridge (servers listen here).
    pub host_ip: Ipv4Addr,
    /// Each peer's namespace and address.
    pub peers: Vec<(String, Ipv4Addr)>,
    /// Each peer's link: its end on the bridge (in the hub) and its end inside.
    links: Vec<(String, String)>,
}

impl Net {
    /// `peers` namespaces (at most 200) on a bridge with this host.
    pub fn create(peers: usize) -> anyhow::Result<Net> {
        anyhow::ensure!(peers <= 200, "at most 200 peers (got {peers})");
        let id = std::process::id() % 100_000;
        // A /24 no other interface here has (another run's net, say).
        let taken = |subnet: u8| {
            Command::new("ip")
                .args(["-4", "-o", "addr", "show", "to"])
                .arg(format!("10.216.{subnet}.0/24"))
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false)
        };
        let subnet = (0..100u32)
            .map(|k| 100 + ((id + k) % 100) as u8)
            .find(|s| !taken(*s))
            .context("no free 10.216.x.0/24 for the namespaces' bridge")?;
        let hub = format!("glp2p-{id}");
        let mut net = Net {
            hub: hub.clone(),
            host_if: format!("gph{id}"),
            hub_end: format!("gpb{id}"),
            host_ip: Ipv4Addr::new(10, 216, subnet, 1),
            peers: Vec::new(),
            links: Vec::new(),
        };
        run(&["ip", "netns", "add", &hub])?;
        net.in_hub(&["ip", "link", "add", "br0", "type", "bridge"])?;
        net.in_hub(&["ip", "link", "set", "br0", "up"])?;
        run(&[
            "ip",
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &net.hub_end,
            "netns",
            &hub,
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.host_ip),
            "dev",
            &net.host_if,
        ])?;
        run(&["ip", "link", "set", &net.host_if, "up"])?;
        net.in_hub(&["ip", "link", "set", &net.hub_end, "master", "br0"])?;
        net.in_hub(&["ip", "link", "set", &net.hub_end, "up"])?;
        for i in 0..peers {
            let name = format!("glp2p-{id}-{i}");
            let ip = Ipv4Addr::new(10, 216, subnet, 10 + i as u8);
            run(&["ip", "netns", "add", &name])?;
            net.peers.push((name.clone(), ip));
            let (a, b) = (format!("gpa{id}x{i}"), format!("gpp{id}x{i}"));
            net.in_hub(&[
                "ip", "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &name,
            ])?;
            net.in_hub(&["ip", "link", "set", &a, "master", "br0"])?;
            net.in_hub(&["ip", "link", "set", &a, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["ip", "netns", "exec", name.as_str()];
                all.extend_from_slice(args);
                run(&all)
            };
            inside(&["ip", "link", "set", "lo", "up"])?;
            inside(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &b])?;
            inside(&["ip", "link", "set", &b, "up"])?;
            net.links.push((a, b));
        }
        Ok(net)
    }

    fn in_hub(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["ip", "netns", "exec", self.hub.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Cap every link, this host's included, at `mbit` megabits per second each way
    /// (a token bucket on each end's egress), as a server's network port would be.
    pub fn cap(&self, mbit: u32) -> anyhow::Result<()> {
        let rate = format!("{mbit}mbit");
        let tbf = [
            "root", "tbf", "rate", &rate, "burst", "256kb", "latency", "50ms",
        ];
        let qdisc = |prefix: &[&str], dev: &str| {
            let mut all: Vec<&str> = prefix.to_vec();
            all.extend_from_slice(&["tc", "qdisc", "replace", "dev", dev]);
            all.extend_from_slice(&tbf);
            run(&all)
        };
        let hub = ["ip", "netns", "exec", self.hub.as_str()];
        qdisc(&[], &self.host_if)?;
        qdisc(&hub, &self.hub_end)?;
        for ((name, _), (outside, inside)) in self.peers.iter().zip(&self.links) {
            qdisc(&hub, outside)?;
            qdisc(&["ip", "netns", "exec", name.as_str()], inside)?;
        }
        Ok(())
    }

    /// `program` run inside peer `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::ffi::OsStr) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.peers[i].0]).arg(program);
        cmd
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        for (name, _) in &self.peers {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .status();
    }
}
