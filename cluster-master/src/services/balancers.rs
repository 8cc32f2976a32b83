//! The balancers the active cluster master owns, one per service that asks for one:
//! a task per balancer keeps its backends equal to the service's healthy instances
//! (the reconciler sends the wanted set; the task syncs on every change and every
//! two seconds, so a balancer restarted by hand is repaired). Removals drain first;
//! what the balancer still has is published, so the reconciler stops an instance's
//! process only once the balancer let go of it.
//!
//! Files live under `<data_dir>/balancers/<service>/` (HAProxy's configuration,
//! runtime API socket and log; keepalived's configuration).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glory_service_manager::balancer::haproxy::Haproxy;
use glory_service_manager::balancer::ipvs::{self, Ipvs};
use glory_service_manager::balancer::keepalived::{self, Keepalived};
use glory_service_manager::balancer::nftables::{self, NftBalancer};
use glory_service_manager::balancer::Backend;
use glory_service_manager::spec::{Balancer, BalancerDriver};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a removed backend may keep connections before they are cut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A balancer that could not start is tried again after this long.
const RETRY: Duration = Duration::from_secs(5);

/// What a balancer is doing, for the API and the reconciler.
#[derive(Clone, Debug, Default)]
pub(crate) struct BalancerStatus {
    /// The backends it has (draining ones included); `None` until it ran once.
    pub present: Option<BTreeSet<String>>,
    /// Why it is not working, if it is not.
    pub error: Option<String>,
    /// Backends it sends new connections to.
    pub serving: usize,
    /// New connections per second over the last interval (HAProxy only).
    pub rate: Option<f64>,
}

struct Handle {
    spec: Balancer,
    wanted: watch::Sender<Vec<Backend>>,
    status: Arc<Mutex<BalancerStatus>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub(crate) struct Balancers {
    dir: PathBuf,
    running: Mutex<BTreeMap<String, Handle>>,
}

impl Default for Balancers {
    fn default() -> Self {
        Balancers::new(PathBuf::from("balancers"))
    }
}

impl Balancers {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Balancers {
            dir,
            running: Mutex::default(),
        }
    }

    /// Make service `name`'s balancer (as `spec` says; none: closed) send to `wanted`.
    /// Returns its status.
    pub(crate) fn want(
        &self,
        name: &str,
        spec: Option<&Balancer>,
        wanted: Vec<Backend>,
    ) -> Option<BalancerStatus> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let Some(spec) = spec else {
            if let Some(h) = running.remove(name) {
                h.cancel.cancel();
            }
            return None;
        };
        if running.get(name).is_some_and(|h| &h.spec != spec) {
            if let Some(h) = running.remove(name) {
                info!(service = %name, "balancer changed; starting it again");
                h.cancel.cancel();
            }
        }
        let handle = running.entry(name.to_string()).or_insert_with(|| {
            let (tx, rx) = watch::channel(Vec::new());
            let status = Arc::new(Mutex::new(BalancerStatus::default()));
            let cancel = CancellationToken::new();
            let task = tokio::spawn(run(
                name.to_string(),
                spec.clone(),
                self.dir.join(name),
                rx,
                status.clone(),
                cancel.clone(),
            ));
            Handle {
                spec: spec.clone(),
                wanted: tx,
                status,
                cancel,
                task,
            }
        });
        handle.wanted.send_if_modified(|current| {
            if *current != wanted {
                *current = wanted;
                true
            } else {
                false
            }
        });
        let status = handle
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Some(status)
    }

    /// The status of service `name`'s balancer, if it has one.
    pub(crate) fn status(&self, name: &str) -> Option<BalancerStatus> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running
            .get(name)
            .map(|h| h.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Close service `name`'s balancer and wait for it to be gone.
    pub(crate) async fn close(&self, name: &str) {
        let handle = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(h) = handle {
            h.cancel.cancel();
            let _ = h.task.await;
        }
    }

    /// Close every balancer (the master stepped down or stops).
    pub(crate) async fn close_all(&self) {
        let names: Vec<String> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for name in names {
            self.close(&name).await;
        }
    }
}

/// A started driver.
enum Driver {
    Haproxy(Haproxy),
    Keepalived(Keepalived),
    Nftables(NftBalancer),
    Ipvs(Box<Ipvs>, ipvs::Service),
}

async fn start(spec: &Balancer, dir: &std::path::Path) -> anyhow::Result<Driver> {
    match spec.driver {
        BalancerDriver::Haproxy => Ok(Driver::Haproxy(
            Haproxy::start(dir, spec.listen, spec.algorithm).await?,
        )),
        BalancerDriver::Keepalived => {
            std::fs::create_dir_all(dir)?;
            Ok(Driver::Keepalived(Keepalived::new(
                dir.join("keepalived.conf"),
                dir.join("keepalived.pid"),
            )?))
        }
        BalancerDriver::Nftables => Ok(Driver::Nftables(NftBalancer::new(
            &service_name(dir),
            spec.listen,
            spec.algorithm,
            nftables::Options::default(),
        )?)),
        BalancerDriver::Ipvs => Ok(Driver::Ipvs(
            Box::new(Ipvs::connect().await?),
            ipvs::Service {
                listen: spec.listen,
                algorithm: spec.algorithm,
            },
        )),
    }
}

