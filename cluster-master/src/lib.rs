//! GLORY-CL cluster master: enrollment and the cluster CA, the node registry, the group
//! directory and node assignment, the links to group masters, and the REST API.
//!
//! Architecture invariants: never depends on `glory-group-master` (they share
//! `glory-protocol`); the only JSON/HTTP code is in `api`; durable state goes through
//! the `KeyMaster` trait and is acknowledged there before the API shows it; decision
//! logic (`assign`, `auth`, `leadership`) is pure.
#![forbid(unsafe_code)]

mod api;
pub mod assign;
pub mod auth;
mod cluster;
pub mod config;
mod console;
mod enroll;
mod event_log;
mod events;
mod group_roles;
mod https;
mod leadership;
mod link;
mod monitoring;
mod own_certs;
pub mod pools;
mod provisioning;
mod registry;
mod role;
mod services;
mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use glory_keymaster::schema::CLUSTER_MASTER_ELECTION;
use glory_keymaster::{EmbeddedKeyMaster, KeyMaster, KeyMasterError, LeaderKey, LeaseId};
use glory_protocol::transport::server_endpoint;
use glory_protocol::{CertRole, CertSubject, ClientAuth, LinkTiming};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use leadership::{CampaignFailure, KeepAlive, Leadership, Verdict};

pub use api::ApiError;
pub use cluster::{Cluster, SimControl};
pub use config::{ClusterMasterConfig, ClusterMasterSettings, KeyMasterConfig};
pub use role::{LeaderInfo, Node};

/// A running cluster master.
pub struct ClusterMasterHandle {
    /// QUIC address (group masters, enrollment).
    pub quic_addr: SocketAddr,
    /// REST API address.
    pub api_addr: SocketAddr,
    /// Bearer token with the operator role.
    pub operator_token: String,
    pub cluster: Arc<Cluster>,
    node: Arc<Node>,
    tasks: TaskTracker,
}

impl ClusterMasterHandle {
    /// Wait until every task has ended (after the shutdown token was cancelled).
    pub async fn wait(self) {
        self.tasks.wait().await;
    }

    /// The API as the server serves it, to be called in this process (requests need
    /// a `ConnectInfo<SocketAddr>` extension, as the server adds): for tests that send
    /// millions of requests without the cost of HTTP.
    pub fn api_router(&self) -> axum::Router {
        api::router(self.node.clone())
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

/// Grant a lease and campaign with it until we lead, keeping the lease alive while we
/// wait. Returns `None` on shutdown.
async fn win_leadership(node: &Node, shutdown: &CancellationToken) -> Option<(LeaseId, LeaderKey)> {
    let km = &node.km;
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        let lease = match km.lease_grant(node.settings.leader_lease).await {
            Ok(lease) => lease,
            Err(e) => {
                warn!(error = %e, "cannot grant a leadership lease; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(CampaignFailure::LeaseGrant.retry_after()) => continue,
                }
            }
        };
        let waiting = CancellationToken::new();
        {
            let (km, waiting, period) = (
                km.clone(),
                waiting.clone(),
                leadership::keep_alive_every(node.settings.leader_lease),
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                loop {
                    tokio::select! {
                        _ = waiting.cancelled() => return,
                        _ = tick.tick() => {
                            if let Err(KeyMasterError::LeaseNotFound(_)) = km.lease_keep_alive(lease).await {
                                return;
                            }
                        }
                    }
                }
            });
        }
        let result = tokio::select! {
            r = km.campaign(CLUSTER_MASTER_ELECTION, node.me.encode(), lease) => r,
            _ = shutdown.cancelled() => {
                waiting.cancel();
                let _ = km.lease_revoke(lease).await;
                return None;
            }
        };
        waiting.cancel();
        match result {
            Ok(key) => return Some((lease, key)),
            Err(e) => {
                warn!(error = %e, "campaign for leadership failed; campaigning again");
                let _ = km.lease_revoke(lease).await;
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(CampaignFailure::Campaign.retry_after()) => {}
                }
            }
        }
    }
}

/// While standing by, keep the leader's address fresh for 503s and redirects.
async fn follow_leader(node: Arc<Node>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if node.active().is_some() {
                    return;
                }
                if let Ok(leader) = node.km.leader(CLUSTER_MASTER_ELECTION).await {
                    node.set_leader(leader.and_then(|kv| LeaderInfo::decode(&kv.value)));
                }
            }
        }
    }
}

