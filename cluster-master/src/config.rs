//! Cluster master configuration: a TOML file, every field optional with a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Which key master backend to use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyMasterConfig {
    /// The embedded SQLite store (all-in-one and small clusters): `<data_dir>/keymaster.db`
    /// unless `path` says otherwise.
    Embedded {
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// An etcd cluster (v3 API), e.g. `endpoints = ["http://10.0.0.1:2379", ...]`.
    Etcd { endpoints: Vec<String> },
}

impl Default for KeyMasterConfig {
    fn default() -> Self {
        KeyMasterConfig::Embedded { path: None }
    }
}

/// The cluster master's TOML configuration (`glory-cluster-master --config cm.toml`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterMasterConfig {
    /// Name of the cluster (shown in the API and in the CA's name).
    pub cluster_name: String,
    /// UDP address for QUIC: group masters and enrolling machines connect here.
    pub listen: SocketAddr,
    /// TCP address of the REST API.
    pub api_listen: SocketAddr,
    /// QUIC address others should dial, published when this master leads (default:
    /// `listen`, which must then not be 0.0.0.0 when running with standbys).
    pub advertise: Option<SocketAddr>,
    /// API address published when this master leads (default: `api_listen`).
    pub api_advertise: Option<SocketAddr>,
    /// Serve the API over plain HTTP even on an address that is not loopback (bearer
    /// tokens then cross the network in clear). Off: HTTPS everywhere but loopback.
    pub insecure_http: bool,
    /// The API's certificate (PEM, leaf first) and key, from the operator's own CA.
    /// Default: a certificate from the cluster CA for `api_names` and every address
    /// the API is reached by.
    pub api_cert: Option<PathBuf>,
    pub api_key: Option<PathBuf>,
    /// DNS names and addresses (beside the ones found) the cluster CA's API
    /// certificate names: a load balancer's, a DNS alias.
    pub api_names: Vec<String>,
    /// Data directory: embedded key master, `operator.token`.
    pub data_dir: PathBuf,
    /// The key master.
    pub keymaster: KeyMasterConfig,
    /// Most nodes a group may hold.
    pub group_size_limit: usize,
    /// Lifetime of every certificate the cluster CA signs for a link (nodes, group
    /// masters, provisioners, cluster masters, the API's): `24h`, `90m`, `2m`...; at
    /// least one minute. Holders renew at about two thirds of it over their link.
    pub cert_lifetime: String,
    /// Default lifetime of bootstrap tokens created without a TTL, seconds (0 = never expire).
    pub bootstrap_token_ttl_secs: u64,
    /// Write the operator API token here on first start (and reuse it later).
    /// Default: `<data_dir>/operator.token`.
    pub operator_token_file: Option<PathBuf>,
    /// Declare a group master link dead after this much silence, milliseconds.
    pub group_idle_timeout_ms: u64,
    /// Leadership lease TTL in the key master, milliseconds.
    pub leader_lease_ms: u64,
    /// Largest accepted frame, bytes.
    pub max_frame_bytes: usize,
    /// Webhooks (http:// or https:// URLs) that get a JSON POST when an alert fires or
    /// resolves, unless a silence matches it; retried with backoff.
    pub alert_webhooks: Vec<String>,
    /// Prometheus Alertmanagers (base URLs, e.g. `http://am:9093`) that get firing and
    /// resolved alerts on their `/api/v2/alerts`, grouped and repeated.
    pub alertmanagers: Vec<String>,
    /// Changes within this long go to the Alertmanagers in one request, ms.
    pub alert_group_wait_ms: u64,
    /// Firing alerts are sent again this often (an Alertmanager resolves alerts that
    /// stop being sent), seconds.
    pub alert_repeat_interval_seconds: u64,
    /// Lifetime of the bootstrap token minted for each PXE boot, seconds.
    pub boot_token_ttl_seconds: u64,
    /// A boot that does not move on for this long is `failed`, seconds.
    pub boot_timeout_seconds: u64,
    /// More cluster master QUIC addresses put on booting machines' kernel command line
    /// (`glory.cm=`) after this master's own: the standbys.
    pub boot_cluster_masters: Vec<SocketAddr>,
    /// 32-byte key (64 hex digits) that seals BMC passwords in the key master; every
    /// cluster master of the cluster needs the same file. Created on first start when
    /// missing. Default: `<data_dir>/secrets.key`.
    pub secrets_key_file: Option<PathBuf>,
    /// Most power actions started per group per second by bulk requests (inrush
    /// current).
    pub power_actions_per_group_per_second: u32,
    /// How long a pool may drain a node reclaimed for another tenant's guarantee.
    pub reclaim_grace_seconds: u64,
    /// How long a framework has to answer an offer before it is rescinded.
    pub offer_timeout_seconds: u64,
    /// At most this many nodes in one offer.
    pub offer_max_nodes: usize,
    /// Largest file (image part, package) the content store takes, MiB.
    pub content_max_mb: u64,
    /// Base URL group masters and agents fetch content from this master by (default:
    /// `http://` and the API's advertised address).
    pub content_url: Option<String>,
    /// Upload cap of each image's seeder, KiB/s (0: none).
    pub seed_upload_kib: u64,
    /// How often BitTorrent peers announce to the tracker, seconds.
    pub tracker_interval_seconds: u64,
    /// Packages this large or larger, MiB, are offered to agents peer-to-peer too (a
    /// `.torrent` beside their URL). 0: never.
    pub p2p_min_mb: u64,
}

