//! The `keepalived` driver: keepalived's LVS configuration for a service (one
//! `virtual_server` on the balancer's address, one `real_server` per healthy instance;
//! glory checks health itself, so no checker), validated by the real `keepalived -t`
//! before it replaces the running file, then a reload (SIGHUP to the pid in keepalived's
//! pid file). A configuration keepalived refuses never reaches the running one.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::Backend;
use crate::spec::Algorithm;

/// keepalived's LVS scheduler for an algorithm.
pub fn scheduler(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Roundrobin => "wrr",
        Algorithm::Leastconn => "wlc",
        Algorithm::Source => "sh",
    }
}

/// The configuration for `service` on `listen` in front of `backends`. Pure.
pub fn render(
    service: &str,
    listen: SocketAddr,
    algorithm: Algorithm,
    backends: &[Backend],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by glory for service {service}; replaced whole on every change."
    );
    let _ = writeln!(out, "global_defs {{\n    router_id glory-{service}\n}}");
    let _ = writeln!(
        out,
        "virtual_server {} {} {{\n    delay_loop 5\n    lb_algo {}\n    lb_kind NAT\n    protocol TCP",
        listen.ip(),
        listen.port(),
        scheduler(algorithm)
    );
    let mut sorted: Vec<&Backend> = backends.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for b in sorted {
        let _ = writeln!(
            out,
            "    # instance {}\n    real_server {} {} {{\n        weight {}\n    }}",
            b.name.replace('\n', " "),
            b.addr.ip(),
            b.addr.port(),
            b.weight
        );
    }
    out.push_str("}\n");
    out
}

/// Where keepalived is, and where its configuration and pid file are.
#[derive(Clone, Debug)]
pub struct Keepalived {
    pub binary: PathBuf,
    pub config: PathBuf,
    pub pid_file: PathBuf,
}

/// What `apply` did.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    pub changed: bool,
    /// A running keepalived was told to reload.
    pub reloaded: bool,
}

impl Keepalived {
    pub fn new(config: PathBuf, pid_file: PathBuf) -> anyhow::Result<Self> {
        let binary = ["/usr/sbin/keepalived", "/usr/bin/keepalived"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                anyhow::anyhow!("keepalived is not installed: apt-get install keepalived")
            })?;
        Ok(Keepalived {
            binary,
            config,
            pid_file,
        })
    }

    /// Check `text` with `keepalived -t`; keepalived's complaints when it refuses it.
    pub async fn validate(&self, text: &str) -> anyhow::Result<()> {
        let candidate = self.config.with_extension("candidate");
        if let Some(dir) = candidate.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&candidate, text)?;
        let out = tokio::process::Command::new(&self.binary)
            .arg("-t")
            .arg("-f")
            .arg(&candidate)
            .output()
            .await?;
        let _ = std::fs::remove_file(&candidate);
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let said: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
            anyhow::bail!("keepalived refused the configuration: {}", said.join("; "));
        }
        Ok(())
    }

    /// Validate `text`, put it in place (atomically) and reload a running keepalived.
    pub async fn apply(&self, text: &str) -> anyhow::Result<Applied> {
        if std::fs::read_to_string(&self.config).ok().as_deref() == Some(text) {
            return Ok(Applied {
                changed: false,
                reloaded: false,
            });
        }
        self.validate(text).await?;
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.config)?;
        let reloaded = match running_pid(&self.pid_file) {
            Some(pid) => tokio::process::Command::new("kill")
                .arg("-HUP")
                .arg(pid.to_string())
                .status()
                .await
                .map(|s| s.success())
                .unwrap_or(false),
            None => false,
        };
        Ok(Applied {
            changed: true,
            reloaded,
        })
    }
}

/// The pid in `pid_file` when that process is alive.
fn running_pid(pid_file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_lists_every_backend_in_a_stable_order() {
        let backends = [
            Backend {
                name: "i-2".into(),
                addr: "10.0.1.6:9002".parse().unwrap(),
                weight: 2,
            },
            Backend {
                name: "i-1".into(),
                addr: "10.0.1.5:9001".parse().unwrap(),
                weight: 1,
            },
        ];
        let c = render(
            "web",
            "10.0.0.1:8080".parse().unwrap(),
            Algorithm::Source,
            &backends,
        );
        assert!(c.contains("virtual_server 10.0.0.1 8080 {"));
        assert!(c.contains("lb_algo sh"));
        let first = c.find("real_server 10.0.1.5 9001").unwrap();
        let second = c.find("real_server 10.0.1.6 9002").unwrap();
        assert!(first < second);
        assert!(c.contains("weight 2"));
        let mut reversed = backends.clone();
        reversed.reverse();
        assert_eq!(
            c,
            render(
                "web",
                "10.0.0.1:8080".parse().unwrap(),
                Algorithm::Source,
                &reversed
            )
        );
    }
}
