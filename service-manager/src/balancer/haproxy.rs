//! The `haproxy` driver: glory owns an HAProxy process per balancer (a configuration
//! with one frontend, one backend and a runtime API socket, in the data directory)
//! and changes its servers live through the runtime API, with no reload:
//! `add server` + `enable server` for a new instance, `set weight`, and for a removed
//! one `set server ... state drain`, waiting until it has no session, then
//! `state maint` and `del server`. What to do is decided by [`plan`] (pure) from
//! `show servers state`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Backend;
use crate::spec::Algorithm;

/// The backend's name in the configuration.
pub const BACKEND: &str = "glory";

/// A server as `show servers state` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub name: String,
    pub addr: String,
    pub port: u16,
    /// 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u32,
    /// Bit flags: 0x01 forced maintenance, 0x08 forced drain (others: inherited).
    pub admin_state: u32,
    pub weight: u32,
}

impl ServerState {
    pub fn in_maintenance(&self) -> bool {
        self.admin_state & 0x01 != 0
    }
    pub fn draining(&self) -> bool {
        self.admin_state & 0x08 != 0
    }
}

/// One runtime API step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Add(Backend),
    Weight {
        name: String,
        weight: u32,
    },
    /// Stop sending new connections; the existing ones finish.
    Drain {
        name: String,
    },
    /// Drained and idle: take it out.
    Remove {
        name: String,
    },
}

/// `show servers state` output for `backend`: its servers. Lines that do not parse are
/// skipped (the format's first line is its version, the second a `#` header).
pub fn parse_servers_state(text: &str, backend: &str) -> Vec<ServerState> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 19 || f[1] != backend {
                return None;
            }
            Some(ServerState {
                name: f[3].to_string(),
                addr: f[4].to_string(),
                op_state: f[5].parse().ok()?,
                admin_state: f[6].parse().ok()?,
                weight: f[7].parse().ok()?,
                port: f[18].parse().ok()?,
            })
        })
        .collect()
}

/// What makes `current` equal `wanted`. Pure. A server whose address changed is
/// removed and added again (under its new name, as instance ids are unique).
pub fn plan(current: &[ServerState], wanted: &[Backend]) -> Vec<Step> {
    let mut steps = Vec::new();
    for w in wanted {
        match current.iter().find(|c| c.name == w.name) {
            None => steps.push(Step::Add(w.clone())),
            Some(c) => {
                let same_addr = c.addr == w.addr.ip().to_string() && c.port == w.addr.port();
                if !same_addr {
                    steps.push(Step::Drain {
                        name: c.name.clone(),
                    });
                    steps.push(Step::Remove {
                        name: c.name.clone(),
                    });
                    steps.push(Step::Add(w.clone()));
                } else if c.weight != w.weight {
                    steps.push(Step::Weight {
                        name: w.name.clone(),
                        weight: w.weight,
                    });
                }
            }
        }
    }
    for c in current {
        if !wanted.iter().any(|w| w.name == c.name) {
            if !c.draining() && !c.in_maintenance() {
                steps.push(Step::Drain {
                    name: c.name.clone(),
                });
            }
            steps.push(Step::Remove {
                name: c.name.clone(),
            });
        }
    }
    steps
}

/// The configuration of a balancer: `listen` in front of the (dynamic) servers.
pub fn config(listen: SocketAddr, algorithm: Algorithm, socket: &Path) -> String {
    let balance = match algorithm {
        Algorithm::Roundrobin => "roundrobin",
        Algorithm::Leastconn => "leastconn",
        // Dynamic servers need consistent hashing for source affinity.
        Algorithm::Source => "source\n    hash-type consistent",
    };
    format!(
        "# Written by glory; servers are added and removed through the runtime API.\n\
         global\n    stats socket {socket} mode 600 level admin\n    maxconn 4000\n\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
         \x20   # A connection refused by a dying instance is tried on another one.\n\
         \x20   retries 2\n    option redispatch 1\n\n\
         frontend service\n    bind {listen}\n    default_backend {BACKEND}\n\n\
         backend {BACKEND}\n    balance {balance}\n",
        socket = socket.display(),
    )
}

/// A running HAProxy owned by glory; stopped when dropped.
pub struct Haproxy {
    pub socket: PathBuf,
    pub listen: SocketAddr,
    child: Option<tokio::process::Child>,
}

pub use super::SyncReport;

