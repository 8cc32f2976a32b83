//! Node agent configuration: a TOML file, every field optional with a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use glory_protocol::CaTrust;
use serde::{Deserialize, Serialize};

/// The agent's TOML configuration (`glory-node-agent --config agent.toml`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// QUIC address of the cluster master, for enrollment.
    pub cluster_master: SocketAddr,
    /// More cluster masters (standbys), tried in order when `cluster_master` does not
    /// answer or does not lead.
    pub cluster_masters: Vec<SocketAddr>,
    /// Bootstrap token (`<id>.<secret>`). Also `--token` or `glory.token=` on the kernel
    /// command line. Only needed until the agent has enrolled.
    pub token: Option<String>,
    /// PEM file of the cluster CA, to verify the cluster master at enrollment.
    pub ca_cert: Option<PathBuf>,
    /// Hex SHA-256 of the cluster CA certificate (`glory ca-hash`), as an alternative to
    /// `ca_cert`. With neither, the agent trusts the CA it sees first and warns.
    pub ca_cert_hash: Option<String>,
    /// Where the agent keeps its identity (node id, certificate, key).
    pub state_dir: PathBuf,
    /// Enroll as `name:<node_name>` instead of by the hardware (SMBIOS UUID, boot NIC's
    /// MAC, machine id). For several agents on one host (labs, tests); also
    /// `--node-name`. Each name must be unique in the cluster.
    pub node_name: Option<String>,
    /// Local UDP address for QUIC.
    pub bind: SocketAddr,
    /// Heartbeat period, milliseconds.
    pub heartbeat_interval_ms: u64,
    /// How often node metrics are sampled and sent to the group master, milliseconds
    /// (0: never).
    pub metrics_interval_ms: u64,
    /// How far back the agent keeps the samples it sent, seconds (0: not at all): a
    /// group master that lacks them (a standby that took over, a master restarted
    /// without its store) gets them back, so its history has no gap.
    pub metrics_buffer_seconds: u64,
    /// Largest wait between enrollment or connection retries, milliseconds.
    pub max_backoff_ms: u64,
    /// Timeout of one connection attempt or request, milliseconds.
    pub request_timeout_ms: u64,
    /// Give up on a group master that has not answered for this long and try the next
    /// one (its standby), milliseconds. More than two heartbeat intervals.
    pub idle_timeout_ms: u64,
    /// Where first-boot configuration files and software packages go: `/` on a real
    /// server. Unset, the agent applies no configuration and installs nothing (and
    /// reports so): what simulated and test agents on a shared host need.
    pub setup_root: Option<PathBuf>,
    /// How often applied configuration files are checked for drift (and failed
    /// package installs retried), milliseconds.
    pub setup_check_ms: u64,
    /// Packages the cluster master offers peer-to-peer (above its size threshold) are
    /// fetched with the agent's BitTorrent peer from the group's nodes first, then
    /// seeded to the others this long, seconds. 0: always over HTTP through the
    /// group's proxy.
    pub p2p_seed_seconds: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            cluster_master: SocketAddr::from(([127, 0, 0, 1], 7401)),
            cluster_masters: Vec::new(),
            token: None,
            ca_cert: None,
            ca_cert_hash: None,
            state_dir: PathBuf::from("/var/lib/glory-agent"),
            node_name: None,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            heartbeat_interval_ms: 1000,
            metrics_interval_ms: 5000,
            metrics_buffer_seconds: 3600,
            max_backoff_ms: 10_000,
            request_timeout_ms: 5_000,
            idle_timeout_ms: 3_000,
            setup_root: None,
            setup_check_ms: 30_000,
            p2p_seed_seconds: 120,
        }
    }
}

/// Validated settings the agent runs with.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// Cluster masters, in the order to try them.
    pub cluster_masters: Vec<SocketAddr>,
    pub token: Option<String>,
    pub ca_trust: CaTrust,
    pub heartbeat_interval: Duration,
    /// None: metrics are not sent.
    pub metrics_interval: Option<Duration>,
    pub metrics_buffer: Duration,
    pub max_backoff: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub setup_root: Option<PathBuf>,
    /// Where the applied configuration is kept (`state_dir/setup.json`).
    pub setup_state: PathBuf,
    pub setup_check: Duration,
    /// None: never peer-to-peer.
    pub p2p_seed: Option<Duration>,
}

