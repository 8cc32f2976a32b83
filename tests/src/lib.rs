//! The testkit: a whole GLORY-CL hierarchy in one process (embedded key master, cluster
//! master, G group masters, N simulated agents) over real QUIC on 127.0.0.1, with
//! handles to kill, stop and restart any part.
#![forbid(unsafe_code)]

pub mod distribution;
pub mod faultnet;
pub mod netns;
pub mod procs;
pub mod rig;
pub mod rng;
pub mod wait;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use glory::client::ApiClient;
use glory::sim::{LateFleet, SimFleet};
use glory_cluster_master::{Cluster, ClusterMasterConfig, ClusterMasterHandle, KeyMasterConfig};
use glory_group_master::{GroupMaster, GroupMasterConfig};
use glory_keymaster::schema::BootstrapScope;
use glory_node_agent::AgentConfig;
use glory_protocol::CaTrust;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Log to the test's output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }
}

/// Builder of a [`TestCluster`].
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    groups: usize,
    agents: usize,
    heartbeat_ms: u64,
    down_after_ms: u64,
    group_size_limit: usize,
    process_agents: usize,
    metrics_ms: u64,
    alert_webhooks: Vec<String>,
    alertmanagers: Vec<String>,
    reclaim_grace_seconds: u64,
    offer_timeout_seconds: u64,
    api_listen: SocketAddr,
    seed_upload_kib: u64,
    tracker_interval_seconds: u64,
    p2p_min_mb: u64,
    insecure_http: bool,
    cert_lifetime: Option<Duration>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            groups: 2,
            agents: 10,
            heartbeat_ms: 250,
            down_after_ms: 750,
            group_size_limit: 250,
            process_agents: 0,
            metrics_ms: 5000,
            alert_webhooks: Vec::new(),
            alertmanagers: Vec::new(),
            reclaim_grace_seconds: 60,
            offer_timeout_seconds: 30,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed_upload_kib: 0,
            tracker_interval_seconds: 30,
            p2p_min_mb: 0,
            insecure_http: false,
            cert_lifetime: None,
        }
    }
}

impl ClusterBuilder {
    /// Lifetime of the certificates the cluster CA signs (the configuration's floor of
    /// a minute does not apply here, so renewal can be watched in seconds).
    pub fn cert_lifetime(mut self, lifetime: Duration) -> Self {
        self.cert_lifetime = Some(lifetime);
        self
    }

    /// Plain HTTP on an `api_listen` that is not loopback (HTTPS there otherwise).
    pub fn insecure_http(mut self) -> Self {
        self.insecure_http = true;
        self
    }
    /// Where the API (and content, the tracker) listens; loopback by default.
    pub fn api_listen(mut self, addr: SocketAddr) -> Self {
        self.api_listen = addr;
        self
    }

    /// Upload cap of images' seeders, KiB/s.
    pub fn seed_upload_kib(mut self, kib: u64) -> Self {
        self.seed_upload_kib = kib;
        self
    }

    /// Packages this large (MiB) go to agents peer-to-peer, each agent seeding 30 s
    /// after (0, the default here: over HTTP only).
    pub fn p2p_min_mb(mut self, mb: u64) -> Self {
        self.p2p_min_mb = mb;
        self
    }

    pub fn tracker_interval_seconds(mut self, s: u64) -> Self {
        self.tracker_interval_seconds = s;
        self
    }

    pub fn groups(mut self, n: usize) -> Self {
        self.groups = n;
        self
    }
    pub fn agents(mut self, n: usize) -> Self {
        self.agents = n;
        self
    }
    pub fn heartbeat_ms(mut self, ms: u64) -> Self {
        self.heartbeat_ms = ms;
        self
    }
    pub fn down_after_ms(mut self, ms: u64) -> Self {
        self.down_after_ms = ms;
        self
    }
    /// A webhook the cluster master forwards alerts to.
    pub fn alert_webhook(mut self, url: &str) -> Self {
        self.alert_webhooks.push(url.to_string());
        self
    }
    /// An Alertmanager (base URL) the cluster master forwards alerts to, grouped for
    /// 200 ms and repeated every 5 s.
    pub fn alertmanager(mut self, url: &str) -> Self {
        self.alertmanagers.push(url.to_string());
        self
    }
    /// How often agents send metrics (0: never).
    pub fn metrics_ms(mut self, ms: u64) -> Self {
        self.metrics_ms = ms;
        self
    }
    /// How long a reclaimed node stays with its pool (`reclaim_grace_seconds`).
    pub fn reclaim_grace_seconds(mut self, s: u64) -> Self {
        self.reclaim_grace_seconds = s;
        self
    }
    /// How long an offer waits for an answer (`offer_timeout_seconds`).
    pub fn offer_timeout_seconds(mut self, s: u64) -> Self {
        self.offer_timeout_seconds = s;
        self
    }
    pub fn group_size_limit(mut self, n: usize) -> Self {
        self.group_size_limit = n;
        self
    }
    /// The first `n` agents (of `agents`) really run the processes they are asked to
    /// run, on this machine; the others only record them.
    pub fn process_agents(mut self, n: usize) -> Self {
        self.process_agents = n;
        self
    }

