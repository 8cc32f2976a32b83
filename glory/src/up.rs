//! `glory up`: a whole cluster in one process: the embedded key master, a cluster
//! master, group masters and simulated node agents, all over real QUIC on 127.0.0.1
//! with mutual TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use glory_cluster_master::{ClusterMasterConfig, KeyMasterConfig};
use glory_group_master::{GroupMaster, GroupMasterConfig};
use glory_keymaster::schema::BootstrapScope;
use glory_node_agent::AgentConfig;
use glory_protocol::CaTrust;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::sim::{LateFleet, SimFleet};

/// Options of `glory up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub nodes: usize,
    pub groups: usize,
    pub api_listen: SocketAddr,
    pub quic_listen: SocketAddr,
    pub heartbeat_interval_ms: u64,
    pub down_after_ms: u64,
    pub group_size_limit: usize,
    /// etcd endpoints for the key master; `None`: the embedded store in `data_dir`.
    pub etcd: Option<Vec<String>>,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            data_dir: PathBuf::from("glory-data"),
            nodes: 1000,
            groups: 4,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            quic_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            heartbeat_interval_ms: 1000,
            down_after_ms: 3000,
            group_size_limit: 250,
            etcd: None,
        }
    }
}

/// A running all-in-one cluster.
pub struct Up {
    pub api_addr: SocketAddr,
    pub quic_addr: SocketAddr,
    pub operator_token: String,
    pub fleet: SimFleet,
    fleet_shutdown: CancellationToken,
    groups_shutdown: CancellationToken,
    cm_shutdown: CancellationToken,
    groups: TaskTracker,
    cm: glory_cluster_master::ClusterMasterHandle,
}

impl Up {
    pub async fn start(options: UpOptions) -> anyhow::Result<Up> {
        if options.groups == 0 {
            bail!("--groups must be at least 1");
        }
        if options.nodes > options.groups * options.group_size_limit {
            bail!(
                "{} nodes do not fit in {} groups of at most {}: use more --groups",
                options.nodes,
                options.groups,
                options.group_size_limit
            );
        }
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("create data dir {}", options.data_dir.display()))?;
        let cm_config = ClusterMasterConfig {
            listen: options.quic_listen,
            api_listen: options.api_listen,
            data_dir: options.data_dir.clone(),
            keymaster: match &options.etcd {
                Some(endpoints) => KeyMasterConfig::Etcd {
                    endpoints: endpoints.clone(),
                },
                None => KeyMasterConfig::Embedded { path: None },
            },
            group_size_limit: options.group_size_limit,
            ..Default::default()
        };
        let cm_shutdown = CancellationToken::new();
        let km = glory_cluster_master::open_keymaster(&cm_config, &cm_shutdown).await?;
        let late_fleet = Arc::new(LateFleet::default());
        let cm = glory_cluster_master::start(
            cm_config.validate()?,
            km,
            Some(late_fleet.clone()),
            cm_shutdown.clone(),
        )
        .await?;
        let cluster = cm.cluster.clone();

        // Group masters, in this process, with identities issued by the CA directly.
        let groups_shutdown = CancellationToken::new();
        let groups = TaskTracker::new();
        for g in 0..options.groups {
            let id = format!("g{g:02}");
            let config = GroupMasterConfig {
                group: id.clone(),
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                cluster_master: cm.quic_addr,
                heartbeat_interval_ms: options.heartbeat_interval_ms,
                down_after_ms: options.down_after_ms,
                stats_db: Some(options.data_dir.join("stats").join(format!("{id}.db"))),
                ..Default::default()
            };
            let identity = cluster.issue_group_master_identity(&id)?;
            let gm = GroupMaster::bind(config.validate()?, identity)?;
            let shutdown = groups_shutdown.clone();
            groups.spawn(async move {
                if let Err(e) = gm.serve(shutdown).await {
                    tracing::error!(group = %id, error = %format!("{e:#}"), "group master failed");
                }
            });
        }
        groups.close();
        // Agents enroll once every group master has registered its address.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let connected = cluster.connected_groups();
            if connected >= options.groups {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "only {connected} of {} group masters registered within 30 s",
                    options.groups
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let (token, _) = cluster
            .create_bootstrap_token(
                None,
                false,
                BootstrapScope::Node,
                "glory up: simulated agents",
            )
            .await?;
        let agent_config = AgentConfig {
            cluster_master: cm.quic_addr,
            token: Some(token),
            heartbeat_interval_ms: options.heartbeat_interval_ms,
            max_backoff_ms: 2000,
            // Ten minutes of samples per simulated node (a real agent keeps an hour):
            // enough to refill a group master that failed over.
            metrics_buffer_seconds: 600,
            ..Default::default()
        };
        let mut settings = agent_config.validate()?;
        settings.ca_trust = CaTrust::Pem(cluster.ca_pem());
        let fleet_shutdown = CancellationToken::new();
        let endpoints = options.nodes.div_ceil(1250).clamp(1, 8);
        let fleet = SimFleet::new(settings, endpoints, fleet_shutdown.clone())?;
        late_fleet.attach(fleet.clone());
        fleet.add(options.nodes);
        info!(
            nodes = options.nodes,
            groups = options.groups,
            "simulated fleet started"
        );
        Ok(Up {
            api_addr: cm.api_addr,
            quic_addr: cm.quic_addr,
            operator_token: cm.operator_token.clone(),
            fleet,
            fleet_shutdown,
            groups_shutdown,
            cm_shutdown,
            groups,
            cm,
        })
    }

    /// Stop in order: agents leave cleanly, group masters pass that on, the cluster
    /// master writes it down. Returns after every task has ended.
    pub async fn shutdown(self) {
        self.fleet_shutdown.cancel();
        self.fleet.wait().await;
        // Let the last `left` transitions travel up before the group masters go.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.groups_shutdown.cancel();
        self.groups.wait().await;
        self.cm_shutdown.cancel();
        self.cm.wait().await;
    }
}
