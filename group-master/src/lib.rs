//! GLORY-CL group master: serves the node agents of one group over QUIC, decides their
//! liveness with a failure detector, and reports state changes (immediately) and load
//! (every interval) to the cluster master.
//!
//! Architecture invariants: never depends on `glory-cluster-master` (they share
//! `glory-protocol`); heartbeats end here and are never written to the key master;
//! liveness decisions are made by [`detector::FailureDetector`], pure code with time
//! passed in.
#![forbid(unsafe_code)]

mod agents;
pub mod config;
pub mod content;
pub mod detector;
mod monitoring;
mod state;
mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use glory_protocol::lean::{LeanEndpoint, LeanSettings};
use glory_protocol::targets::Targets;
use glory_protocol::transport::client_endpoint;
use glory_protocol::{
    ClientAuth, EnrollKind, EnrollRequest, LinkTiming, LiveIdentity, TlsIdentity,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use config::{GroupMasterConfig, GroupMasterSettings};

/// A bound, not yet serving, group master.
pub struct GroupMaster {
    settings: Arc<GroupMasterSettings>,
    identity: LiveIdentity,
    endpoint: LeanEndpoint,
    advertise: SocketAddr,
}

impl GroupMaster {
    /// Bind the agent-facing endpoint. Port 0 picks a free port ([`GroupMaster::local_addr`]).
    pub fn bind(settings: GroupMasterSettings, identity: TlsIdentity) -> anyhow::Result<Self> {
        let identity = LiveIdentity::new(identity).context("our certificate and key")?;
        let timing = LinkTiming {
            idle_timeout: settings.agent_idle_timeout,
            keep_alive: None,
            initial_rtt: glory_protocol::transport::CONTROL_INITIAL_RTT,
        };
        let lean = LeanSettings {
            who: "group master",
            max_frame: settings.max_frame,
            hello_timeout: settings.request_timeout,
        };
        let endpoint = LeanEndpoint::bind(
            settings.listen,
            &identity,
            ClientAuth::Required,
            timing,
            lean,
        )
        .with_context(|| format!("listen on {}", settings.listen))?;
        let local = endpoint.local_addr();
        let advertise = match settings.advertise {
            Some(addr) => addr,
            None if local.ip().is_unspecified() => {
                bail!("listen address {local} is unspecified: set `advertise` to the address agents should dial")
            }
            None => local,
        };
        Ok(GroupMaster {
            settings: Arc::new(settings),
            identity,
            endpoint,
            advertise,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// Serve until `shutdown`; returns after every task has ended.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let GroupMaster {
            settings,
            identity,
            endpoint,
            advertise,
        } = self;
        let shared = Arc::new(state::Shared::new(
            settings.group.clone(),
            settings.detector,
            advertise,
        ));
        info!(group = %settings.group, listen = %advertise, "group master serving");
        let (monitoring, monitoring_task) = monitoring::Monitoring::start(
            shared.clone(),
            settings.stats_db.clone(),
            shutdown.clone(),
        )
        .context("open the statistics store")?;
        shared.set_monitoring(monitoring);
        let (content, content_listener) = content::ContentProxy::bind(
            settings
                .content_listen
                .unwrap_or(std::net::SocketAddr::new(advertise.ip(), 0)),
            advertise.ip(),
            settings.content_cache.clone(),
            Some(&identity.current().ca_pem),
        )
        .await?;
        shared.set_content(content.clone());
        let upstream_endpoint = upstream_endpoint(&settings)?;
        let tasks = tokio_util::task::TaskTracker::new();
        {
            // Pass changes of the group's masters (a standby registered, a promotion) on
            // to every agent, so each knows where to go if this master disappears.
            let remote = endpoint.remote();
            let mut masters = shared.watch_masters();
            masters.mark_unchanged();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        changed = masters.changed() => {
                            if changed.is_err() {
                                break;
                            }
                            let list = masters.borrow_and_update().clone();
                            remote.broadcast(&glory_protocol::GroupToAgent::GroupMasters(list));
                        }
                    }
                }
            });
        }
        tasks.spawn(endpoint.serve(
            agents::Agents {
                shared: shared.clone(),
                advertise,
            },
            shutdown.clone(),
        ));
        tasks.spawn(content.serve(content_listener, shutdown.clone()));
        tasks.spawn(upstream::upstream_loop(
            upstream_endpoint.clone(),
            identity,
            shared.clone(),
            settings.clone(),
            advertise,
            shutdown.clone(),
        ));
        {
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            let period = settings.tick_interval;
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tick.tick() => shared.tick(Instant::now()),
                    }
                }
            });
        }
        tasks.close();
        tasks.wait().await;
        let _ = monitoring_task.await;
        upstream_endpoint.close(glory_protocol::close::SHUTDOWN, "shutdown");
        // The close frames are queued already; waiting for the drain is a courtesy.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), async {
            upstream_endpoint.wait_idle().await;
        })
        .await;
        info!(group = %settings.group, "group master stopped");
        Ok(())
    }
}