    pub async fn start(self) -> anyhow::Result<TestCluster> {
        init_logging();
        let dir = tempfile::tempdir()?;
        let cm_config = ClusterMasterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_listen: self.api_listen,
            insecure_http: self.insecure_http,
            seed_upload_kib: self.seed_upload_kib,
            tracker_interval_seconds: self.tracker_interval_seconds,
            p2p_min_mb: self.p2p_min_mb,
            data_dir: dir.path().to_path_buf(),
            keymaster: KeyMasterConfig::Embedded { path: None },
            group_size_limit: self.group_size_limit,
            group_idle_timeout_ms: 1500,
            alert_webhooks: self.alert_webhooks.clone(),
            alertmanagers: self.alertmanagers.clone(),
            alert_group_wait_ms: 200,
            alert_repeat_interval_seconds: 5,
            reclaim_grace_seconds: self.reclaim_grace_seconds,
            offer_timeout_seconds: self.offer_timeout_seconds,
            ..Default::default()
        };
        let km =
            glory_cluster_master::open_keymaster(&cm_config, &CancellationToken::new()).await?;
        let late = Arc::new(LateFleet::default());
        let cm_shutdown = CancellationToken::new();
        let mut cm_settings = cm_config.validate()?;
        if let Some(lifetime) = self.cert_lifetime {
            cm_settings.cert_validity = lifetime;
        }
        let cm =
            glory_cluster_master::start(cm_settings, km, Some(late.clone()), cm_shutdown.clone())
                .await?;
        // An API bound to every address is reached by loopback, over HTTPS when it is
        // (checked against the cluster CA).
        let mut api_addr = cm.api_addr;
        if api_addr.ip().is_unspecified() {
            api_addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let scheme = match self.insecure_http || self.api_listen.ip().is_loopback() {
            true => "http",
            false => "https",
        };
        let api = ApiClient::new(&format!("{scheme}://{api_addr}"), &cm.operator_token)?
            .with_ca(&cm.cluster.ca_pem())?;
        let mut cluster = TestCluster {
            builder: self.clone(),
            api,
            cm_shutdown,
            cm: Some(cm),
            group_masters: Vec::new(),
            fleet: None,
            fleet_shutdown: CancellationToken::new(),
            _dir: dir,
        };
        for g in 0..self.groups {
            cluster
                .start_group_master(&format!("g{g:02}"), SocketAddr::from(([127, 0, 0, 1], 0)))?;
        }
        let groups = self.groups;
        cluster
            .wait_until(
                "all group masters registered",
                Duration::from_secs(10),
                async |c| c.cluster().connected_groups() >= groups,
            )
            .await?;
        let (token, _) = cluster
            .cluster()
            .create_bootstrap_token(None, false, BootstrapScope::Node, "testkit agents")
            .await?;
        let mut settings = AgentConfig {
            cluster_master: cluster.cm_quic_addr(),
            token: Some(token),
            heartbeat_interval_ms: self.heartbeat_ms,
            metrics_interval_ms: self.metrics_ms,
            max_backoff_ms: 500,
            idle_timeout_ms: 5000,
            // Each agent applies configuration and installs packages in its own
            // directory under the cluster's temporary one.
            setup_root: Some(cluster._dir.path().join("nodes")),
            setup_check_ms: 1000,
            p2p_seed_seconds: if self.p2p_min_mb > 0 { 30 } else { 0 },
            ..Default::default()
        }
        .validate()?;
        settings.ca_trust = CaTrust::Pem(cluster.cluster().ca_pem());
        let fleet = SimFleet::new(settings, 2, cluster.fleet_shutdown.clone())?;
        late.attach(fleet.clone());
        let with_processes = self.process_agents.min(self.agents);
        fleet.add_with_processes(with_processes);
        fleet.add(self.agents - with_processes);
        cluster.fleet = Some(fleet);
        Ok(cluster)
    }
}