impl Default for ClusterMasterConfig {
    fn default() -> Self {
        ClusterMasterConfig {
            cluster_name: "glory".to_string(),
            listen: SocketAddr::from(([0, 0, 0, 0], 7401)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            advertise: None,
            api_advertise: None,
            insecure_http: false,
            api_cert: None,
            api_key: None,
            api_names: Vec::new(),
            data_dir: PathBuf::from("/var/lib/glory-cluster-master"),
            keymaster: KeyMasterConfig::default(),
            group_size_limit: 250,
            cert_lifetime: "24h".to_string(),
            bootstrap_token_ttl_secs: 24 * 3600,
            operator_token_file: None,
            group_idle_timeout_ms: 3000,
            leader_lease_ms: 5000,
            max_frame_bytes: glory_protocol::DEFAULT_MAX_FRAME,
            alert_webhooks: Vec::new(),
            alertmanagers: Vec::new(),
            alert_group_wait_ms: 1000,
            alert_repeat_interval_seconds: 60,
            boot_token_ttl_seconds: 600,
            boot_timeout_seconds: 300,
            boot_cluster_masters: Vec::new(),
            secrets_key_file: None,
            power_actions_per_group_per_second: 10,
            reclaim_grace_seconds: 60,
            offer_timeout_seconds: 30,
            offer_max_nodes: 500,
            content_max_mb: 16 * 1024,
            content_url: None,
            seed_upload_kib: 0,
            tracker_interval_seconds: 30,
            p2p_min_mb: 64,
        }
    }
}

/// How the API is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiTls {
    /// Plain HTTP: on a loopback address, or with `insecure_http`.
    Plain,
    /// HTTPS with a certificate from the cluster CA (issued at every start).
    ClusterCa,
    /// HTTPS with the operator's certificate and key.
    Files { cert: PathBuf, key: PathBuf },
}

/// Validated settings the cluster master runs with.
#[derive(Clone, Debug)]
pub struct ClusterMasterSettings {
    pub cluster_name: String,
    pub listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub api_advertise: Option<SocketAddr>,
    /// Plain HTTP or HTTPS, and with which certificate.
    pub api_tls: ApiTls,
    pub api_names: Vec<String>,
    /// Where the cluster CA's certificate is written for clients: `<data_dir>/ca.pem`.
    pub ca_file: PathBuf,
    pub group_size_limit: usize,
    pub cert_validity: Duration,
    pub bootstrap_token_ttl: Option<Duration>,
    pub operator_token_file: Option<PathBuf>,
    pub group_idle_timeout: Duration,
    pub leader_lease: Duration,
    pub max_frame: usize,
    pub request_timeout: Duration,
    pub alert_webhooks: Vec<String>,
    pub alertmanagers: Vec<String>,
    pub alert_group_wait: Duration,
    pub alert_repeat_interval: Duration,
    pub boot_token_ttl: Duration,
    pub boot_timeout: Duration,
    pub boot_cluster_masters: Vec<SocketAddr>,
    pub secrets_key_file: PathBuf,
    pub power_per_group_per_second: u32,
    pub reclaim_grace: Duration,
    pub offer_timeout: Duration,
    pub offer_max_nodes: usize,
    /// Where the balancers the master owns keep their files: `<data_dir>/balancers`.
    pub balancer_dir: PathBuf,
    /// The content store (images, packages): `<data_dir>/content`.
    pub content_dir: PathBuf,
    pub content_max_bytes: u64,
    pub content_url: Option<String>,
    pub seed_upload_kib: u64,
    pub tracker_interval_seconds: u64,
    /// Packages this large or larger are offered peer-to-peer (None: never).
    pub p2p_min_bytes: Option<u64>,
}