/// The service a balancer directory belongs to (its last component).
fn service_name(dir: &std::path::Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Sync `driver` to `wanted`; the backends it has afterwards.
async fn sync(
    service: &str,
    spec: &Balancer,
    driver: &mut Driver,
    wanted: &[Backend],
) -> anyhow::Result<BTreeSet<String>> {
    match driver {
        Driver::Haproxy(h) => {
            log_sync(service, "HAProxy", &h.sync(wanted, DRAIN_TIMEOUT).await?);
            Ok(h.servers().await?.into_iter().map(|s| s.name).collect())
        }
        Driver::Keepalived(k) => {
            let text = keepalived::render(service, spec.listen, spec.algorithm, wanted);
            let applied = k.apply(&text).await?;
            if applied.changed {
                info!(
                    service,
                    backends = wanted.len(),
                    reloaded = applied.reloaded,
                    "keepalived configuration written"
                );
            }
            Ok(wanted.iter().map(|b| b.name.clone()).collect())
        }
        // Kernel balancers: a removed backend gets no new connection at once, and
        // conntrack (IPVS: its own table) keeps the open ones going.
        Driver::Nftables(n) => {
            n.sync(wanted).await?;
            Ok(wanted.iter().map(|b| b.name.clone()).collect())
        }
        Driver::Ipvs(i, svc) => {
            log_sync(service, "IPVS", &i.sync(svc, wanted, DRAIN_TIMEOUT).await?);
            Ok(wanted.iter().map(|b| b.name.clone()).collect())
        }
    }
}

fn log_sync(service: &str, what: &str, report: &glory_service_manager::balancer::SyncReport) {
    if *report != Default::default() {
        info!(
            service,
            added = report.added,
            removed = report.removed,
            reweighted = report.reweighted,
            cut = report.cut,
            "{what} updated"
        );
    }
}

/// The backend's session total (`stot`) in HAProxy's `show stat` CSV.
fn total_sessions(stat: &str) -> Option<u64> {
    stat.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| {
            f.len() > 7
                && f[0] == glory_service_manager::balancer::haproxy::BACKEND
                && f[1] == "BACKEND"
        })
        .and_then(|f| f[7].parse().ok())
}

async fn run(
    service: String,
    spec: Balancer,
    dir: PathBuf,
    mut wanted: watch::Receiver<Vec<Backend>>,
    status: Arc<Mutex<BalancerStatus>>,
    cancel: CancellationToken,
) {
    let set =
        |f: &dyn Fn(&mut BalancerStatus)| f(&mut status.lock().unwrap_or_else(|p| p.into_inner()));
    let mut driver = loop {
        match start(&spec, &dir).await {
            Ok(d) => {
                info!(service = %service, listen = %spec.listen, driver = ?spec.driver, "balancer started");
                break d;
            }
            Err(e) => {
                warn!(service = %service, error = %e, "balancer cannot start; retrying");
                set(&|s| s.error = Some(format!("{e:#}")));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut sessions: Option<(u64, std::time::Instant)> = None;
    loop {
        if let Driver::Haproxy(h) = &driver {
            if let Some(total) = h
                .command("show stat")
                .await
                .ok()
                .and_then(|s| total_sessions(&s))
            {
                let now = std::time::Instant::now();
                if let Some((before, at)) = sessions {
                    let secs = now.duration_since(at).as_secs_f64();
                    if secs >= 0.5 {
                        let rate = total.saturating_sub(before) as f64 / secs;
                        set(&|s| s.rate = Some(rate));
                        sessions = Some((total, now));
                    }
                } else {
                    sessions = Some((total, now));
                }
            }
        }
        let backends = wanted.borrow_and_update().clone();
        match sync(&service, &spec, &mut driver, &backends).await {
            Ok(present) => set(&|s| {
                s.present = Some(present.clone());
                s.error = None;
                s.serving = backends.len();
            }),
            Err(e) => {
                warn!(service = %service, error = %e, "balancer sync failed; retrying");
                set(&|s| s.error = Some(format!("{e:#}")));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
            changed = wanted.changed() => if changed.is_err() { break },
        }
    }
    match driver {
        Driver::Haproxy(h) => h.stop().await,
        Driver::Nftables(n) => {
            if let Err(e) = n.stop().await {
                warn!(service = %service, error = %e, "cannot remove the nftables table");
            }
        }
        Driver::Ipvs(mut i, svc) => {
            if let Err(e) = i.remove_service(&svc).await {
                warn!(service = %service, error = %e, "cannot remove the IPVS service");
            }
        }
        Driver::Keepalived(_) => {}
    }
    info!(service = %service, "balancer closed");
}
