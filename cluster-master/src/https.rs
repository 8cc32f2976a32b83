//! The API over HTTPS: which certificate it presents (one from the cluster CA for the
//! addresses and names clients reach it by, or the operator's), and the accept loop
//! (rustls through tokio-rustls, HTTP/1.1 through hyper, the same axum router as plain
//! HTTP, with the peer's address as `ConnectInfo`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use glory_protocol::api_tls::CertSlot;
use glory_protocol::tls::ClusterCa;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{ApiTls, ClusterMasterSettings};

/// A client must finish its TLS handshake within this.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How long open connections (event streams) get to end at shutdown.
const DRAIN: Duration = Duration::from_secs(2);

/// The names an API certificate from the cluster CA carries: the operator's
/// `api_names`, the addresses the API is advertised and bound at (every address of
/// this host when bound to all), loopback, `localhost` and the host name.
pub(crate) fn api_names(settings: &ClusterMasterSettings, host_ips: &[IpAddr]) -> Vec<String> {
    let mut names: Vec<String> = settings.api_names.clone();
    let mut ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    for addr in [
        Some(settings.api_listen),
        settings.api_advertise,
        settings.advertise,
    ]
    .into_iter()
    .flatten()
    {
        if !addr.ip().is_unspecified() {
            ips.push(addr.ip());
        }
    }
    if settings.api_listen.ip().is_unspecified() {
        ips.extend_from_slice(host_ips);
    }
    names.extend(ips.iter().map(|ip| ip.to_canonical().to_string()));
    names.push("localhost".into());
    if let Some(host) = nix_hostname() {
        names.push(host);
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

fn nix_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    .then(|| name.to_string())
}

/// Every address on this host's interfaces (for a certificate of an API bound to all).
pub(crate) fn host_ips() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| a.address)
            .filter_map(|a| {
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            })
            // Link-local IPv6 needs a zone, which no URL of ours carries.
            .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
            .collect(),
        Err(e) => {
            warn!(error = %e, "cannot list this host's addresses for the API certificate");
            Vec::new()
        }
    }
}

/// The API's TLS: its rustls configuration, and the certificate to renew when the
/// cluster CA issued it (with the names it carries).
pub(crate) struct ApiServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub renewable: Option<(CertSlot, Vec<String>)>,
}

/// The API's TLS configuration, or None for plain HTTP. A certificate from the cluster
/// CA lives `cert_lifetime` like every other and is renewed by `own_certs`.
pub(crate) fn server_config(
    settings: &ClusterMasterSettings,
    ca: &ClusterCa,
) -> anyhow::Result<Option<ApiServerTls>> {
    let (cert, key, names) = match &settings.api_tls {
        ApiTls::Plain => return Ok(None),
        ApiTls::Files { cert, key } => (
            std::fs::read_to_string(cert)
                .with_context(|| format!("api_cert {}", cert.display()))?,
            std::fs::read_to_string(key).with_context(|| format!("api_key {}", key.display()))?,
            None,
        ),
        ApiTls::ClusterCa => {
            let names = api_names(settings, &host_ips());
            info!(?names, "API certificate issued by the cluster CA");
            let (cert, key) =
                glory_protocol::api_tls::issue_api_cert(ca, &names, settings.cert_validity)?;
            (cert, key, Some(names))
        }
    };
    let slot = CertSlot::new(&cert, &key).context("API certificate")?;
    Ok(Some(ApiServerTls {
        config: glory_protocol::api_tls::api_server_tls(&slot).context("API certificate")?,
        renewable: names.map(|names| (slot, names)),
    }))
}

/// Serve `app` over TLS on `listener` until `shutdown`; open connections are then told
/// to finish and given [`DRAIN`].
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, app, shutdown) = (acceptor.clone(), app.clone(), shutdown.clone());
        connections.spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return debug!(%peer, error = %e, "API TLS handshake failed"),
                Err(_) => return debug!(%peer, "API TLS handshake timed out"),
            };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut app = app.clone();
                async move { tower::Service::call(&mut app, req).await }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { debug!(%peer, error = %e, "API connection ended") },
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(DRAIN, connections.wait()).await;
}

/// Where the cluster CA's certificate is written for clients: `<data_dir>/ca.pem`
/// (written atomically at every start; it does not change).
pub(crate) fn write_ca_pem(path: &std::path::Path, ca: &ClusterCa) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == ca.cert_pem()) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, ca.cert_pem()).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// The scheme of the API's URLs.
pub(crate) fn scheme(tls: &ApiTls) -> &'static str {
    match tls {
        ApiTls::Plain => "http",
        _ => "https",
    }
}
