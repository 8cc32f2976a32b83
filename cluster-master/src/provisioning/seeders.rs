//! Images spread peer-to-peer: the `.torrent` of an image's root filesystem (made
//! once, kept beside the content store), a seeder per torrent (Debian's `aria2c`, a
//! maintained BitTorrent client, run as a child that stops with this process), and
//! the tracker every torrent announces to (`GET /announce` beside the API; peers of
//! the announcing node's group first, the cluster's seeders last).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use glory_content::torrent::{make_torrent, Torrent};
use glory_content::tracker::Tracker;
use glory_keymaster::schema::images::ImageRecord;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::pools::OpError;

/// Peer ids of the cluster's seeders start with this (`aria2c --peer-id-prefix`).
pub(crate) const SEEDER_PREFIX: &str = "-GLORYSEED-";

/// Torrents, their seeders and the tracker.
pub(crate) struct Distribution {
    pub(crate) tracker: Mutex<Tracker>,
    torrents: Mutex<HashMap<String, Torrent>>,
    seeders: Mutex<HashMap<String, tokio::process::Child>>,
}

impl Distribution {
    pub(crate) fn new(interval_s: u64) -> Distribution {
        Distribution {
            tracker: Mutex::new(Tracker::new(interval_s, SEEDER_PREFIX.as_bytes())),
            torrents: Mutex::new(HashMap::new()),
            seeders: Mutex::new(HashMap::new()),
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        Self::lock(&self.tracker)
    }
}

impl Cluster {
    /// The torrent of `image`'s root filesystem, with its seeder running.
    pub(crate) async fn image_torrent(&self, image: &ImageRecord) -> Result<Torrent, OpError> {
        let what = format!("image {} version {}", image.name, image.version);
        self.content_torrent(&image.rootfs.sha256, &what).await
    }

    /// What content spreads peer-to-peer: an image's root filesystem, or a package
    /// version at least the size the settings name. Its description, None for other
    /// content.
    pub(crate) fn distributed(&self, sha: &str) -> Option<String> {
        if let Some(i) = self.images.images().iter().find(|i| i.rootfs.sha256 == sha) {
            return Some(format!("image {} version {}", i.name, i.version));
        }
        let min = self.settings.p2p_min_bytes?;
        self.images.software().iter().find_map(|p| {
            p.versions
                .iter()
                .find(|v| v.blob.sha256 == sha && v.blob.size >= min)
                .map(|v| format!("package {} version {}", p.name, v.version))
        })
    }

    /// The torrent of stored content `sha` (`what` it is, for the log), with its
    /// seeder running.
    pub(crate) async fn content_torrent(&self, sha: &str, what: &str) -> Result<Torrent, OpError> {
        let sha = sha.to_string();
        let dist = &self.distribution;
        let dir = self.settings.content_dir.join("torrents");
        let file = dir.join(format!("{sha}.torrent"));
        let cached = Distribution::lock(&dist.torrents).get(&sha).cloned();
        let torrent = match cached {
            Some(t) => t,
            None => {
                let path = self
                    .images
                    .content
                    .path(&sha)
                    .filter(|p| p.exists())
                    .ok_or_else(|| OpError::NotFound(format!("no content {sha} is stored")))?;
                let announce = format!("{}/announce", self.content_url());
                let (name, file2, dir2) = (sha.clone(), file.clone(), dir.clone());
                let torrent = tokio::task::spawn_blocking(move || -> std::io::Result<Torrent> {
                    let t = make_torrent(&path, &name, &announce)?;
                    std::fs::create_dir_all(&dir2)?;
                    std::fs::write(&file2, &t.bytes)?;
                    Ok(t)
                })
                .await
                .map_err(|e| OpError::Invalid(format!("torrent: {e}")))?
                .map_err(|e| OpError::Invalid(format!("torrent of {sha}: {e}")))?;
                dist.tracker().allow(torrent.info_hash);
                Distribution::lock(&dist.torrents).insert(sha.clone(), torrent.clone());
                info!(%sha, of = %what, pieces = torrent.pieces, "torrent made");
                torrent
            }
        };
        self.ensure_seeder(&sha, &file)?;
        Ok(torrent)
    }

    /// Start the seeder of `sha` unless it runs.
    fn ensure_seeder(&self, sha: &str, torrent: &std::path::Path) -> Result<(), OpError> {
        let mut seeders = Distribution::lock(&self.distribution.seeders);
        if let Some(child) = seeders.get_mut(sha) {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
        }
        let content = self.settings.content_dir.join("sha256");
        let upload = self.settings.seed_upload_kib;
        let child = tokio::process::Command::new("aria2c")
            .arg(format!("--dir={}", content.display()))
            .args([
                "--seed-ratio=0.0",
                "--bt-seed-unverified=true",
                "--check-integrity=false",
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--file-allocation=none",
                "--listen-port=6881-6999",
                "--bt-max-peers=0",
                "--summary-interval=0",
                "--console-log-level=error",
                "--quiet=true",
            ])
            .arg(format!("--peer-id-prefix={SEEDER_PREFIX}"))
            .arg(format!("--max-overall-upload-limit={upload}K"))
            .arg(format!("--stop-with-process={}", std::process::id()))
            .arg(torrent)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| OpError::Conflict {
                message: format!("cannot start the seeder (aria2c; apt-get install aria2): {e}"),
                fit: None,
            })?;
        info!(%sha, pid = ?child.id(), "seeder started");
        seeders.insert(sha.to_string(), child);
        Ok(())
    }

    /// Content that spread peer-to-peer is gone: stop seeding and tracking it.
    pub(crate) fn stop_seeding(&self, sha: &str) {
        if let Some(mut child) = Distribution::lock(&self.distribution.seeders).remove(sha) {
            if let Err(e) = child.start_kill() {
                warn!(%sha, error = %e, "cannot stop the seeder");
            }
        }
        if let Some(t) = Distribution::lock(&self.distribution.torrents).remove(sha) {
            self.distribution.tracker().forget(&t.info_hash);
        }
    }

    /// The group of the node at `ip` (where its agent connects from, or an address on
    /// its interfaces).
    pub(crate) fn group_of_ip(&self, ip: IpAddr) -> Option<String> {
        let text = ip.to_string();
        let reg = self.read();
        reg.nodes
            .values()
            .find(|n| {
                n.record.reached_from.as_deref() == Some(text.as_str())
                    || n.record.inventory.nics.iter().any(|nic| {
                        nic.addresses
                            .iter()
                            .any(|a| a.split('/').next() == Some(text.as_str()))
                    })
            })
            .map(|n| n.record.group.clone())
    }
}
