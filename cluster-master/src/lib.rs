//! GLORY-CL cluster master: enrollment and the cluster CA, the node registry, the group
//! directory and node assignment, the links to group masters, and the REST API.
//!
//! Architecture invariants: never depends on `glory-group-master` (they share
//! `glory-protocol`); the only JSON/HTTP code is in `api`; durable state goes through
//! the `KeyMaster` trait and is acknowledged there before the API shows it; decision
//! logic (`assign`, `auth`) is pure.
#![forbid(unsafe_code)]

mod api;
pub mod assign;
pub mod auth;
mod cluster;
pub mod config;
mod link;
mod registry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use glory_keymaster::schema::CLUSTER_MASTER_ELECTION;
use glory_keymaster::{EmbeddedKeyMaster, KeyMaster};
use glory_protocol::transport::server_endpoint;
use glory_protocol::{CertRole, CertSubject, ClientAuth, LinkTiming};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

pub use api::ApiError;
pub use cluster::{Cluster, SimControl};
pub use config::{ClusterMasterConfig, ClusterMasterSettings, KeyMasterConfig};

/// A running cluster master.
pub struct ClusterMasterHandle {
    /// QUIC address (group masters, enrollment).
    pub quic_addr: SocketAddr,
    /// REST API address.
    pub api_addr: SocketAddr,
    /// Bearer token with the operator role.
    pub operator_token: String,
    pub cluster: Arc<Cluster>,
    tasks: TaskTracker,
}

impl ClusterMasterHandle {
    /// Wait until every task has ended (after the shutdown token was cancelled).
    pub async fn wait(self) {
        self.tasks.wait().await;
    }
}

async fn operator_token(
    cluster: &Cluster,
    file: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let existing = match file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        },
        None => None,
    };
    let token = match existing {
        Some(token) => token,
        None => {
            let token = auth::new_token("ga-").2;
            if let Some(path) = file {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("create {}", dir.display()))?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("create {}", path.display()))?;
                writeln!(f, "{token}")?;
            }
            token
        }
    };
    cluster.ensure_api_token(&token, "operator").await?;
    Ok(token)
}

/// Start a cluster master on `km`. Returns once it is leader and serving.
pub async fn start(
    settings: ClusterMasterSettings,
    km: Arc<dyn KeyMaster>,
    sim: Option<Arc<dyn SimControl>>,
    shutdown: CancellationToken,
) -> anyhow::Result<ClusterMasterHandle> {
    // Leadership: a lease-backed election in the key master. A single master wins at
    // once; standbys wait here.
    let lease = km
        .lease_grant(settings.leader_lease)
        .await
        .context("grant leadership lease")?;
    let campaign = km.campaign(
        CLUSTER_MASTER_ELECTION,
        settings.listen.to_string().into_bytes(),
        lease,
    );
    let leader = tokio::select! {
        leader = campaign => leader.context("campaign for cluster master leadership")?,
        _ = shutdown.cancelled() => anyhow::bail!("shut down before becoming leader"),
    };
    // Anything failing from here on gives leadership back at once, so a retry (or a
    // standby) does not wait for the lease to expire.
    let prepared = async {
        let (cluster, status_rx) = Cluster::load(settings.clone(), km.clone(), sim).await?;
        let op_token = operator_token(&cluster, settings.operator_token_file.as_deref()).await?;
        let subject = CertSubject {
            id: settings.cluster_name.clone(),
            role: CertRole::ClusterMaster,
            group: None,
        };
        let (identity, _) = cluster.ca.issue(&subject, settings.cert_validity)?;
        let timing = LinkTiming {
            idle_timeout: settings.group_idle_timeout,
            keep_alive: None,
        };
        let endpoint = server_endpoint(settings.listen, &identity, ClientAuth::Optional, timing)
            .with_context(|| format!("listen on {} (QUIC)", settings.listen))?;
        let listener = tokio::net::TcpListener::bind(settings.api_listen)
            .await
            .with_context(|| format!("listen on {} (API)", settings.api_listen))?;
        anyhow::Ok((cluster, status_rx, op_token, endpoint, listener))
    }
    .await;
    let (cluster, status_rx, op_token, endpoint, listener) = match prepared {
        Ok(x) => x,
        Err(e) => {
            let _ = km.resign(&leader).await;
            let _ = km.lease_revoke(lease).await;
            return Err(e);
        }
    };
    let quic_addr = endpoint.local_addr()?;
    let api_addr = listener.local_addr()?;

    let tasks = TaskTracker::new();
    // Keep the leadership lease alive; losing it means another master may lead, so stop.
    {
        let km = km.clone();
        let shutdown = shutdown.clone();
        let period = settings.leader_lease / 3;
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = km.resign(&leader).await;
                        let _ = km.lease_revoke(lease).await;
                        return;
                    }
                    _ = tick.tick() => {
                        if let Err(e) = km.lease_keep_alive(lease).await {
                            if matches!(e, glory_keymaster::KeyMasterError::LeaseNotFound(_)) {
                                error!(error = %e, "leadership lease lost; stopping this cluster master");
                                shutdown.cancel();
                                return;
                            }
                            tracing::warn!(error = %e, "leadership lease keep-alive failed");
                        }
                    }
                }
            }
        });
    }
    tasks.spawn(cluster::status_writer(
        cluster.clone(),
        status_rx,
        shutdown.clone(),
    ));
    tasks.spawn(link::accept_loop(
        endpoint.clone(),
        cluster.clone(),
        shutdown.clone(),
    ));
    {
        let app = api::router(cluster.clone());
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                error!(error = %e, "API server failed");
            }
        });
    }
    {
        let shutdown = shutdown.clone();
        let cluster = cluster.clone();
        tasks.spawn(async move {
            shutdown.cancelled().await;
            cluster.drop_links();
            endpoint.close(
                quinn::VarInt::from_u32(glory_protocol::close::SHUTDOWN),
                b"shutdown",
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        });
    }
    tasks.close();
    info!(quic = %quic_addr, api = %api_addr, "cluster master active");
    Ok(ClusterMasterHandle {
        quic_addr,
        api_addr,
        operator_token: op_token,
        cluster,
        tasks,
    })
}

/// Open the key master a configuration names.
pub fn open_keymaster(config: &ClusterMasterConfig) -> anyhow::Result<Arc<dyn KeyMaster>> {
    match &config.keymaster {
        KeyMasterConfig::Embedded { .. } => {
            let path = config.keymaster_path();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create {}", dir.display()))?;
            }
            let km = EmbeddedKeyMaster::open(&path)
                .with_context(|| format!("open key master {}", path.display()))?;
            Ok(km)
        }
    }
}

/// Run a cluster master from its configuration until `shutdown`.
pub async fn run(config: ClusterMasterConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = config.validate()?;
    let km = open_keymaster(&config)?;
    let handle = start(settings, km, None, shutdown).await?;
    println!(
        "cluster master: QUIC {} API http://{}",
        handle.quic_addr, handle.api_addr
    );
    handle.wait().await;
    Ok(())
}