struct GroupMasterSlot {
    id: String,
    addr: SocketAddr,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

/// A running in-process cluster.
pub struct TestCluster {
    builder: ClusterBuilder,
    /// Operator client of the cluster master's API.
    pub api: ApiClient,
    cm_shutdown: CancellationToken,
    cm: Option<ClusterMasterHandle>,
    group_masters: Vec<GroupMasterSlot>,
    fleet: Option<SimFleet>,
    fleet_shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    fn cm(&self) -> &ClusterMasterHandle {
        self.cm
            .as_ref()
            .expect("cluster master handle present until shutdown")
    }

    /// The cluster master's API, to be called in this process.
    pub fn api_router(&self) -> axum::Router {
        self.cm().api_router()
    }

    pub fn cluster(&self) -> Arc<Cluster> {
        self.cm().cluster.clone()
    }

    /// The operator bearer token.
    /// The cluster master's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn operator_token(&self) -> String {
        self.cm().operator_token.clone()
    }

    pub fn cm_quic_addr(&self) -> SocketAddr {
        self.cm().quic_addr
    }

    pub fn fleet(&self) -> &SimFleet {
        self.fleet.as_ref().expect("fleet started")
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.builder.heartbeat_ms)
    }

    pub fn down_after(&self) -> Duration {
        Duration::from_millis(self.builder.down_after_ms)
    }

    fn start_group_master(&mut self, id: &str, listen: SocketAddr) -> anyhow::Result<SocketAddr> {
        let config = GroupMasterConfig {
            group: id.to_string(),
            listen,
            cluster_master: self.cm_quic_addr(),
            heartbeat_interval_ms: self.builder.heartbeat_ms,
            down_after_ms: self.builder.down_after_ms,
            tick_interval_ms: 50,
            report_interval_ms: 500,
            cluster_idle_timeout_ms: 1500,
            agent_idle_timeout_ms: 5000,
            ..Default::default()
        };
        let identity = self.cluster().issue_group_master_identity(id)?;
        let gm = GroupMaster::bind(config.validate()?, identity)?;
        let addr = gm.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gm.serve(shutdown.clone()).map_unit());
        let slot = GroupMasterSlot {
            id: id.to_string(),
            addr,
            running: Some((shutdown, task)),
        };
        match self.group_masters.iter_mut().find(|s| s.id == id) {
            Some(existing) => *existing = slot,
            None => self.group_masters.push(slot),
        }
        Ok(addr)
    }

    /// Where group master `id` serves agents.
    pub fn group_master_addr(&self, id: &str) -> Option<SocketAddr> {
        self.group_masters
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.addr)
    }

    /// Stop a group master (its tasks end; agents and the cluster master lose it).
    pub async fn kill_group_master(&mut self, id: &str) -> anyhow::Result<()> {
        let slot = self
            .group_masters
            .iter_mut()
            .find(|s| s.id == id)
            .context("no such group master")?;
        let (shutdown, task) = slot.running.take().context("group master not running")?;
        shutdown.cancel();
        task.await?;
        Ok(())
    }

    /// Start a stopped group master again on its old address.
    pub async fn restart_group_master(&mut self, id: &str) -> anyhow::Result<()> {
        let addr = self
            .group_masters
            .iter()
            .find(|s| s.id == id)
            .context("no such group master")?
            .addr;
        // The old endpoint lets go of its address once its connections have drained.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.start_group_master(id, addr) {
                Ok(_) => return Ok(()),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Poll `check` until it holds or `timeout` passes; the error says what was awaited.
    pub async fn wait_until<F>(
        &self,
        what: &str,
        timeout: Duration,
        check: F,
    ) -> anyhow::Result<Duration>
    where
        F: AsyncFn(&Self) -> bool,
    {
        let (_, waited) = wait::until(what, timeout, || async {
            if check(self).await {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        })
        .await?;
        Ok(waited)
    }

    /// Cluster summary from the API.
    pub async fn summary(&self) -> anyhow::Result<Value> {
        self.api.get("/api/v1/cluster").await
    }

    /// Count of nodes in `state` per the API.
    pub async fn count(&self, state: &str) -> u64 {
        self.summary()
            .await
            .ok()
            .and_then(|c| c["nodes_by_state"][state].as_u64())
            .unwrap_or(0)
    }

    /// A node's state per the API.
    pub async fn node_state(&self, id: &str) -> Option<String> {
        let node = self.api.get(&format!("/api/v1/nodes/{id}")).await.ok()?;
        node["state"].as_str().map(str::to_string)
    }

    /// Wait until the API shows `n` nodes `up` (and nothing else).
    pub async fn wait_all_up(&self, n: u64, timeout: Duration) -> anyhow::Result<Duration> {
        let waited = self
            .wait_until(&format!("{n} nodes up"), timeout, async |c| {
                let summary = c.summary().await.unwrap_or_default();
                summary["nodes"].as_u64() == Some(n)
                    && summary["nodes_by_state"]["up"].as_u64() == Some(n)
            })
            .await;
        if waited.is_err() {
            let summary = self.summary().await.unwrap_or_default();
            bail!(
                "expected {n} nodes up within {timeout:?}; cluster says {}",
                summary["nodes_by_state"]
            );
        }
        waited
    }

    /// Wait until node `id` is in `state` per the API.
    pub async fn wait_node_state(
        &self,
        id: &str,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let result = self
            .wait_until(&format!("node {id} {state}"), timeout, async |c| {
                c.node_state(id).await.as_deref() == Some(state)
            })
            .await;
        match result {
            Ok(d) => Ok(d),
            Err(_) => bail!(
                "node {id}: expected {state} within {timeout:?}, API says {:?}",
                self.node_state(id).await
            ),
        }
    }

    /// Node id of simulated agent `index` (after it enrolled).
    pub fn node_id(&self, index: usize) -> anyhow::Result<String> {
        self.fleet()
            .node_id(index)
            .with_context(|| format!("agent {index} has not enrolled"))
    }

    /// Stop everything; returns when every task has ended.
    pub async fn shutdown(mut self) {
        self.fleet_shutdown.cancel();
        if let Some(fleet) = &self.fleet {
            fleet.wait().await;
        }
        for slot in &mut self.group_masters {
            if let Some((shutdown, task)) = slot.running.take() {
                shutdown.cancel();
                let _ = task.await;
            }
        }
        self.cm_shutdown.cancel();
        if let Some(cm) = self.cm.take() {
            cm.wait().await;
        }
    }
}

trait MapUnit: Future<Output = anyhow::Result<()>> + Sized {
    fn map_unit(self) -> impl Future<Output = ()> {
        async move {
            if let Err(e) = self.await {
                tracing::error!(error = %format!("{e:#}"), "group master failed");
            }
        }
    }
}

impl<F: Future<Output = anyhow::Result<()>>> MapUnit for F {}

/// Where the workspace's compiled binaries are (`./test.sh` builds them first).
pub fn binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::var_os("GLORY_BIN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("debug")
        });
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} not found: build the binaries first (cargo build --workspace --bins), or set GLORY_BIN_DIR", path.display());
    }
    Ok(path)
}

impl TestCluster {
    /// Stop the cluster master and start a new one on the same key master and
    /// addresses; returns when the new one is serving.
    pub async fn restart_cluster_master(&mut self) -> anyhow::Result<()> {
        let old = self.cm.take().context("cluster master not running")?;
        let (quic, api) = (old.quic_addr, old.api_addr);
        let km = old.cluster.keymaster();
        self.cm_shutdown.cancel();
        old.wait().await;
        self.cm_shutdown = CancellationToken::new();
        let config = ClusterMasterConfig {
            listen: quic,
            api_listen: api,
            data_dir: self._dir.path().to_path_buf(),
            keymaster: KeyMasterConfig::Embedded { path: None },
            group_size_limit: self.builder.group_size_limit,
            group_idle_timeout_ms: 1500,
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let cm = loop {
            match glory_cluster_master::start(
                config.validate()?,
                km.clone(),
                None,
                self.cm_shutdown.clone(),
            )
            .await
            {
                Ok(cm) => break cm,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(e),
            }
        };
        self.cm = Some(cm);
        Ok(())
    }
}