/// Keep the leadership lease alive. If it lapsed (the key master was away longer than
/// the lease), campaign again at once: we keep leading if nobody else took over, and
/// stop otherwise. What to do is [`Leadership`]'s decision.
async fn hold_leadership(
    node: Arc<Node>,
    mut lease: LeaseId,
    mut key: LeaderKey,
    shutdown: CancellationToken,
) {
    let km = node.km.clone();
    let mut leadership = Leadership::new(
        node.settings.leader_lease,
        tokio::time::Instant::now().into_std(),
    );
    let mut tick = tokio::time::interval(leadership.keep_alive_every());
    let cluster = node.active().cloned();
    loop {
        let fenced = async {
            match &cluster {
                Some(c) => c.fenced.notified().await,
                None => std::future::pending().await,
            }
        };
        let was_fenced = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = km.resign(&key).await;
                let _ = km.lease_revoke(lease).await;
                return;
            }
            _ = tick.tick() => false,
            _ = fenced => true,
        };
        // Never waited for past the moment to step down: a partitioned key master may
        // not answer at all.
        let sent = tokio::time::Instant::now().into_std();
        let renewed =
            tokio::time::timeout_at(leadership.step_down_at().into(), km.lease_keep_alive(lease))
                .await
                .unwrap_or_else(|_| {
                    Err(KeyMasterError::Unavailable(
                        "no answer to the leadership keep-alive".into(),
                    ))
                });
        // A fenced write with the lease still alive: our key went some other way, and
        // another master may lead. Stop rather than serve what cannot be written.
        if was_fenced && renewed.is_ok() {
            let ours = km
                .get(&key.key)
                .await
                .map(|kv| kv.is_some_and(|kv| kv.create_revision == key.create_revision));
            if matches!(ours, Ok(false)) {
                error!("this cluster master's leadership key is gone; stopping this one");
                depose(&node, "its leadership key is gone");
                shutdown.cancel();
                return;
            }
        }
        let outcome = match &renewed {
            Ok(_) => KeepAlive::Renewed,
            Err(KeyMasterError::LeaseNotFound(_)) => KeepAlive::LeaseNotFound,
            Err(_) => KeepAlive::Failed,
        };
        let mut verdict =
            leadership.keep_alive(outcome, sent, tokio::time::Instant::now().into_std());
        if let Verdict::Campaign { until } = verdict {
            warn!("leadership lease lapsed while the key master was away; campaigning again");
            let attempt = CancellationToken::new();
            let won = tokio::time::timeout_at(until.into(), win_leadership(&node, &attempt)).await;
            attempt.cancel();
            let won = won.ok().flatten();
            verdict =
                leadership.campaign_ended(won.is_some(), tokio::time::Instant::now().into_std());
            if let (Verdict::Lead, Some((l, k))) = (verdict, won) {
                info!("leadership regained");
                if let Some(cluster) = node.active() {
                    cluster.set_fence(&k);
                }
                (lease, key) = (l, k);
            }
        }
        match verdict {
            // A campaign ended in one of the others above.
            Verdict::Lead | Verdict::Campaign { .. } => {}
            Verdict::LeadFromMemory { since_renewed } => {
                if let Err(e) = renewed {
                    warn!(error = %e, ?since_renewed, "leadership lease keep-alive failed; still serving from memory")
                }
            }
            Verdict::StepDown if outcome == KeepAlive::Failed => {
                error!(
                    lease = ?node.settings.leader_lease,
                    "the key master has not renewed the leadership lease for most of its time to live \
                     (it is away, or this master is cut off from it); stepping down before another \
                     master can take over, as a standby after a restart"
                );
                depose(&node, "the key master did not renew its leadership lease");
                shutdown.cancel();
                return;
            }
            Verdict::StepDown => {
                error!("another cluster master leads now; stopping this one");
                depose(&node, "another cluster master leads");
                shutdown.cancel();
                return;
            }
        }
    }
}

/// Record why this master stops leading.
fn depose(node: &Node, why: &'static str) {
    if let Some(cluster) = node.active() {
        let _ = cluster.deposed.set(why);
    }
}

