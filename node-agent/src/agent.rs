//! The agent's life: enroll once, then keep a session with its group master, sending a
//! heartbeat datagram every interval, until shutdown (announced: `left`) or power-off
//! (simulated: silence, as if the server lost power).

use std::sync::Arc;
use std::time::Duration;

use glory_monitor::batch::BatchWriter;
use glory_protocol::enroll::enroll;
use glory_protocol::targets::Targets;
use glory_protocol::tls::{csr_for_key, generate_csr, CLUSTER_MASTER_NAME, GROUP_MASTER_NAME};
use glory_protocol::transport::{client_config, client_hello, connect};
use glory_protocol::{
    close, frame, AgentToGroup, EnrollKind, EnrollRequest, GroupLocation, GroupToAgent, Heartbeat,
    Hello, LinkError, LinkTiming, RefusalCode, Role, TlsIdentity, DEFAULT_MAX_FRAME,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::AgentSettings;
use crate::dialer::Dialer;
use crate::host::Host;
use crate::identity::{AgentIdentity, IdentityStore};
use crate::processes::Supervisor;
use crate::sampling::{sleep_until_due, Monitoring, Pending};
use crate::setup::Setup;

/// What an agent needs besides its settings. Simulated agents share endpoints.
#[derive(Clone)]
pub struct AgentDeps {
    pub endpoint: glory_protocol::LinkEndpoint,
    pub host: Arc<dyn Host>,
    pub store: Arc<dyn IdentityStore>,
    /// Counters, shared by all agents of a simulated fleet.
    pub stats: Arc<AgentStats>,
}

/// What agents did, for benchmarks and logs.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub heartbeats_sent: std::sync::atomic::AtomicU64,
    pub enrollments: std::sync::atomic::AtomicU64,
    pub sessions: std::sync::atomic::AtomicU64,
    /// Enrollment conversations started (successful or not).
    pub enroll_attempts: std::sync::atomic::AtomicU64,
    /// Of those, turned away by admission control before their handshake.
    pub enroll_busy: std::sync::atomic::AtomicU64,
    /// Connections to a group master started, and those that failed (timeout, refused).
    pub gm_connects: std::sync::atomic::AtomicU64,
    pub gm_connect_failures: std::sync::atomic::AtomicU64,
    /// Times an agent asked a cluster master where its group is led.
    pub locates: std::sync::atomic::AtomicU64,
}

impl AgentStats {
    fn count(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// One line for logs: how much retrying the agents did.
    pub fn retries_summary(&self) -> String {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        format!(
            "enrollments {} of {} attempts ({} busy); group master connects {} ({} failed); locates {}",
            get(&self.enrollments),
            get(&self.enroll_attempts),
            get(&self.enroll_busy),
            get(&self.gm_connects),
            get(&self.gm_connect_failures),
            get(&self.locates),
        )
    }
}

/// How an agent run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentExit {
    /// Graceful shutdown; the group master was told we are leaving.
    Shutdown,
    /// Simulated power loss: nothing was sent.
    PoweredOff,
    /// The cluster removed this node; it must not come back on its own.
    Removed(String),
}

enum SessionEnd {
    Shutdown,
    PoweredOff,
    Removed(String),
    /// Our certificate is not accepted any more: enroll again.
    Reenroll(String),
    /// Connection lost or refused for a passing reason: reconnect.
    Lost(String),
    /// No group master we know of answered: ask the cluster master, then retry.
    Unreachable(String),
}

/// Longest wait before asking a busy cluster master again.
const BUSY_MAX_BACKOFF: Duration = Duration::from_secs(4);

/// Exponential backoff with jitter, so thousands of agents do not retry in lockstep.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            next: Duration::from_millis(200),
            max,
        }
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(200);
    }
    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter: f64 = rand::random::<f64>() * 0.5 + 0.75;
        base.mul_f64(jitter)
    }
}

async fn sleep_or(
    shutdown: &CancellationToken,
    power_off: &CancellationToken,
    d: Duration,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
        _ = power_off.cancelled() => false,
    }
}