impl ClusterMasterConfig {
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).context("parse cluster master config")
    }

    pub fn keymaster_path(&self) -> PathBuf {
        match &self.keymaster {
            KeyMasterConfig::Embedded { path: Some(p) } => p.clone(),
            _ => self.data_dir.join("keymaster.db"),
        }
    }

    pub fn validate(&self) -> anyhow::Result<ClusterMasterSettings> {
        if let KeyMasterConfig::Etcd { endpoints } = &self.keymaster {
            if endpoints.is_empty() {
                bail!("keymaster.endpoints must name at least one etcd member");
            }
        }
        if self.group_size_limit == 0 {
            bail!("group_size_limit must be positive");
        }
        let cert_lifetime = glory_protocol::parse_duration(&self.cert_lifetime)
            .map_err(|e| anyhow::anyhow!("cert_lifetime: {e}"))?;
        if cert_lifetime < glory_protocol::renewal::MIN_LIFETIME {
            bail!(
                "cert_lifetime must be at least 1m (got {:?}): holders renew at two thirds \
                 of it and need time to do so",
                self.cert_lifetime
            );
        }
        if self.leader_lease_ms < 1000 {
            bail!("leader_lease_ms must be at least 1000");
        }
        if self.max_frame_bytes < 1024 {
            bail!("max_frame_bytes must be at least 1024");
        }
        for url in &self.alertmanagers {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("alertmanagers: {url:?} is not an http:// or https:// URL");
            }
        }
        if !(100..=60_000).contains(&self.alert_group_wait_ms) {
            bail!("alert_group_wait_ms must be between 100 and 60000");
        }
        if !(5..=86_400).contains(&self.alert_repeat_interval_seconds) {
            bail!("alert_repeat_interval_seconds must be between 5 and 86400");
        }
        for url in &self.alert_webhooks {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("alert_webhooks: {url:?} is not an http:// or https:// URL");
            }
        }
        if !(1..=86_400).contains(&self.boot_token_ttl_seconds) {
            bail!("boot_token_ttl_seconds must be between 1 and 86400");
        }
        if !(10..=86_400).contains(&self.boot_timeout_seconds) {
            bail!("boot_timeout_seconds must be between 10 and 86400");
        }
        if !(1..=10_000).contains(&self.power_actions_per_group_per_second) {
            bail!("power_actions_per_group_per_second must be between 1 and 10000");
        }
        if self.reclaim_grace_seconds > 86_400 {
            bail!("reclaim_grace_seconds must be at most 86400");
        }
        if !(1..=3_600).contains(&self.offer_timeout_seconds) {
            bail!("offer_timeout_seconds must be between 1 and 3600");
        }
        if !(1..=100_000).contains(&self.offer_max_nodes) {
            bail!("offer_max_nodes must be between 1 and 100000");
        }
        if !(1..=3600).contains(&self.tracker_interval_seconds) {
            bail!("tracker_interval_seconds must be between 1 and 3600");
        }
        if self.content_max_mb == 0 {
            bail!("content_max_mb must be positive");
        }
        if let Some(url) = &self.content_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("content_url: {url:?} is not an http:// or https:// URL");
            }
        }
        let api_tls = match (&self.api_cert, &self.api_key) {
            (Some(cert), Some(key)) => ApiTls::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (Some(_), None) | (None, Some(_)) => {
                bail!("api_cert and api_key go together: give both, or neither for a certificate from the cluster CA")
            }
            (None, None) if self.insecure_http || self.api_listen.ip().is_loopback() => {
                ApiTls::Plain
            }
            (None, None) => ApiTls::ClusterCa,
        };
        for name in &self.api_names {
            if name.is_empty()
                || name.len() > 253
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                bail!("api_names: {name:?} is not a DNS name or an address");
            }
        }
        Ok(ClusterMasterSettings {
            api_tls,
            api_names: self.api_names.clone(),
            ca_file: self.data_dir.join("ca.pem"),
            content_dir: self.data_dir.join("content"),
            content_max_bytes: self.content_max_mb << 20,
            content_url: self.content_url.clone(),
            seed_upload_kib: self.seed_upload_kib,
            tracker_interval_seconds: self.tracker_interval_seconds,
            p2p_min_bytes: (self.p2p_min_mb > 0).then_some(self.p2p_min_mb << 20),
            reclaim_grace: Duration::from_secs(self.reclaim_grace_seconds),
            offer_timeout: Duration::from_secs(self.offer_timeout_seconds),
            offer_max_nodes: self.offer_max_nodes,
            boot_token_ttl: Duration::from_secs(self.boot_token_ttl_seconds),
            boot_timeout: Duration::from_secs(self.boot_timeout_seconds),
            boot_cluster_masters: self.boot_cluster_masters.clone(),
            secrets_key_file: self
                .secrets_key_file
                .clone()
                .unwrap_or_else(|| self.data_dir.join("secrets.key")),
            power_per_group_per_second: self.power_actions_per_group_per_second,
            balancer_dir: self.data_dir.join("balancers"),
            alert_webhooks: self.alert_webhooks.clone(),
            alertmanagers: self
                .alertmanagers
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            alert_group_wait: Duration::from_millis(self.alert_group_wait_ms),
            alert_repeat_interval: Duration::from_secs(self.alert_repeat_interval_seconds),
            cluster_name: self.cluster_name.clone(),
            listen: self.listen,
            api_listen: self.api_listen,
            advertise: self.advertise,
            api_advertise: self.api_advertise,
            group_size_limit: self.group_size_limit,
            cert_validity: cert_lifetime,
            bootstrap_token_ttl: (self.bootstrap_token_ttl_secs > 0)
                .then(|| Duration::from_secs(self.bootstrap_token_ttl_secs)),
            operator_token_file: Some(
                self.operator_token_file
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("operator.token")),
            ),
            group_idle_timeout: Duration::from_millis(self.group_idle_timeout_ms.max(500)),
            leader_lease: Duration::from_millis(self.leader_lease_ms),
            max_frame: self.max_frame_bytes,
            request_timeout: Duration::from_secs(5),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_keymaster_table() {
        let config = ClusterMasterConfig::from_toml(
            "data_dir = '/tmp/x'\nkeymaster = { kind = 'embedded' }\ngroup_size_limit = 100\n",
        )
        .unwrap();
        assert_eq!(
            config.keymaster_path(),
            PathBuf::from("/tmp/x/keymaster.db")
        );
        assert_eq!(config.validate().unwrap().group_size_limit, 100);
        assert!(ClusterMasterConfig::from_toml("keymaster = { kind = 'zookeeper' }").is_err());
        assert!(ClusterMasterConfig {
            group_size_limit: 0,
            ..Default::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn the_api_is_https_except_on_loopback_or_when_told() {
        let tls = |toml: &str| {
            ClusterMasterConfig::from_toml(toml)
                .unwrap()
                .validate()
                .map(|s| s.api_tls)
        };
        assert_eq!(tls("api_listen = '127.0.0.1:7400'").unwrap(), ApiTls::Plain);
        assert_eq!(tls("api_listen = '[::1]:7400'").unwrap(), ApiTls::Plain);
        assert_eq!(
            tls("api_listen = '0.0.0.0:7400'").unwrap(),
            ApiTls::ClusterCa
        );
        assert_eq!(
            tls("api_listen = '10.0.0.1:7400'").unwrap(),
            ApiTls::ClusterCa
        );
        assert_eq!(
            tls("api_listen = '0.0.0.0:7400'\ninsecure_http = true").unwrap(),
            ApiTls::Plain
        );
        // The operator's certificate, even on loopback.
        assert_eq!(
            tls("api_cert = '/c.pem'\napi_key = '/k.pem'").unwrap(),
            ApiTls::Files {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            }
        );
        let e = tls("api_cert = '/c.pem'").unwrap_err().to_string();
        assert!(e.contains("api_cert and api_key go together"), "{e}");
        assert!(tls("api_names = ['a b']").is_err());
        assert!(tls("content_url = 'https://10.0.0.1:7400'").is_ok());
        assert!(tls("content_url = 'ftp://x'").is_err());
    }
}

#[cfg(test)]
mod example {
    #[test]
    fn documented_example_parses_and_matches_the_defaults() {
        let text = include_str!("../../docs/examples/cluster-master.toml");
        let config = super::ClusterMasterConfig::from_toml(text).unwrap();
        config.validate().unwrap();
        let defaults = super::ClusterMasterConfig::default();
        assert_eq!(
            toml::to_string(&config).unwrap(),
            toml::to_string(&defaults).unwrap()
        );
    }
}