/// Start a cluster master on `km`: bind its addresses and serve at once (as a standby
/// while another master leads), campaign for leadership, and return once it leads.
/// Returns an error if `shutdown` fires first.
pub async fn start(
    settings: ClusterMasterSettings,
    km: Arc<dyn KeyMaster>,
    sim: Option<Arc<dyn SimControl>>,
    shutdown: CancellationToken,
) -> anyhow::Result<ClusterMasterHandle> {
    let ca = cluster::load_or_create_ca(km.as_ref(), &settings.cluster_name).await?;
    let subject = CertSubject {
        id: settings.cluster_name.clone(),
        role: CertRole::ClusterMaster,
        group: None,
    };
    let (identity, _) = ca.issue(&subject, settings.cert_validity)?;
    let identity = glory_protocol::LiveIdentity::new(identity)?;
    https::write_ca_pem(&settings.ca_file, &ca)?;
    let api_tls = https::server_config(&settings, &ca)?;
    let own_certs = own_certs::OwnCerts {
        ca: glory_protocol::ClusterCa::from_pem(ca.cert_pem(), ca.key_pem())?,
        subject,
        lifetime: settings.cert_validity,
        links: identity.clone(),
        api: api_tls.as_ref().and_then(|t| t.renewable.clone()),
    };
    let timing = LinkTiming {
        idle_timeout: settings.group_idle_timeout,
        keep_alive: None,
        // Enrollment storms arrive here.
        initial_rtt: glory_protocol::transport::STORM_INITIAL_RTT,
    };
    let endpoint = server_endpoint(settings.listen, &identity, ClientAuth::Optional, timing)
        .with_context(|| format!("listen on {} (QUIC)", settings.listen))?;
    // Enrollees and agents asking where their group is may wait in the admission queue
    // for longer than a group link's idle timeout: they get one as long as an
    // enrollee's patience (see `link::ADMISSION`).
    let ordinary = glory_protocol::transport::server_config(
        &identity,
        ClientAuth::Optional,
        LinkTiming {
            idle_timeout: glory_protocol::enroll::ENROLL_CONNECT_PATIENCE,
            ..timing
        },
    )?;
    let listener = tokio::net::TcpListener::bind(settings.api_listen)
        .await
        .with_context(|| format!("listen on {} (API)", settings.api_listen))?;
    let (quic_addr, api_addr) = (endpoint.local_addr()?, listener.local_addr()?);
    let me = LeaderInfo {
        quic: settings.advertise.unwrap_or(quic_addr),
        api: settings.api_advertise.unwrap_or(api_addr),
    };
    let node = Node::new(settings.clone(), km.clone(), me);

    let tasks = TaskTracker::new();
    {
        let app = api::router(node.clone());
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            if let Some(tls) = api_tls {
                return https::serve(listener, tls.config, app, shutdown).await;
            }
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                error!(error = %e, "API server failed");
            }
        });
    }
    tasks.spawn(link::accept_loop(
        endpoint.clone(),
        ordinary,
        node.clone(),
        shutdown.clone(),
    ));
    {
        let (shutdown, node) = (shutdown.clone(), node.clone());
        tasks.spawn(async move {
            shutdown.cancelled().await;
            if let Some(cluster) = node.active() {
                cluster.drop_links();
                cluster.events.close();
            }
            endpoint.close(glory_protocol::close::SHUTDOWN, "shutdown");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        });
    }
    tasks.spawn(own_certs.renew(shutdown.clone()));
    tasks.spawn(follow_leader(node.clone(), shutdown.clone()));
    // A standby copies the leader's images and packages while it waits.
    let content_follower = shutdown.child_token();
    tasks.spawn(provisioning::follow_content(
        node.clone(),
        glory_content::http_client(Some(ca.cert_pem()))?,
        content_follower.clone(),
    ));
    info!(quic = %quic_addr, api = %api_addr, "cluster master up; campaigning for leadership");

    let Some((lease, key)) = win_leadership(&node, &shutdown).await else {
        tasks.close();
        tasks.wait().await;
        anyhow::bail!("shut down before becoming leader");
    };
    // The content store is this master's own from now on.
    content_follower.cancel();
    // Anything failing from here on gives leadership back at once, so a retry (or a
    // standby) does not wait for the lease to expire.
    let prepared = async {
        // The cluster knows the QUIC address it is reached at (put on booting
        // machines' kernel command line), even when `listen` asked for port 0.
        let mut cluster_settings = settings.clone();
        cluster_settings.advertise = Some(node.me.quic);
        cluster_settings.api_advertise = Some(node.me.api);
        let (cluster, status_rx) = Cluster::load(cluster_settings, km.clone(), sim, ca).await?;
        let op_token = operator_token(&cluster, settings.operator_token_file.as_deref()).await?;
        anyhow::Ok((cluster, status_rx, op_token))
    }
    .await;
    let (cluster, status_rx, op_token) = match prepared {
        Ok(x) => x,
        Err(e) => {
            let _ = km.resign(&key).await;
            let _ = km.lease_revoke(lease).await;
            shutdown.cancel();
            tasks.close();
            tasks.wait().await;
            return Err(e);
        }
    };
    cluster.set_fence(&key);
    node.activate(cluster.clone());
    tasks.spawn(hold_leadership(node.clone(), lease, key, shutdown.clone()));
    tasks.spawn(cluster::status_writer(
        cluster.clone(),
        status_rx,
        shutdown.clone(),
    ));
    tasks.spawn(event_log::writer(cluster.clone(), shutdown.clone()));
    {
        // Groups whose recorded master did not come back within the takeover's grace
        // are led by a standby.
        let (cluster, shutdown) = (cluster.clone(), shutdown.clone());
        tasks.spawn(async move {
            let grace = group_roles::takeover_grace(cluster.settings.group_idle_timeout);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(grace.saturating_sub(cluster.took_over.elapsed())) => {
                    for (group, addr) in cluster.promote_after_grace() {
                        cluster.record_promotion(&group, addr).await;
                    }
                }
            }
        });
    }
    tasks.spawn(pools::reconciler(cluster.clone(), shutdown.clone()));
    tasks.spawn(services::reconciler(cluster.clone(), shutdown.clone()));
    tasks.spawn(services::autoscaler(cluster.clone(), shutdown.clone()));
    tasks.spawn(provisioning::setup::setup_loop(
        cluster.clone(),
        shutdown.clone(),
    ));
    {
        let (cluster, shutdown) = (cluster.clone(), shutdown.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = cluster.boot_sweeper() => {}
            }
        });
    }
    tasks.spawn(monitoring::forward_alerts(
        cluster.clone(),
        shutdown.clone(),
    ));
    {
        // Pools and labels move nodes in and out of monitors' scopes: resend what
        // changed (monitor changes themselves are sent at once).
        let (cluster, shutdown) = (cluster.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => cluster.push_monitors(),
                }
            }
        });
    }
    {
        let (cluster, shutdown) = (cluster.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => { cluster.probe_keymaster(Duration::from_secs(2)).await; }
                }
            }
        });
    }
    tasks.close();
    info!(quic = %quic_addr, api = %api_addr, "cluster master active");
    Ok(ClusterMasterHandle {
        quic_addr,
        api_addr,
        operator_token: op_token,
        cluster,
        node,
        tasks,
    })
}

