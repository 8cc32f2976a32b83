//! Group master configuration: a TOML file, every field optional with a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use glory_protocol::CaTrust;
use serde::{Deserialize, Serialize};

use crate::detector::DetectorConfig;

/// The group master's TOML configuration (`glory-group-master --config gm.toml`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupMasterConfig {
    /// The group this master leads, e.g. `g00`.
    pub group: String,
    /// UDP address agents connect to (QUIC).
    pub listen: SocketAddr,
    /// Address agents are told to dial; defaults to `listen` (which must then not be
    /// the unspecified address).
    pub advertise: Option<SocketAddr>,
    /// QUIC address of the cluster master.
    pub cluster_master: SocketAddr,
    /// More cluster masters (standbys) to try, in order, when `cluster_master` does not
    /// lead; a standby's refusal names the leader, which is tried next.
    pub cluster_masters: Vec<SocketAddr>,
    /// Bootstrap token to enroll this group master (only needed once).
    pub token: Option<String>,
    /// PEM file of the cluster CA, to verify the cluster master at enrollment.
    pub ca_cert: Option<PathBuf>,
    /// Hex SHA-256 of the cluster CA certificate, as an alternative to `ca_cert`.
    pub ca_cert_hash: Option<String>,
    /// Where the group master keeps its certificate and key.
    pub data_dir: PathBuf,
    /// The statistics store (SQLite). Unset: `<data_dir>/stats.db` for the
    /// `glory-group-master` binary, memory for group masters embedded in other
    /// processes.
    pub stats_db: Option<PathBuf>,
    /// The agents' heartbeat period, milliseconds (must match the agents').
    pub heartbeat_interval_ms: u64,
    /// Silence after which a node is `suspect`, milliseconds (default: 2 heartbeats).
    pub suspect_after_ms: Option<u64>,
    /// Silence after which a node is `down`, milliseconds.
    pub down_after_ms: u64,
    /// After this group master starts (or takes over), how long the nodes the cluster
    /// master lists may take to reconnect before the failure detector judges them,
    /// milliseconds. At least `down_after_ms`.
    pub rejoin_grace_ms: u64,
    /// How often the failure detector looks at the clock, milliseconds.
    pub tick_interval_ms: u64,
    /// How often a report (counts, loads) goes to the cluster master, milliseconds.
    pub report_interval_ms: u64,
    /// Close an agent connection silent this long, milliseconds.
    pub agent_idle_timeout_ms: u64,
    /// Declare the cluster master link dead after this much silence, milliseconds.
    pub cluster_idle_timeout_ms: u64,
    /// Largest accepted frame, bytes.
    pub max_frame_bytes: usize,
    /// Local address of the UDP socket toward the cluster master (enrollment and the
    /// link), e.g. `10.0.0.5:0` to leave by one interface. Default: the unspecified
    /// address of the cluster master's family and a port the system picks.
    pub upstream_bind: Option<SocketAddr>,
    /// How long one enrollment attempt waits for the cluster master to answer,
    /// milliseconds; longer than the cluster master's admission queue holds a
    /// connection in an enrollment storm (16 s).
    pub enroll_timeout_ms: u64,
    /// TCP address of the group's content proxy (agents fetch software and images
    /// through it). Default: the advertised address's IP, a port the system picks.
    pub content_listen: Option<SocketAddr>,
    /// The proxy's cache. Unset: `<data_dir>/content` for the `glory-group-master`
    /// binary, a temporary directory for group masters embedded in other processes.
    pub content_cache: Option<PathBuf>,
}

impl Default for GroupMasterConfig {
    fn default() -> Self {
        GroupMasterConfig {
            group: "g00".to_string(),
            listen: SocketAddr::from(([0, 0, 0, 0], 7402)),
            advertise: None,
            cluster_master: SocketAddr::from(([127, 0, 0, 1], 7401)),
            cluster_masters: Vec::new(),
            token: None,
            ca_cert: None,
            ca_cert_hash: None,
            data_dir: PathBuf::from("/var/lib/glory-group-master"),
            stats_db: None,
            heartbeat_interval_ms: 1000,
            suspect_after_ms: None,
            down_after_ms: 3000,
            rejoin_grace_ms: 8000,
            tick_interval_ms: 100,
            report_interval_ms: 1000,
            agent_idle_timeout_ms: 10_000,
            cluster_idle_timeout_ms: 3000,
            max_frame_bytes: glory_protocol::DEFAULT_MAX_FRAME,
            upstream_bind: None,
            enroll_timeout_ms: glory_protocol::enroll::ENROLL_CONNECT_PATIENCE.as_millis() as u64,
            content_listen: None,
            content_cache: None,
        }
    }
}

/// Validated settings the group master runs with.
#[derive(Clone, Debug)]
pub struct GroupMasterSettings {
    pub group: String,
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    /// Cluster masters to try, in order.
    pub cluster_masters: Vec<SocketAddr>,
    pub detector: DetectorConfig,
    pub tick_interval: Duration,
    pub report_interval: Duration,
    pub agent_idle_timeout: Duration,
    pub cluster_idle_timeout: Duration,
    pub max_frame: usize,
    pub request_timeout: Duration,
    /// Local address of the socket toward the cluster master.
    pub upstream_bind: SocketAddr,
    /// How long one enrollment attempt waits for the cluster master.
    pub enroll_timeout: Duration,
    /// The statistics store; None: in memory.
    pub stats_db: Option<PathBuf>,
    pub content_listen: Option<SocketAddr>,
    pub content_cache: Option<PathBuf>,
    /// Where a renewed identity is saved (`<data_dir>/identity.json` for the binary;
    /// none for masters started in-process).
    pub identity_file: Option<PathBuf>,
}