/// Run one agent until `shutdown` (graceful) or `power_off` (silent) is cancelled, or
/// the cluster removes the node.
pub async fn run_agent(
    settings: AgentSettings,
    deps: AgentDeps,
    shutdown: CancellationToken,
    power_off: CancellationToken,
) -> anyhow::Result<AgentExit> {
    // Reconnecting to a group master is cheap and urgent (its successor gives us only
    // a grace period to come back), so retries are never further apart than one
    // heartbeat interval.
    let mut backoff = Backoff::new(
        settings
            .heartbeat_interval
            .max(Duration::from_millis(200))
            .min(settings.max_backoff),
    );
    let mut seq: u64 = 0;
    // The group master whose session we just lost, tried last next time.
    let mut avoid: Option<std::net::SocketAddr> = None;
    // Processes live as long as this run (a simulated power-off ends them too).
    let inventory = deps.host.inventory();
    let procs = Supervisor::new(!deps.host.runs_processes());
    // Configuration and packages outlive sessions too.
    let setup = Setup::new(
        settings.setup_root.clone(),
        settings
            .setup_root
            .is_some()
            .then(|| settings.setup_state.clone()),
        settings.p2p_seed,
    );
    // Probes and recent samples outlive sessions: a new group master gets both.
    let mut monitoring = Monitoring::new(settings.metrics_interval, settings.metrics_buffer);
    let mut link = LinkLog::default();
    // The key of an identity whose certificate was refused: enrolling again with it is
    // judged the same agent, not another server claiming its identity.
    let mut keep_key: Option<String> = None;
    if let Some(stored) = deps.store.load()? {
        adopt_stored_identity(&deps, stored, &inventory.identity)?;
    }
    loop {
        let mut identity = match deps.store.load()? {
            Some(identity) if crate::cert::expired_at(&identity).is_none() => identity,
            Some(identity) => {
                let expired = crate::cert::expired_at(&identity).unwrap_or(0);
                let message = crate::cert::expired_message(&identity, expired);
                if settings.token.is_none() {
                    anyhow::bail!(message);
                }
                warn!(node_id = %identity.node_id, "{message}; enrolling again with the token");
                keep_key = Some(identity.tls.key_pem.clone());
                deps.store.clear()?;
                continue;
            }
            None => {
                match enroll_until_done(&settings, &deps, keep_key.take(), &shutdown, &power_off)
                    .await?
                {
                    Some(identity) => identity,
                    None if power_off.is_cancelled() => return Ok(AgentExit::PoweredOff),
                    None => return Ok(AgentExit::Shutdown),
                }
            }
        };
        // Content and torrents of an HTTPS cluster master are checked against our CA.
        setup.trust(&identity.tls.ca_pem);
        let end = session(
            &settings,
            &deps,
            &mut identity,
            &mut seq,
            &shutdown,
            &power_off,
            &mut backoff,
            &mut avoid,
            &procs,
            &setup,
            &mut monitoring,
            &mut link,
        )
        .await;
        link.ended(&identity, &end);
        match end {
            SessionEnd::Shutdown => return Ok(AgentExit::Shutdown),
            SessionEnd::PoweredOff => return Ok(AgentExit::PoweredOff),
            SessionEnd::Removed(reason) => {
                error!(node_id = %identity.node_id, %reason, "node removed from the cluster; stopping");
                deps.store.clear()?;
                return Ok(AgentExit::Removed(reason));
            }
            SessionEnd::Reenroll(reason) => {
                warn!(node_id = %identity.node_id, %reason, "certificate refused; enrolling again with the same key");
                keep_key = Some(identity.tls.key_pem.clone());
                deps.store.clear()?;
            }
            SessionEnd::Unreachable(reason) => {
                debug!(node_id = %identity.node_id, %reason, "no group master reachable; asking the cluster master");
                let located = monitoring
                    .while_away(deps.host.as_ref(), locate(&settings, &deps, &identity))
                    .await;
                if let Some(masters) = located {
                    if masters != identity.group_masters {
                        info!(node_id = %identity.node_id, masters = ?masters, "group masters moved");
                        identity.group_masters = masters;
                        deps.store.save(&identity)?;
                        continue;
                    }
                }
                let wait = sleep_or(&shutdown, &power_off, backoff.step());
                if !monitoring.while_away(deps.host.as_ref(), wait).await {
                    return Ok(if power_off.is_cancelled() {
                        AgentExit::PoweredOff
                    } else {
                        AgentExit::Shutdown
                    });
                }
            }
            SessionEnd::Lost(reason) => {
                debug!(node_id = %identity.node_id, %reason, "group master session lost; reconnecting");
                let wait = sleep_or(&shutdown, &power_off, backoff.step());
                if !monitoring.while_away(deps.host.as_ref(), wait).await {
                    return Ok(if power_off.is_cancelled() {
                        AgentExit::PoweredOff
                    } else {
                        AgentExit::Shutdown
                    });
                }
            }
        }
    }
}

