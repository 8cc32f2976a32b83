//! A cluster master on a runtime of its own, as a process of its own would be: its
//! tasks, sockets and etcd client live on that runtime and die with it. `kill` drops
//! them all at once and says nothing (`kill -9` semantics: no resignation, no close
//! frames; its leadership lease runs out in etcd and a standby takes over).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use glory_cluster_master::{ClusterMasterConfig, ClusterMasterHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(super) struct CmProcess {
    pub(super) name: String,
    pub(super) quic: SocketAddr,
    pub(super) api: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    /// Ends when this master leads (or fails, or is stopped before it leads).
    started: Option<JoinHandle<anyhow::Result<ClusterMasterHandle>>>,
    stop: CancellationToken,
}

/// A free loopback port for UDP and one for TCP: a standby must be given its
/// addresses before it leads (group masters and agents are told them up front).
pub(super) fn free_addrs() -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    Ok((udp, tcp))
}

impl CmProcess {
    /// Start a cluster master on `config` (its own data directory and addresses, the
    /// key master of the run): it campaigns for leadership at once.
    pub(super) fn spawn(name: &str, config: ClusterMasterConfig) -> anyhow::Result<CmProcess> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("sim-{name}"))
            .enable_all()
            .build()
            .context("a runtime for a cluster master")?;
        let (quic, api) = (config.listen, config.api_listen);
        let settings = config.validate()?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let started = runtime.spawn(async move {
            let km = glory_cluster_master::open_keymaster(&config, &token).await?;
            glory_cluster_master::start(settings, km, None, token).await
        });
        Ok(CmProcess {
            name: name.to_string(),
            quic,
            api,
            runtime: Some(runtime),
            started: Some(started),
            stop,
        })
    }

    /// The master's handle once it leads; `None` while it stands by (or was taken).
    pub(super) async fn leading(&mut self) -> Option<anyhow::Result<ClusterMasterHandle>> {
        if !self.started.as_ref()?.is_finished() {
            return None;
        }
        let started = self.started.take()?;
        Some(match started.await {
            Ok(r) => r.with_context(|| format!("cluster master {}", self.name)),
            Err(e) => Err(anyhow::anyhow!("cluster master {}: {e}", self.name)),
        })
    }

    /// Drop everything at once, as `kill -9` would.
    pub(super) fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Shut down in order: the leader (`handle`) lets its tasks end and resigns; a
    /// standby stops campaigning.
    pub(super) async fn stop(mut self, handle: Option<ClusterMasterHandle>) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            if let Some(h) = handle {
                h.wait().await;
            }
            if let Some(started) = self.started.take() {
                let _ = started.await;
            }
        })
        .await;
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for CmProcess {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
