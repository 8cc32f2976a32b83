//! The provisioner's link to the cluster master: enroll once with a bootstrap token of
//! scope `provisioner` (identity kept in the state directory), then keep a link up
//! (role `provisioner`, mutual TLS), reconnecting forever and following a standby's
//! redirect. Boot plans are requests with answers; progress is batched.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use glory_protocol::renewal::{CertPeriod, Renewer};
use glory_protocol::targets::Targets;
use glory_protocol::tls::CLUSTER_MASTER_NAME;
use glory_protocol::transport::{client_config, client_hello, connect};
use glory_protocol::{
    close, BootPlan, BootProgress, CaTrust, ClusterToProvisioner, EnrollKind, EnrollRequest, Hello,
    LinkError, LinkTiming, ProvisionerToCluster, Role, TlsIdentity,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(6);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<BootPlan, String>>>>>;

/// What the rest of the provisioner uses to talk to the cluster master.
#[derive(Clone)]
pub struct Uplink {
    requests: mpsc::Sender<ProvisionerToCluster>,
    progress: mpsc::UnboundedSender<BootProgress>,
    pending: Pending,
    next: Arc<AtomicU64>,
}

impl Uplink {
    /// Plan a boot of `mac`: a token minted for it and where the masters are.
    pub async fn plan(&self, mac: &str, ip: Option<String>) -> Result<BootPlan, String> {
        let request = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request, tx);
        let msg = ProvisionerToCluster::PlanBoot {
            request,
            mac: mac.to_string(),
            ip,
        };
        let sent = self.requests.try_send(msg).is_ok();
        let answer = if sent {
            tokio::time::timeout(REQUEST_TIMEOUT, rx).await.ok()
        } else {
            None
        };
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request);
        match answer {
            Some(Ok(plan)) => plan,
            _ => Err("the cluster master did not answer (link down?)".into()),
        }
    }

    /// Report progress (sent in batches).
    pub fn report(&self, progress: BootProgress) {
        let _ = self.progress.send(progress);
    }
}