/// Keep the identity in the state directory only if it was enrolled as this server: a
/// state directory copied with a cloned image belongs to the server it came from, and
/// reusing its key here would make two servers one node.
fn adopt_stored_identity(
    deps: &AgentDeps,
    mut stored: AgentIdentity,
    this_server: &str,
) -> anyhow::Result<()> {
    if stored.claim.is_empty() {
        // Written before identities were recorded: it was enrolled here.
        stored.claim = this_server.to_string();
        deps.store.save(&stored)?;
    }
    if stored.claim == this_server {
        info!(node_id = %stored.node_id, group = %stored.group, identity = %stored.claim, "starting as the node enrolled earlier");
    } else {
        warn!(
            node_id = %stored.node_id,
            "the state directory holds node {} enrolled as server {}, but this server is {} \
             (a state directory copied with a cloned image?): enrolling afresh with a new key",
            stored.node_id, stored.claim, this_server
        );
        deps.store.clear()?;
    }
    Ok(())
}

/// What the agent says at INFO about its link to the group master: once what it is
/// connected to, and each change of that (loss, reconnection, failover), never a line
/// per retry.
#[derive(Default)]
struct LinkLog {
    /// The group master of the live session.
    current: Option<std::net::SocketAddr>,
    /// The group master of the last session.
    last: Option<std::net::SocketAddr>,
    /// A failure to reach any group master was already reported since the last session.
    unreachable_reported: bool,
}

impl LinkLog {
    fn connected(&mut self, identity: &AgentIdentity, remote: std::net::SocketAddr) {
        match self.last {
            None => {
                info!(node_id = %identity.node_id, group = %identity.group, group_master = %remote, "connected to group master {remote}")
            }
            Some(prev) if prev != remote => {
                info!(node_id = %identity.node_id, group = %identity.group, group_master = %remote, "failed over to group master {remote} (was {prev})")
            }
            Some(_) => {
                info!(node_id = %identity.node_id, group = %identity.group, group_master = %remote, "reconnected to group master {remote}")
            }
        }
        self.current = Some(remote);
        self.last = Some(remote);
        self.unreachable_reported = false;
    }

    fn ended(&mut self, identity: &AgentIdentity, end: &SessionEnd) {
        let node_id = &identity.node_id;
        match (self.current.take(), end) {
            (Some(gm), SessionEnd::Lost(reason)) => {
                warn!(%node_id, group_master = %gm, "lost group master {gm}: {reason}; reconnecting")
            }
            (_, SessionEnd::Unreachable(reason)) if !self.unreachable_reported => {
                self.unreachable_reported = true;
                warn!(%node_id, group = %identity.group, "no group master of group {} reachable ({reason}); retrying and asking the cluster master where it is led", identity.group)
            }
            _ => {}
        }
    }
}