impl AgentConfig {
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).context("parse agent config")
    }

    pub fn validate(&self) -> anyhow::Result<AgentSettings> {
        if self.heartbeat_interval_ms < 50 {
            bail!(
                "heartbeat_interval_ms must be at least 50 (got {})",
                self.heartbeat_interval_ms
            );
        }
        if self.metrics_interval_ms != 0 && self.metrics_interval_ms < 500 {
            bail!(
                "metrics_interval_ms must be 0 (off) or at least 500 (got {})",
                self.metrics_interval_ms
            );
        }
        if self.metrics_buffer_seconds > 86_400 {
            bail!(
                "metrics_buffer_seconds must be at most 86400 (got {})",
                self.metrics_buffer_seconds
            );
        }
        if self.idle_timeout_ms <= self.heartbeat_interval_ms * 2 {
            bail!("idle_timeout_ms must exceed two heartbeat intervals");
        }
        if let Some(name) = &self.node_name {
            if name.trim().is_empty()
                || name.len() > 200
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                bail!("node_name must be 1-200 characters without spaces (got {name:?})");
            }
        }
        let ca_trust = match (&self.ca_cert, &self.ca_cert_hash) {
            (Some(path), _) => CaTrust::Pem(
                std::fs::read_to_string(path)
                    .with_context(|| format!("read ca_cert {}", path.display()))?,
            ),
            (None, Some(hash)) => {
                if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                    bail!("ca_cert_hash must be 64 hex digits (SHA-256)");
                }
                CaTrust::Sha256(hash.clone())
            }
            (None, None) => CaTrust::FirstUse,
        };
        Ok(AgentSettings {
            cluster_masters: {
                let mut out = vec![self.cluster_master];
                out.extend(
                    self.cluster_masters
                        .iter()
                        .filter(|a| **a != self.cluster_master),
                );
                out
            },
            token: self.token.clone(),
            ca_trust,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            metrics_interval: (self.metrics_interval_ms > 0)
                .then(|| Duration::from_millis(self.metrics_interval_ms)),
            metrics_buffer: Duration::from_secs(self.metrics_buffer_seconds),
            max_backoff: Duration::from_millis(self.max_backoff_ms.max(100)),
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(100)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            setup_root: self.setup_root.clone(),
            setup_state: self.state_dir.join("setup.json"),
            setup_check: Duration::from_millis(self.setup_check_ms.max(100)),
            p2p_seed: (self.p2p_seed_seconds > 0)
                .then(|| Duration::from_secs(self.p2p_seed_seconds)),
        })
    }
}

/// The `glory.token=` argument of a kernel command line (PXE-booted servers get their
/// bootstrap token this way).
pub fn token_from_cmdline(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("glory.token="))
        .map(str::to_string)
}

/// What a PXE-booted server's kernel command line tells its agent: `glory.token=`,
/// `glory.cm=` (cluster master QUIC addresses, comma-separated) and `glory.ca=` (the
/// cluster CA's SHA-256). Fills only what the configuration left unset.
pub fn apply_cmdline(config: &mut AgentConfig, cmdline: &str) -> anyhow::Result<()> {
    let arg = |name: &str| {
        cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix(name))
            .map(str::to_string)
    };
    if config.token.is_none() {
        config.token = token_from_cmdline(cmdline);
    }
    if let Some(list) = arg("glory.cm=") {
        let addrs = list
            .split(',')
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse::<SocketAddr>()
                    .with_context(|| format!("glory.cm=: {a:?} is not an address:port"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some((first, rest)) = addrs.split_first() {
            if config.cluster_master == AgentConfig::default().cluster_master
                && config.cluster_masters.is_empty()
            {
                config.cluster_master = *first;
                config.cluster_masters = rest.to_vec();
            }
        }
    }
    if config.ca_cert.is_none() && config.ca_cert_hash.is_none() {
        config.ca_cert_hash = arg("glory.ca=");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_cmdline_gives_token_masters_and_ca() {
        let mut config = AgentConfig::default();
        let ca = "ab".repeat(32);
        let line = format!(
            "console=ttyS0 glory.cm=10.0.0.1:7401,10.0.0.2:7401 glory.ca={ca} glory.token=a.b"
        );
        apply_cmdline(&mut config, &line).unwrap();
        assert_eq!(config.cluster_master, "10.0.0.1:7401".parse().unwrap());
        assert_eq!(
            config.cluster_masters,
            vec!["10.0.0.2:7401".parse().unwrap()]
        );
        assert_eq!(config.ca_cert_hash.as_deref(), Some(ca.as_str()));
        assert_eq!(config.token.as_deref(), Some("a.b"));
        config.validate().unwrap();
        // What the configuration says wins.
        let mut config = AgentConfig {
            cluster_master: "10.9.9.9:7401".parse().unwrap(),
            token: Some("x.y".into()),
            ..Default::default()
        };
        apply_cmdline(&mut config, &line).unwrap();
        assert_eq!(config.cluster_master, "10.9.9.9:7401".parse().unwrap());
        assert_eq!(config.token.as_deref(), Some("x.y"));
        let mut config = AgentConfig::default();
        assert!(apply_cmdline(&mut config, "glory.cm=nonsense").is_err());
    }

    #[test]
    fn kernel_cmdline_token() {
        let line = "BOOT_IMAGE=/vmlinuz root=/dev/sda1 glory.token=abc.def quiet";
        assert_eq!(token_from_cmdline(line).as_deref(), Some("abc.def"));
        assert_eq!(token_from_cmdline("quiet"), None);
    }

    #[test]
    fn defaults_validate_and_unknown_fields_are_refused() {
        AgentConfig::default().validate().unwrap();
        let err = AgentConfig::from_toml("heartbeat_intervall_ms = 5").unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        let bad = AgentConfig {
            ca_cert_hash: Some("xyz".into()),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}

#[cfg(test)]
mod example {
    #[test]
    fn documented_example_parses_and_validates() {
        let text = include_str!("../../docs/examples/node-agent.toml");
        let config = super::AgentConfig::from_toml(text).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.heartbeat_interval_ms,
            super::AgentConfig::default().heartbeat_interval_ms
        );
    }
}