impl GroupMasterConfig {
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).context("parse group master config")
    }

    pub fn ca_trust(&self) -> anyhow::Result<CaTrust> {
        Ok(match (&self.ca_cert, &self.ca_cert_hash) {
            (Some(path), _) => CaTrust::Pem(
                std::fs::read_to_string(path)
                    .with_context(|| format!("read ca_cert {}", path.display()))?,
            ),
            (None, Some(hash)) => CaTrust::Sha256(hash.clone()),
            (None, None) => CaTrust::FirstUse,
        })
    }

    /// `cluster_master` followed by `cluster_masters`, without repeats.
    pub fn cluster_master_list(&self) -> Vec<SocketAddr> {
        let mut out = vec![self.cluster_master];
        for addr in &self.cluster_masters {
            if !out.contains(addr) {
                out.push(*addr);
            }
        }
        out
    }

    pub fn validate(&self) -> anyhow::Result<GroupMasterSettings> {
        if self.group.is_empty()
            || !self
                .group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!(
                "group must be a non-empty name of letters, digits, '-' or '_' (got {:?})",
                self.group
            );
        }
        let suspect_after = self
            .suspect_after_ms
            .unwrap_or(self.heartbeat_interval_ms * 2);
        if self.down_after_ms <= self.heartbeat_interval_ms {
            bail!(
                "down_after_ms ({}) must exceed heartbeat_interval_ms ({})",
                self.down_after_ms,
                self.heartbeat_interval_ms
            );
        }
        if suspect_after > self.down_after_ms {
            bail!(
                "suspect_after_ms ({suspect_after}) must not exceed down_after_ms ({})",
                self.down_after_ms
            );
        }
        if self.tick_interval_ms == 0 || self.report_interval_ms == 0 {
            bail!("tick_interval_ms and report_interval_ms must be positive");
        }
        if self.max_frame_bytes < 1024 {
            bail!("max_frame_bytes must be at least 1024");
        }
        if self.enroll_timeout_ms == 0 {
            bail!("enroll_timeout_ms must be positive");
        }
        let cluster_masters = self.cluster_master_list();
        let upstream_bind = match self.upstream_bind {
            Some(bind) => {
                if let Some(other) = cluster_masters
                    .iter()
                    .find(|a| a.is_ipv4() != bind.is_ipv4())
                {
                    bail!("upstream_bind {bind} cannot reach cluster master {other}: the address families differ");
                }
                bind
            }
            None if cluster_masters.first().is_none_or(|a| a.is_ipv4()) => {
                SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
            }
            None => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        };
        Ok(GroupMasterSettings {
            group: self.group.clone(),
            listen: self.listen,
            advertise: self.advertise,
            cluster_masters,
            detector: DetectorConfig {
                suspect_after: Duration::from_millis(suspect_after),
                down_after: Duration::from_millis(self.down_after_ms),
                rejoin_grace: Duration::from_millis(self.rejoin_grace_ms.max(self.down_after_ms)),
                // Ten missed ticks (at least half a second) is a stall of this process.
                stall_after: Some(Duration::from_millis((self.tick_interval_ms * 10).max(500))),
            },
            tick_interval: Duration::from_millis(self.tick_interval_ms),
            report_interval: Duration::from_millis(self.report_interval_ms),
            agent_idle_timeout: Duration::from_millis(self.agent_idle_timeout_ms),
            cluster_idle_timeout: Duration::from_millis(self.cluster_idle_timeout_ms),
            max_frame: self.max_frame_bytes,
            request_timeout: Duration::from_secs(5),
            upstream_bind,
            enroll_timeout: Duration::from_millis(self.enroll_timeout_ms),
            stats_db: self.stats_db.clone(),
            content_listen: self.content_listen,
            content_cache: self.content_cache.clone(),
            identity_file: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_timings_are_refused() {
        let s = GroupMasterConfig::default().validate().unwrap();
        assert_eq!(s.detector.suspect_after, Duration::from_secs(2));
        assert_eq!(s.detector.down_after, Duration::from_secs(3));
        let bad = GroupMasterConfig {
            down_after_ms: 500,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = GroupMasterConfig {
            group: "g 1".into(),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        assert!(GroupMasterConfig::from_toml("groupp = 'x'").is_err());
    }

    #[test]
    fn upstream_bind_defaults_to_the_cluster_masters_family_and_must_match_it() {
        let s = GroupMasterConfig::default().validate().unwrap();
        assert_eq!(s.upstream_bind, "0.0.0.0:0".parse().unwrap());
        let v6 = GroupMasterConfig {
            cluster_master: "[::1]:7401".parse().unwrap(),
            ..Default::default()
        };
        assert_eq!(
            v6.validate().unwrap().upstream_bind,
            "[::]:0".parse().unwrap()
        );
        let config =
            GroupMasterConfig::from_toml("upstream_bind = '127.0.0.1:0'\nenroll_timeout_ms = 300")
                .unwrap();
        let s = config.validate().unwrap();
        assert_eq!(s.upstream_bind, "127.0.0.1:0".parse().unwrap());
        assert_eq!(s.enroll_timeout, Duration::from_millis(300));
        let mixed = GroupMasterConfig {
            upstream_bind: Some("[::1]:0".parse().unwrap()),
            ..Default::default()
        };
        let error = mixed.validate().unwrap_err().to_string();
        assert!(error.contains("127.0.0.1:7401"), "{error}");
    }
}

#[cfg(test)]
mod example {
    #[test]
    fn documented_example_parses_and_validates() {
        let text = include_str!("../../docs/examples/group-master.toml");
        let config = super::GroupMasterConfig::from_toml(text).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.down_after_ms,
            super::GroupMasterConfig::default().down_after_ms
        );
    }
}