/// Enroll with the cluster master, retrying with backoff. `None` on shutdown.
async fn enroll_until_done(
    settings: &AgentSettings,
    deps: &AgentDeps,
    key_pem: Option<String>,
    shutdown: &CancellationToken,
    power_off: &CancellationToken,
) -> anyhow::Result<Option<AgentIdentity>> {
    let Some(token) = settings.token.clone() else {
        anyhow::bail!(
            "this agent has not enrolled and has no bootstrap token: set `token` in the config, \
             pass --token, or boot with glory.token= on the kernel command line"
        );
    };
    let mut backoff = Backoff::new(settings.max_backoff);
    // A busy cluster master (admission control) is alive and working through a queue:
    // coming back within a few seconds keeps its queue fed without flooding it, where
    // the full backoff would leave it idle at the end of a storm.
    let mut busy_backoff = Backoff::new(BUSY_MAX_BACKOFF.min(settings.max_backoff));
    let mut attempts = 0u32;
    let mut targets = Targets::new(&settings.cluster_masters)
        .ok_or_else(|| anyhow::anyhow!("no cluster master address configured"))?;
    // One key for every attempt: generating a key pair per retry would spend the
    // CPU of thousands of servers retrying at once.
    let (key_pem, csr_pem) = match key_pem {
        Some(key_pem) => {
            let csr_pem = csr_for_key(&key_pem)?;
            (key_pem, csr_pem)
        }
        None => generate_csr()?,
    };
    loop {
        let target = targets.current();
        let inventory = deps.host.inventory();
        let machine_id = inventory.machine_id.clone();
        let claim = inventory.identity.clone();
        let csr_pem = csr_pem.clone();
        let request = EnrollRequest {
            token: token.clone(),
            kind: EnrollKind::Node {
                inventory: Box::new(inventory),
            },
            csr_pem,
        };
        let result = enroll(
            &deps.endpoint,
            target,
            &settings.ca_trust,
            &machine_id,
            &request,
            settings.request_timeout,
        )
        .await;
        attempts += 1;
        AgentStats::count(&deps.stats.enroll_attempts);
        match result {
            Ok(enrolled) => {
                let identity = AgentIdentity {
                    node_id: enrolled.id,
                    group: enrolled.group.unwrap_or_default(),
                    group_masters: enrolled.group_masters,
                    tls: TlsIdentity {
                        cert_pem: enrolled.cert_pem,
                        key_pem: key_pem.clone(),
                        ca_pem: enrolled.ca_pem,
                    },
                    claim: claim.clone(),
                };
                deps.store.save(&identity)?;
                AgentStats::count(&deps.stats.enrollments);
                info!(node_id = %identity.node_id, group = %identity.group, identity = %identity.claim, cluster_master = %target, "enrolled");
                return Ok(Some(identity));
            }
            Err(LinkError::Refused(refusal)) if targets.redirect(refusal.redirect) => {
                // A standby named the leader: ask it at once.
                continue;
            }
            Err(LinkError::Refused(refusal)) => {
                // Logged the first time and every tenth time: thousands of simulated
                // agents retrying must not flood the log. An identity conflict or a
                // removal needs an operator: it is an error.
                if attempts % 10 == 1 {
                    match refusal.code {
                        RefusalCode::IdentityConflict | RefusalCode::Removed => {
                            error!(code = ?refusal.code, cluster_master = %target, attempts, "enrollment refused: {}; retrying with backoff", refusal.message)
                        }
                        _ => {
                            warn!(code = ?refusal.code, cluster_master = %target, attempts, "enrollment refused: {}; retrying with backoff", refusal.message)
                        }
                    }
                }
            }
            Err(e) if e.is_busy() => {
                AgentStats::count(&deps.stats.enroll_busy);
                // Admission control: the cluster master is alive but busy. Stay with
                // it rather than moving to another master.
                if attempts == 1 {
                    info!(cluster_master = %target, "cluster master busy enrolling others; waiting for a turn");
                } else {
                    debug!(cluster_master = %target, attempts, "cluster master busy; retrying with backoff");
                }
                if !sleep_or(shutdown, power_off, busy_backoff.step()).await {
                    return Ok(None);
                }
                continue;
            }
            Err(e) => {
                if attempts % 10 == 1 {
                    warn!(cluster_master = %target, attempts, "enrolling with cluster master {target} failed: {e}; retrying with backoff");
                }
                targets.failed();
            }
        }
        if !sleep_or(shutdown, power_off, backoff.step()).await {
            return Ok(None);
        }
    }
}