/// Enroll when there is no identity in `state_dir` yet; the identity either way.
pub async fn identity(
    state_dir: &Path,
    name: &str,
    http: &str,
    token: Option<&str>,
    trust: &CaTrust,
    masters: &[SocketAddr],
    shutdown: &CancellationToken,
) -> anyhow::Result<TlsIdentity> {
    let path = state_dir.join("identity.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let held: TlsIdentity =
            serde_json::from_str(&text).with_context(|| format!("read {}", path.display()))?;
        let now_s = glory_protocol::now_ms() / 1000;
        if CertPeriod::of(&held.cert_pem).is_ok_and(|p| !p.expired(now_s)) {
            return Ok(held);
        }
        if token.is_none() {
            bail!(
                "provisioner {name}: its certificate in {} expired while it was not running \
                 (it renews only while connected): give it a bootstrap token \
                 (glory bootstrap-tokens create --scope provisioner) to enroll again",
                path.display()
            );
        }
        warn!(provisioner = %name, "our certificate expired while we were not running; enrolling again");
    }
    let Some(token) = token else {
        bail!(
            "provisioner {name} has no identity in {} and no bootstrap token to enroll with \
             (glory bootstrap-tokens create --scope provisioner)",
            state_dir.display()
        );
    };
    let endpoint = glory_protocol::transport::client_endpoint("0.0.0.0:0".parse()?)?;
    let (key_pem, csr_pem) = glory_protocol::tls::generate_csr()?;
    let request = EnrollRequest {
        token: token.to_string(),
        kind: EnrollKind::Provisioner {
            name: name.to_string(),
            http: http.to_string(),
        },
        csr_pem,
    };
    let mut targets = Targets::new(masters).context("no cluster master address configured")?;
    let mut delay = Duration::from_millis(200);
    let machine = format!("provisioner-{name}");
    loop {
        let target = targets.current();
        let attempt = glory_protocol::enroll::enroll_within(
            &endpoint,
            target,
            trust,
            &machine,
            &request,
            REQUEST_TIMEOUT,
            Duration::from_secs(20),
        );
        let result = tokio::select! {
            _ = shutdown.cancelled() => bail!("shut down while enrolling"),
            r = attempt => r,
        };
        match result {
            Ok(enrolled) => {
                let identity = TlsIdentity {
                    cert_pem: enrolled.cert_pem,
                    key_pem,
                    ca_pem: enrolled.ca_pem,
                };
                glory_protocol::process::write_private(
                    &path,
                    &serde_json::to_vec_pretty(&identity)?,
                )?;
                info!(provisioner = %name, "enrolled with the cluster master");
                return Ok(identity);
            }
            Err(e) => {
                if let Some(r) = e.refusal() {
                    if !r.code.is_retryable() {
                        bail!("enroll with cluster master {target}: refused: {r}");
                    }
                }
                warn!(provisioner = %name, error = %e, retry_in = ?delay, "enrollment failed; retrying");
                match e.refusal() {
                    Some(r) => {
                        targets.refused(r.redirect);
                    }
                    None => targets.failed(),
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Start the link; it runs until `shutdown`.
pub fn start(
    identity: TlsIdentity,
    identity_file: PathBuf,
    name: String,
    http: String,
    masters: Vec<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<Uplink> {
    let (req_tx, req_rx) = mpsc::channel(4096);
    let (prog_tx, prog_rx) = mpsc::unbounded_channel();
    let pending: Pending = Arc::default();
    let uplink = Uplink {
        requests: req_tx,
        progress: prog_tx,
        pending: pending.clone(),
        next: Arc::new(AtomicU64::new(1)),
    };
    let endpoint = glory_protocol::transport::client_endpoint("0.0.0.0:0".parse()?)?;
    let renewal = Renewal {
        renewer: Renewer::new(&identity.cert_pem)?,
        identity,
        file: identity_file,
    };
    tokio::spawn(link_loop(
        endpoint, renewal, name, http, masters, pending, req_rx, prog_rx, shutdown,
    ));
    Ok(uplink)
}

/// Our identity, renewed over the link and saved where a restart finds it.
struct Renewal {
    identity: TlsIdentity,
    renewer: Renewer,
    file: PathBuf,
}

impl Renewal {
    fn renewed(&mut self, name: &str, cert_pem: &str) {
        match self.renewer.accept(&self.identity, cert_pem) {
            Ok(next) => {
                if let Err(e) = serde_json::to_vec_pretty(&next)
                    .map_err(anyhow::Error::from)
                    .and_then(|json| Ok(glory_protocol::process::write_private(&self.file, &json)?))
                {
                    warn!(provisioner = %name, error = %e, "cannot save the renewed identity");
                }
                self.identity = next;
                info!(provisioner = %name, "certificate renewed");
            }
            Err(e) => {
                warn!(provisioner = %name, error = %e, "certificate from the cluster master not taken")
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn link_loop(
    endpoint: glory_protocol::LinkEndpoint,
    mut renewal: Renewal,
    name: String,
    http: String,
    masters: Vec<SocketAddr>,
    pending: Pending,
    mut requests: mpsc::Receiver<ProvisionerToCluster>,
    mut progress: mpsc::UnboundedReceiver<BootProgress>,
    shutdown: CancellationToken,
) {
    let Some(mut targets) = Targets::new(&masters) else {
        warn!("no cluster master address configured");
        return;
    };
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let target = targets.current();
        let result = session(
            &endpoint,
            &mut renewal,
            &name,
            &http,
            target,
            &pending,
            &mut requests,
            &mut progress,
            &shutdown,
        )
        .await
        .map_err(|e| e.at("link to cluster master", target));
        match result {
            Ok(()) => return,
            Err(LinkError::Refused(r)) if targets.redirect(r.redirect) => continue,
            Err(e) => {
                warn!(provisioner = %name, error = %e, "cluster master link down; retrying");
                targets.failed();
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    endpoint: &glory_protocol::LinkEndpoint,
    renewal: &mut Renewal,
    name: &str,
    http: &str,
    target: SocketAddr,
    pending: &Pending,
    requests: &mut mpsc::Receiver<ProvisionerToCluster>,
    progress: &mut mpsc::UnboundedReceiver<BootProgress>,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    let timing = LinkTiming {
        idle_timeout: IDLE_TIMEOUT,
        keep_alive: Some(IDLE_TIMEOUT / 3),
        initial_rtt: glory_protocol::transport::CONTROL_INITIAL_RTT,
    };
    let config = client_config(renewal.identity.client_tls()?, timing)?;
    let conn = connect(
        endpoint,
        config,
        target,
        CLUSTER_MASTER_NAME,
        REQUEST_TIMEOUT,
    )
    .await?;
    let control = client_hello(
        &conn,
        &Hello::new(Role::Provisioner, name),
        glory_protocol::DEFAULT_MAX_FRAME,
        REQUEST_TIMEOUT,
    )
    .await?;
    let (mut send, recv) = control.split();
    send.send(&ProvisionerToCluster::Register {
        http: http.to_string(),
    })
    .await?;
    info!(provisioner = %name, cluster_master = %target, "connected to the cluster master");
    let mut reader = recv.spawn_reader::<ClusterToProvisioner>();
    let mut flush = tokio::time::interval(Duration::from_millis(200));
    let mut batch: Vec<BootProgress> = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                send.finish();
                conn.close(close::SHUTDOWN, "provisioner shutting down");
                return Ok(());
            }
            msg = requests.recv() => {
                let Some(msg) = msg else { return Ok(()) };
                send.send(&msg).await?;
            }
            p = progress.recv() => {
                if let Some(p) = p { batch.push(p); }
            }
            _ = flush.tick() => {
                if !batch.is_empty() {
                    send.send(&ProvisionerToCluster::Progress(std::mem::take(&mut batch))).await?;
                }
            }
            _ = tokio::time::sleep_until(renewal.renewer.due().into()) => {
                match renewal.renewer.request() {
                    Ok(csr_pem) => send.send(&ProvisionerToCluster::Renew { csr_pem }).await?,
                    Err(e) => warn!(provisioner = %name, error = %e, "cannot make a certificate request"),
                }
            }
            msg = reader.recv() => match msg {
                Some(Ok(Some(ClusterToProvisioner::Plan { request, mac, plan }))) => {
                    let waiter = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&request);
                    match waiter {
                        Some(tx) => { let _ = tx.send(plan); }
                        None => debug!(%mac, request, "a boot plan came after its request gave up"),
                    }
                }
                Some(Ok(Some(ClusterToProvisioner::Certificate { cert_pem }))) => renewal.renewed(name, &cert_pem),
                Some(Ok(None)) | None => return Err(LinkError::Closed),
                Some(Err(e)) => {
                    conn.close(close::PROTOCOL_ERROR, "bad frame");
                    return Err(LinkError::Frame(glory_protocol::FrameError::Decode(e)));
                }
            },
            e = conn.closed() => return Err(e.into()),
        }
    }
}