/// The socket toward the cluster master (enrollment and the link), bound to
/// `upstream_bind`.
fn upstream_endpoint(
    settings: &GroupMasterSettings,
) -> anyhow::Result<glory_protocol::LinkEndpoint> {
    let bind = settings.upstream_bind;
    client_endpoint(bind).with_context(|| {
        format!("bind the socket toward the cluster master to {bind} (upstream_bind)")
    })
}

/// The identity a group master keeps in its data dir after enrolling.
pub(crate) fn identity_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("identity.json")
}

fn load_identity(data_dir: &Path) -> anyhow::Result<Option<TlsIdentity>> {
    let path = identity_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

pub(crate) fn save_identity(path: &Path, identity: &TlsIdentity) -> anyhow::Result<()> {
    glory_protocol::process::write_private(path, &serde_json::to_vec_pretty(identity)?)?;
    Ok(())
}

/// Enroll this group master with the cluster master using a bootstrap token. Retries
/// until it succeeds or is refused for good, going through the configured cluster
/// masters in turn and following a standby's redirect; failures are logged at once and
/// then at growing intervals (see [`upstream::worth_logging`]).
async fn enroll_group_master(
    config: &GroupMasterConfig,
    settings: &GroupMasterSettings,
    advertise: SocketAddr,
) -> anyhow::Result<TlsIdentity> {
    let Some(token) = config.token.clone() else {
        bail!(
            "group master {} has no identity in {} and no bootstrap token to enroll with",
            config.group,
            config.data_dir.display()
        );
    };
    let trust = config.ca_trust()?;
    let endpoint = upstream_endpoint(settings)?;
    let (key_pem, csr_pem) = glory_protocol::tls::generate_csr()?;
    let request = EnrollRequest {
        token,
        kind: EnrollKind::GroupMaster {
            group: config.group.clone(),
            listen: advertise,
        },
        csr_pem,
    };
    let mut targets =
        Targets::new(&settings.cluster_masters).context("no cluster master address configured")?;
    let mut failures = 0u32;
    let mut delay = std::time::Duration::from_millis(200);
    info!(group = %config.group, cluster_master = %targets.current(), "enrolling with the cluster master");
    loop {
        let target = targets.current();
        match enroll_attempt(&endpoint, settings, target, &trust, &request).await {
            Ok(enrolled) => {
                return Ok(TlsIdentity {
                    cert_pem: enrolled.cert_pem,
                    key_pem,
                    ca_pem: enrolled.ca_pem,
                });
            }
            Err(e) => {
                if let Some(refusal) = e.refusal() {
                    if !refusal.code.is_retryable() {
                        bail!("enroll with cluster master {target}: refused: {refusal}");
                    }
                }
                failures += 1;
                if upstream::worth_logging(failures) {
                    warn!(group = %config.group, cluster_master = %target, failures, retry_in = ?delay, error = %e, "group master enrollment failed; retrying");
                } else {
                    debug!(group = %config.group, cluster_master = %target, failures, error = %e, "group master enrollment failed; retrying");
                }
                // A standby named the leader: go there next.
                match e.refusal() {
                    Some(r) => {
                        targets.refused(r.redirect);
                    }
                    None => targets.failed(),
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}

/// One enrollment attempt with the cluster master at `target`.
async fn enroll_attempt(
    endpoint: &glory_protocol::LinkEndpoint,
    settings: &GroupMasterSettings,
    target: SocketAddr,
    trust: &glory_protocol::CaTrust,
    request: &EnrollRequest,
) -> Result<glory_protocol::Enrolled, glory_protocol::LinkError> {
    glory_protocol::enroll::enroll_within(
        endpoint,
        target,
        trust,
        &format!("group-master-{}", settings.group),
        request,
        settings.enroll_timeout.min(settings.request_timeout),
        settings.enroll_timeout,
    )
    .await
}

/// Whether an identity's certificate has expired (or does not parse) at `now_s`.
fn certificate_expired(identity: &TlsIdentity, now_s: u64) -> bool {
    glory_protocol::renewal::CertPeriod::of(&identity.cert_pem)
        .map(|p| p.expired(now_s))
        .unwrap_or(true)
}

/// Run a group master from its configuration until `shutdown`.
pub async fn run(config: GroupMasterConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut settings = config.validate()?;
    settings
        .stats_db
        .get_or_insert_with(|| config.data_dir.join("stats.db"));
    settings
        .content_cache
        .get_or_insert_with(|| config.data_dir.join("content"));
    settings.identity_file = Some(identity_path(&config.data_dir));
    let now_s = glory_protocol::now_ms() / 1000;
    let identity = match load_identity(&config.data_dir)? {
        Some(identity) if !certificate_expired(&identity, now_s) => identity,
        loaded => {
            if loaded.is_some() {
                if config.token.is_none() {
                    bail!(
                        "group master {}: its certificate in {} expired while it was not running \
                         (it renews only while connected): give it a bootstrap token of scope \
                         group-master (`token` in its configuration) to enroll again",
                        config.group,
                        identity_path(&config.data_dir).display()
                    );
                }
                warn!(group = %config.group, "our certificate expired while we were not running; enrolling again with the bootstrap token");
            }
            let advertise = settings.advertise.unwrap_or(settings.listen);
            if advertise.ip().is_unspecified() {
                bail!("set `advertise`: agents cannot dial {advertise}");
            }
            let identity = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                identity = enroll_group_master(&config, &settings, advertise) => identity?,
            };
            save_identity(&identity_path(&config.data_dir), &identity)?;
            info!(group = %config.group, "group master enrolled");
            identity
        }
    };
    GroupMaster::bind(settings, identity)?.serve(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config whose cluster master is a bound UDP socket that never reads: nothing
    /// answers there, as with a wrong address.
    fn config_toward_silence(silent: SocketAddr) -> GroupMasterConfig {
        GroupMasterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cluster_master: silent,
            upstream_bind: Some("127.0.0.1:0".parse().unwrap()),
            token: Some("gb-00000000.secret".into()),
            enroll_timeout_ms: 300,
            ..Default::default()
        }
    }

    /// A certificate that expired while the group master was not running needs a
    /// bootstrap token: without one it stops, saying so, and keeps the old identity.
    #[tokio::test]
    async fn an_expired_certificate_without_a_token_asks_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = glory_protocol::ClusterCa::generate("t").unwrap();
        let subject = glory_protocol::CertSubject {
            id: "g07".into(),
            role: glory_protocol::CertRole::GroupMaster,
            group: None,
        };
        let (identity, _) = ca.issue(&subject, std::time::Duration::ZERO).unwrap();
        save_identity(&identity_path(dir.path()), &identity).unwrap();
        let config = GroupMasterConfig {
            group: "g07".into(),
            data_dir: dir.path().to_path_buf(),
            token: None,
            ..config_toward_silence("127.0.0.1:9".parse().unwrap())
        };
        let error = run(config, CancellationToken::new()).await.unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("expired") && text.contains("bootstrap token"),
            "{text}"
        );
        assert_eq!(load_identity(dir.path()).unwrap(), Some(identity));
    }

    #[tokio::test]
    async fn enrollment_with_a_silent_address_names_it_and_the_action() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let settings = config_toward_silence(addr).validate().unwrap();
        let endpoint = upstream_endpoint(&settings).unwrap();
        let (_, csr_pem) = glory_protocol::tls::generate_csr().unwrap();
        let request = EnrollRequest {
            token: "gb-00000000.secret".into(),
            kind: EnrollKind::GroupMaster {
                group: "g00".into(),
                listen: "127.0.0.1:7402".parse().unwrap(),
            },
            csr_pem,
        };
        let started = Instant::now();
        let error = enroll_attempt(
            &endpoint,
            &settings,
            addr,
            &glory_protocol::CaTrust::FirstUse,
            &request,
        )
        .await
        .expect_err("nothing answers")
        .to_string();
        assert!(
            error.contains(&format!("enroll with cluster master {addr}")),
            "{error}"
        );
        assert!(error.contains("no answer within 300ms"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[tokio::test]
    async fn the_upstream_socket_binds_upstream_bind() {
        let settings = config_toward_silence("127.0.0.1:7401".parse().unwrap())
            .validate()
            .unwrap();
        let endpoint = upstream_endpoint(&settings).unwrap();
        let local = endpoint.local_addr().unwrap();
        assert_eq!(local.ip(), std::net::Ipv4Addr::LOCALHOST);
        assert_ne!(local.port(), 0);
        // Taken already: the error says which socket and which option.
        let taken = GroupMasterConfig {
            upstream_bind: Some(local),
            ..config_toward_silence("127.0.0.1:7401".parse().unwrap())
        };
        let error = upstream_endpoint(&taken.validate().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("{local} (upstream_bind)")),
            "{error}"
        );
    }
}