async fn connect_group_master(
    settings: &AgentSettings,
    deps: &AgentDeps,
    identity: &AgentIdentity,
    avoid: Option<std::net::SocketAddr>,
) -> Result<(glory_protocol::Link, glory_protocol::ControlStream), SessionEnd> {
    let timing = LinkTiming {
        idle_timeout: settings.idle_timeout,
        keep_alive: None,
        initial_rtt: glory_protocol::transport::CONTROL_INITIAL_RTT,
    };
    let tls = identity
        .tls
        .client_tls()
        .map_err(|e| SessionEnd::Reenroll(format!("unusable identity: {e}")))?;
    let config = client_config(tls, timing).map_err(|e| SessionEnd::Reenroll(e.to_string()))?;
    // A handshake with a group master takes milliseconds; one that hangs (a master
    // that died mid-handshake) must not keep us away longer than a couple of heartbeats.
    let connect_timeout = (settings.heartbeat_interval * 3)
        .max(Duration::from_secs(3))
        .min(settings.request_timeout);
    let mut last = SessionEnd::Unreachable("no group master address known".to_string());
    // The master we just lost goes last: its standby is more likely to answer now.
    let mut dialer = Dialer::new(&identity.group_masters, avoid);
    while let Some(addr) = dialer.next_addr() {
        AgentStats::count(&deps.stats.gm_connects);
        let conn = match connect(
            &deps.endpoint,
            config.clone(),
            addr,
            GROUP_MASTER_NAME,
            connect_timeout,
        )
        .await
        {
            Ok(conn) => conn,
            Err(e) => {
                AgentStats::count(&deps.stats.gm_connect_failures);
                // The error names the address and the action.
                last = SessionEnd::Unreachable(e.to_string());
                continue;
            }
        };
        let hello = Hello::new(Role::Agent, identity.node_id.clone());
        match client_hello(&conn, &hello, DEFAULT_MAX_FRAME, settings.request_timeout).await {
            Ok(control) => return Ok((conn, control)),
            Err(LinkError::Refused(r)) => match r.code {
                RefusalCode::Removed => return Err(SessionEnd::Removed(r.message)),
                RefusalCode::BadIdentity => return Err(SessionEnd::Reenroll(r.message)),
                _ => {
                    // A standby names the active master: try it next.
                    dialer.refused(r.code == RefusalCode::Unavailable, r.redirect);
                    last = SessionEnd::Unreachable(format!("refused by {addr}: {r}"));
                }
            },
            Err(e) => last = SessionEnd::Unreachable(format!("hello to {addr}: {e}")),
        }
    }
    Err(last)
}