/// Open the key master a configuration names. An etcd cluster that does not answer
/// yet is retried until `shutdown`.
pub async fn open_keymaster(
    config: &ClusterMasterConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<dyn KeyMaster>> {
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
        KeyMasterConfig::Etcd { endpoints } => {
            let mut failures = 0u32;
            loop {
                match glory_keymaster::EtcdKeyMaster::connect(
                    endpoints,
                    glory_keymaster::EtcdOptions::default(),
                )
                .await
                {
                    Ok(km) => return Ok(km),
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(30) {
                            warn!(error = %e, endpoints = ?endpoints, "etcd key master not reachable; retrying");
                        }
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("shut down before the key master answered"),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Run a cluster master from its configuration until `shutdown`.
pub async fn run(config: ClusterMasterConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = config.validate()?;
    let scheme = https::scheme(&settings.api_tls);
    let ca_file = settings.ca_file.clone();
    let km = match open_keymaster(&config, &shutdown).await {
        Ok(km) => km,
        Err(_) if shutdown.is_cancelled() => return Ok(()),
        Err(e) => return Err(e),
    };
    let handle = match start(settings, km, None, shutdown.clone()).await {
        Ok(handle) => handle,
        Err(_) if shutdown.is_cancelled() => return Ok(()),
        Err(e) => return Err(e),
    };
    println!(
        "cluster master active: QUIC {} API {scheme}://{} (CA certificate {})",
        handle.quic_addr,
        handle.api_addr,
        ca_file.display()
    );
    let cluster = handle.cluster.clone();
    handle.wait().await;
    match cluster.deposed.get() {
        Some(why) => anyhow::bail!("stepped down ({why}); restart it to stand by"),
        None => Ok(()),
    }
}
