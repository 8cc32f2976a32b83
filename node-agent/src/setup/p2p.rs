//! Large packages peer-to-peer: the cluster master names a `.torrent` for packages
//! above its size threshold, and the agent fetches them with our BitTorrent peer
//! (`glory_content::peer`) from the nodes of its group first, the cluster's seeder
//! last, every piece checked by its SHA-1. The agent then checks the whole file
//! against the package's SHA-256 as it unpacks it. The peer keeps seeding for a while
//! after the download, for the nodes still fetching, then its directory goes.
//!
//! Any failure here (no torrent, a stalled swarm) falls back to the HTTP download
//! through the group's proxy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use glory_content::peer::{Metainfo, Peer, PeerConfig};
use glory_protocol::setup::PackageSpec;
use tracing::{debug, info};

/// The slowest download waited for (bytes a second) before falling back to HTTP, and
/// the least time given.
const SLOWEST: u64 = 256 * 1024;
const AT_LEAST: Duration = Duration::from_secs(300);

/// Fetch `spec` by its torrent into a directory under `dir`: the downloaded file's
/// path. The peer goes on seeding for `seed` and removes the directory after.
/// `client` trusts the cluster CA (the torrent and the tracker are the API's).
pub async fn fetch(
    client: &reqwest::Client,
    torrent_url: &str,
    dir: &Path,
    spec: &PackageSpec,
    seed: Duration,
) -> Result<PathBuf, String> {
    let resp = client
        .get(torrent_url)
        .send()
        .await
        .map_err(|e| format!("torrent {torrent_url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("torrent {torrent_url}: {}", resp.status()));
    }
    let torrent = resp
        .bytes()
        .await
        .map_err(|e| format!("torrent {torrent_url}: {e}"))?;
    let meta = Metainfo::parse(&torrent).map_err(|e| format!("torrent {torrent_url}: {e}"))?;
    if meta.length != spec.size {
        return Err(format!(
            "torrent {torrent_url} is of {} bytes, the package of {}",
            meta.length, spec.size
        ));
    }
    let work = dir.join(format!(
        ".p2p-{}-{:08x}",
        spec.sha256,
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let file = work.join(&spec.sha256);
    let started = Peer::start(PeerConfig::new(meta, file.clone(), client.clone())).await;
    let mut peer = match started {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e.to_string());
        }
    };
    let patience = AT_LEAST.max(Duration::from_secs(spec.size / SLOWEST));
    let outcome = match tokio::time::timeout(patience, peer.finished()).await {
        Ok(done) => done,
        Err(_) => Err("the swarm was too slow; giving up on it".to_string()),
    };
    match outcome {
        Ok(()) => {
            info!(package = %spec.name, version = %spec.version, "package fetched peer-to-peer; seeding");
            // Seeds on; its directory goes when it stops.
            tokio::spawn(async move {
                tokio::time::sleep(seed).await;
                peer.stop().await;
                debug!(dir = %work.display(), "seeding over");
                let _ = tokio::fs::remove_dir_all(&work).await;
            });
            Ok(file)
        }
        Err(e) => {
            peer.stop().await;
            let _ = std::fs::remove_dir_all(&work);
            Err(e)
        }
    }
}

/// Fetch the file of the `.torrent` at `torrent` into `dir`, create `done` once it is
/// whole, seed for `seed`, leave the swarm. An HTTPS tracker is checked against
/// `cacert` (PEM).
pub async fn torrent_get(
    torrent: &Path,
    dir: &Path,
    done: Option<&Path>,
    seed: Duration,
    cacert: Option<&Path>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("{}", p.display()));
    let meta = Metainfo::parse(&read(torrent)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", torrent.display()))?;
    let ca = cacert.map(read).transpose()?;
    let ca = ca.as_deref().map(String::from_utf8_lossy);
    let client = glory_content::http_client(ca.as_deref())?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let file = dir.join(&meta.name);
    let mut peer = Peer::start(PeerConfig::new(meta, file, client)).await?;
    peer.finished().await.map_err(anyhow::Error::msg)?;
    if let Some(done) = done {
        std::fs::write(done, b"").with_context(|| format!("{}", done.display()))?;
    }
    let (up, down) = peer.transferred();
    info!(downloaded = down, uploaded = up, "fetched; seeding");
    tokio::time::sleep(seed).await;
    peer.stop().await;
    Ok(())
}