/// Every group master we knew failed: ask a cluster master where our group is led now.
async fn locate(
    settings: &AgentSettings,
    deps: &AgentDeps,
    identity: &AgentIdentity,
) -> Option<Vec<std::net::SocketAddr>> {
    AgentStats::count(&deps.stats.locates);
    let timing = LinkTiming {
        idle_timeout: settings.request_timeout,
        keep_alive: None,
        // Asking the cluster master, which may be in an enrollment storm.
        initial_rtt: glory_protocol::transport::STORM_INITIAL_RTT,
    };
    let config = client_config(identity.tls.client_tls().ok()?, timing).ok()?;
    // A dead cluster master must not hold us up: a live one answers in milliseconds.
    let locate_timeout = settings.request_timeout.min(Duration::from_secs(2));
    let mut dialer = Dialer::new(&settings.cluster_masters, None);
    while let Some(addr) = dialer.next_addr() {
        let Ok(conn) = connect(
            &deps.endpoint,
            config.clone(),
            addr,
            CLUSTER_MASTER_NAME,
            locate_timeout,
        )
        .await
        else {
            continue;
        };
        let hello = Hello::new(Role::Agent, identity.node_id.clone());
        let answer =
            match client_hello(&conn, &hello, DEFAULT_MAX_FRAME, settings.request_timeout).await {
                Ok(mut control) => {
                    tokio::time::timeout(settings.request_timeout, control.recv::<GroupLocation>())
                        .await
                }
                Err(LinkError::Refused(r)) => {
                    dialer.refused(false, r.redirect);
                    continue;
                }
                Err(_) => continue,
            };
        conn.close(close::NORMAL, "located");
        if let Ok(Ok(Some(location))) = answer {
            if !location.masters.is_empty() {
                return Some(location.masters);
            }
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
async fn session(
    settings: &AgentSettings,
    deps: &AgentDeps,
    identity: &mut AgentIdentity,
    seq: &mut u64,
    shutdown: &CancellationToken,
    power_off: &CancellationToken,
    backoff: &mut Backoff,
    avoid: &mut Option<std::net::SocketAddr>,
    procs: &Arc<Supervisor>,
    setup: &Arc<Setup>,
    monitoring: &mut Monitoring,
    link: &mut LinkLog,
) -> SessionEnd {
    let connecting = connect_group_master(settings, deps, identity, *avoid);
    let (conn, control) = match monitoring.while_away(deps.host.as_ref(), connecting).await {
        Ok(link) => link,
        Err(end) => return end,
    };
    backoff.reset();
    *avoid = None;
    let remote = conn.remote_address();
    AgentStats::count(&deps.stats.sessions);
    let (mut send, recv) = control.split();
    if let Err(e) = send
        .send(&AgentToGroup::Inventory(Box::new(deps.host.inventory())))
        .await
    {
        return SessionEnd::Lost(format!("send inventory: {e}"));
    }
    if let Err(e) = send.send(&AgentToGroup::Processes(procs.snapshot())).await {
        return SessionEnd::Lost(format!("send process states: {e}"));
    }
    if setup.has_news() {
        if let Err(e) = send.send(&AgentToGroup::Setup(setup.report())).await {
            return SessionEnd::Lost(format!("send setup report: {e}"));
        }
    }
    link.connected(identity, remote);

    // Frames are read by their own task: a read cut off mid-frame by select! would
    // desynchronise the stream.
    let mut reader = recv.spawn_reader::<GroupToAgent>();

    let mut ticker = tokio::time::interval(settings.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Metrics: one batch per interval on the agent's own schedule (kept between
    // sessions), series named once per session.
    let mut batches = BatchWriter::default();
    // What the group master lacks of the buffer, sent a minute's worth per interval.
    let mut backfill: Pending = None;
    let session_start = glory_protocol::now_ms();
    // Drift checks (and retries of failed installs) only where something is applied.
    let mut setup_check = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.setup_check,
        settings.setup_check,
    );
    setup_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewal = crate::cert::CertRenewal::new(identity);
    let end = 'session: loop {
        tokio::select! {
            biased;
            _ = power_off.cancelled() => {
                // Silence: keep the connection and streams alive but unused until the
                // idle timeout ends them, so not even a close frame is sent.
                let conn = conn.clone();
                tokio::spawn(async move {
                    let _keep = (send, reader);
                    conn.closed().await;
                });
                return SessionEnd::PoweredOff;
            }
            _ = shutdown.cancelled() => {
                let _ = send.send(&AgentToGroup::Leaving).await;
                send.finish_and_wait(Duration::from_millis(500)).await;
                conn.close(close::LEAVING, "agent shutting down");
                break SessionEnd::Shutdown;
            }
            _ = ticker.tick() => {
                *seq += 1;
                let heartbeat = Heartbeat { seq: *seq, sent_ms: glory_protocol::now_ms(), load: deps.host.load() };
                match frame::encode_body(&heartbeat) {
                    Ok(bytes) => {
                        if let Err(e) = conn.send_datagram(bytes.into()) {
                            break SessionEnd::Lost(format!("send heartbeat: {e}"));
                        }
                        AgentStats::count(&deps.stats.heartbeats_sent);
                    }
                    Err(e) => break SessionEnd::Lost(format!("encode heartbeat: {e}")),
                }
            }
            _ = sleep_until_due(monitoring.due()) => {
                let batch = monitoring.sample(deps.host.as_ref(), &mut batches);
                if let Err(e) = send.send(&AgentToGroup::Samples(batch)).await {
                    break SessionEnd::Lost(format!("send metrics: {e}"));
                }
                if let Err(e) = monitoring.backfill(&mut backfill, &mut batches, &mut send).await {
                    break SessionEnd::Lost(format!("send backfill: {e}"));
                }
            }
            _ = setup.changed.notified() => {
                if setup.take_inventory_due() {
                    let inventory = AgentToGroup::Inventory(Box::new(deps.host.inventory()));
                    if let Err(e) = send.send(&inventory).await {
                        break SessionEnd::Lost(format!("send inventory: {e}"));
                    }
                }
                if let Err(e) = send.send(&AgentToGroup::Setup(setup.report())).await {
                    break SessionEnd::Lost(format!("send setup report: {e}"));
                }
            }
            _ = tokio::time::sleep_until(renewal.due()) => {
                if let Some(request) = renewal.request(&identity.node_id) {
                    if let Err(e) = send.send(&request).await {
                        break SessionEnd::Lost(format!("send certificate request: {e}"));
                    }
                }
            }
            _ = setup_check.tick(), if setup.has_root() => {
                setup.check_drift();
                setup.converge(true);
            }
            _ = procs.changed.notified() => {
                for report in procs.take_unsent() {
                    if let Err(e) = send.send(&AgentToGroup::Process(report)).await {
                        break 'session SessionEnd::Lost(format!("send process state: {e}"));
                    }
                }
            }
            msg = reader.recv() => match msg {
                Some(Ok(Some(GroupToAgent::Start(spec)))) => procs.start(spec),
                Some(Ok(Some(GroupToAgent::Stop { id, epoch }))) => procs.stop(&id, epoch),
                Some(Ok(Some(GroupToAgent::GroupMasters(addrs)))) => {
                    if !addrs.is_empty() && addrs != identity.group_masters {
                        identity.group_masters = addrs;
                        if let Err(e) = deps.store.save(identity) {
                            warn!(error = %e, "cannot save group master addresses");
                        }
                    }
                }
                Some(Ok(Some(GroupToAgent::Probes(specs)))) => monitoring.probes.set(specs),
                Some(Ok(Some(GroupToAgent::Config(config)))) => setup.apply_config(config),
                Some(Ok(Some(GroupToAgent::Software(specs)))) => setup.set_software(specs),
                Some(Ok(Some(GroupToAgent::SamplesHeld { through_ms }))) => {
                    backfill = Some((through_ms, session_start));
                }
                Some(Ok(Some(GroupToAgent::Certificate { cert_pem }))) => {
                    renewal.accept(identity, deps.store.as_ref(), &cert_pem);
                }
                Some(Ok(Some(GroupToAgent::Probe))) => {
                    if let Err(e) = send.send(&AgentToGroup::Alive).await {
                        break SessionEnd::Lost(format!("answer a probe: {e}"));
                    }
                }
                Some(Ok(Some(GroupToAgent::Removed { reason }))) => break SessionEnd::Removed(reason),
                Some(Ok(None)) | None => break SessionEnd::Lost("group master closed the control stream".into()),
                Some(Err(e)) => break SessionEnd::Lost(format!("control stream: {e}")),
            },
            reason = conn.closed() => {
                break match reason {
                    glory_protocol::LinkEnd::ByPeer { code: close::REMOVED, reason } => SessionEnd::Removed(reason),
                    other => SessionEnd::Lost(other.to_string()),
                };
            }
        }
    };
    drop(reader);
    if matches!(end, SessionEnd::Lost(_)) {
        *avoid = Some(remote);
    }
    end
}