impl Haproxy {
    /// Write the configuration under `dir` and start HAProxy in the foreground.
    pub async fn start(
        dir: &Path,
        listen: SocketAddr,
        algorithm: Algorithm,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let binary = ["/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("HAProxy is not installed: apt-get install haproxy (Debian's 2.6 has the runtime API this driver uses)")?;
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("haproxy.sock");
        let _ = std::fs::remove_file(&socket);
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config(listen, algorithm, &socket))?;
        let check = tokio::process::Command::new(binary)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .await?;
        if !check.status.success() {
            anyhow::bail!(
                "HAProxy refused {}: {}",
                cfg.display(),
                String::from_utf8_lossy(&check.stderr).trim()
            );
        }
        let log = std::fs::File::create(dir.join("haproxy.log"))?;
        let child = tokio::process::Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {binary}"))?;
        let h = Haproxy {
            socket,
            listen,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.command("show info").await.is_err() {
            if Instant::now() > deadline {
                anyhow::bail!(
                    "HAProxy did not open {} within 10 s: see haproxy.log",
                    h.socket.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(h)
    }

    /// One runtime API command; its answer.
    pub async fn command(&self, cmd: &str) -> std::io::Result<String> {
        let mut s = tokio::net::UnixStream::connect(&self.socket).await?;
        s.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    async fn checked(&self, cmd: &str) -> anyhow::Result<()> {
        let answer = self.command(cmd).await?;
        let a = answer.trim();
        let failed = a.contains("No such")
            || a.contains("Unknown")
            || a.contains("not found")
            || a.contains("Require")
            || a.contains("ERROR")
            || a.starts_with("Invalid")
            || a.contains("cannot");
        if failed {
            anyhow::bail!("HAProxy: `{cmd}`: {a}");
        }
        Ok(())
    }

    pub async fn servers(&self) -> anyhow::Result<Vec<ServerState>> {
        Ok(parse_servers_state(
            &self
                .command(&format!("show servers state {BACKEND}"))
                .await?,
            BACKEND,
        ))
    }

    /// Current sessions of a server (`show stat`'s `scur`).
    async fn sessions(&self, name: &str) -> anyhow::Result<u64> {
        let stat = self.command("show stat").await?;
        Ok(stat
            .lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() > 4 && f[0] == BACKEND && f[1] == name)
            .and_then(|f| f[4].parse().ok())
            .unwrap_or(0))
    }

    /// Make the servers equal `wanted`: additions first (capacity before removal),
    /// then removals, each drained until idle or `drain_timeout`.
    pub async fn sync(
        &self,
        wanted: &[Backend],
        drain_timeout: Duration,
    ) -> anyhow::Result<SyncReport> {
        let steps = plan(&self.servers().await?, wanted);
        let mut report = SyncReport::default();
        let (removals, others): (Vec<Step>, Vec<Step>) = steps
            .into_iter()
            .partition(|s| matches!(s, Step::Drain { .. } | Step::Remove { .. }));
        for step in others {
            match step {
                Step::Add(b) => {
                    self.checked(&format!(
                        "add server {BACKEND}/{} {} weight {}",
                        b.name, b.addr, b.weight
                    ))
                    .await?;
                    self.checked(&format!("enable server {BACKEND}/{}", b.name))
                        .await?;
                    report.added += 1;
                }
                Step::Weight { name, weight } => {
                    self.checked(&format!("set weight {BACKEND}/{name} {weight}"))
                        .await?;
                    report.reweighted += 1;
                }
                _ => {}
            }
        }
        for step in &removals {
            if let Step::Drain { name } = step {
                self.checked(&format!("set server {BACKEND}/{name} state drain"))
                    .await?;
            }
        }
        for step in removals {
            if let Step::Remove { name } = step {
                let deadline = Instant::now() + drain_timeout;
                loop {
                    if self.sessions(&name).await? == 0 {
                        break;
                    }
                    if Instant::now() > deadline {
                        report.cut += 1;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                self.checked(&format!("set server {BACKEND}/{name} state maint"))
                    .await?;
                if report.cut > 0 {
                    self.checked(&format!("shutdown sessions server {BACKEND}/{name}"))
                        .await?;
                }
                self.checked(&format!("del server {BACKEND}/{name}"))
                    .await?;
                report.removed += 1;
            }
        }
        Ok(report)
    }

    /// Stop HAProxy.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
3 glory 1 i-1 127.0.0.1 2 0 1 1 12 1 0 0 0 0 0 0 - 9001 - 0 0 - - 0\n\
3 glory 2 i-2 127.0.0.1 2 8 1 1 3 1 0 0 0 0 0 0 - 9002 - 0 0 - - 0\n\
4 other 1 x 10.0.0.1 2 0 1 1 3 1 0 0 0 0 0 0 - 80 - 0 0 - - 0\n";

    fn backend(name: &str, port: u16, weight: u32) -> Backend {
        Backend {
            name: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
        }
    }

    #[test]
    fn servers_state_is_parsed_for_our_backend_only() {
        let s = parse_servers_state(STATE, BACKEND);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "i-1");
        assert_eq!(s[0].port, 9001);
        assert!(!s[0].draining());
        assert!(s[1].draining());
        assert!(parse_servers_state("garbage\n1 2 3\n", BACKEND).is_empty());
    }

    #[test]
    fn the_plan_adds_reweights_and_drains_before_removing() {
        let current = parse_servers_state(STATE, BACKEND);
        let steps = plan(
            &current,
            &[backend("i-1", 9001, 5), backend("i-3", 9003, 1)],
        );
        assert_eq!(
            steps,
            vec![
                Step::Weight {
                    name: "i-1".into(),
                    weight: 5
                },
                Step::Add(backend("i-3", 9003, 1)),
                // i-2 is draining already: only its removal is left.
                Step::Remove { name: "i-2".into() },
            ]
        );
        let steps = plan(&current, &[backend("i-2", 9002, 1)]);
        assert_eq!(
            steps,
            vec![
                Step::Drain { name: "i-1".into() },
                Step::Remove { name: "i-1".into() },
            ]
        );
        // Nothing to do when they agree.
        assert!(plan(&current[..1], &[backend("i-1", 9001, 1)]).is_empty());
        // A moved instance is drained, removed and added again.
        let moved = plan(&current[..1], &[backend("i-1", 9100, 1)]);
        assert_eq!(moved.len(), 3);
    }

    #[test]
    fn the_configuration_names_the_socket_and_the_algorithm() {
        let c = config(
            "127.0.0.1:8080".parse().unwrap(),
            Algorithm::Source,
            Path::new("/run/g/haproxy.sock"),
        );
        assert!(c.contains("stats socket /run/g/haproxy.sock mode 600 level admin"));
        assert!(c.contains("bind 127.0.0.1:8080"));
        assert!(c.contains("balance source\n    hash-type consistent"));
    }
}
