//! Content spread peer-to-peer, as the cluster master does for images and large
//! packages and a provisioner does for the images its machines boot: a `.torrent` per
//! file (made once from the stored file, kept beside the store), a seeder per torrent
//! (our [`Peer`], in this process, serving the stored file read-only), and the
//! [`Tracker`] every torrent announces to.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use tracing::{info, warn};

use crate::peer::{Metainfo, Peer, PeerConfig, PeerError};
use crate::torrent::{make_torrent, Torrent};
use crate::tracker::{SwarmStats, Tracker};

/// Peer ids of our seeders start with this, so the tracker counts their uploads apart
/// from the peers'.
pub const SEEDER_PREFIX: &str = "-GLORYSEED-";

/// Why a torrent could not be offered.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("torrent of {sha}: {source}")]
    Torrent { sha: String, source: std::io::Error },
    #[error("cannot start the seeder: {0}")]
    Seeder(#[from] PeerError),
    #[error("torrent of {sha}: {reason}")]
    Unreadable { sha: String, reason: String },
}

/// Torrents, their seeders and the tracker.
pub struct Swarms {
    tracker: Mutex<Tracker>,
    torrents: Mutex<HashMap<String, Torrent>>,
    seeders: Mutex<HashMap<String, Peer>>,
    /// Where `.torrent` files are kept.
    torrent_dir: PathBuf,
    /// The directory the seeded files are in, each named by its SHA-256 (a content
    /// store's `sha256/`).
    files_dir: PathBuf,
    /// The seeders' upload limit in KiB/s (0: none).
    upload_kib: u64,
    /// What seeders announce with (it trusts the cluster CA when the tracker is HTTPS).
    client: reqwest::Client,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Swarms {
    /// Peers re-announce every `interval_s`; torrents are kept in `torrent_dir`; the
    /// files seeded are `files_dir/<sha256>`.
    pub fn new(interval_s: u64, torrent_dir: PathBuf, files_dir: PathBuf, upload_kib: u64) -> Self {
        Swarms {
            tracker: Mutex::new(Tracker::new(interval_s, SEEDER_PREFIX.as_bytes())),
            torrents: Mutex::new(HashMap::new()),
            seeders: Mutex::new(HashMap::new()),
            torrent_dir,
            files_dir,
            upload_kib,
            client: reqwest::Client::new(),
        }
    }

    /// Seeders check the tracker's HTTPS certificate against the CA in `ca_file` (PEM).
    pub fn trusting(self, ca_file: Option<PathBuf>) -> Self {
        let Some(path) = ca_file else {
            return self;
        };
        let client = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|pem| crate::http_client(Some(&pem)).map_err(|e| e.to_string()));
        match client {
            Ok(client) => Swarms { client, ..self },
            Err(e) => {
                warn!(ca = %path.display(), error = %e, "seeders cannot check the tracker's certificate");
                self
            }
        }
    }

    pub fn tracker(&self) -> MutexGuard<'_, Tracker> {
        lock(&self.tracker)
    }

    /// The torrent of the stored file `sha` (`what` it is, for the log), announced to
    /// `announce`, with its seeder running. Made on the first call (the file is read
    /// once, off the async threads).
    pub async fn torrent(
        &self,
        sha: &str,
        what: &str,
        announce: &str,
    ) -> Result<Torrent, SwarmError> {
        let file = self.torrent_dir.join(format!("{sha}.torrent"));
        let cached = lock(&self.torrents).get(sha).cloned();
        let torrent = match cached {
            Some(t) => t,
            None => {
                let err = |source| SwarmError::Torrent {
                    sha: sha.to_string(),
                    source,
                };
                let (path, name, announce) = (
                    self.files_dir.join(sha),
                    sha.to_string(),
                    announce.to_string(),
                );
                let (file2, dir) = (file.clone(), self.torrent_dir.clone());
                let torrent = tokio::task::spawn_blocking(move || -> std::io::Result<Torrent> {
                    let t = make_torrent(&path, &name, &announce)?;
                    std::fs::create_dir_all(&dir)?;
                    std::fs::write(&file2, &t.bytes)?;
                    Ok(t)
                })
                .await
                .map_err(|e| err(std::io::Error::other(e)))?
                .map_err(err)?;
                self.tracker().allow(torrent.info_hash);
                lock(&self.torrents).insert(sha.to_string(), torrent.clone());
                info!(%sha, of = %what, pieces = torrent.pieces, "torrent made");
                torrent
            }
        };
        self.ensure_seeder(sha, &torrent).await?;
        Ok(torrent)
    }

    /// The torrent of `sha`, if one was made (its seeder is not touched).
    pub fn known(&self, sha: &str) -> Option<Torrent> {
        lock(&self.torrents).get(sha).cloned()
    }

    /// What the swarm of `torrent` has moved.
    pub fn stats(&self, torrent: &Torrent) -> SwarmStats {
        self.tracker().stats(&torrent.info_hash).unwrap_or_default()
    }

    /// Start the seeder of `sha` unless it runs.
    async fn ensure_seeder(&self, sha: &str, torrent: &Torrent) -> Result<(), SwarmError> {
        if lock(&self.seeders).contains_key(sha) {
            return Ok(());
        }
        let meta = Metainfo::parse(&torrent.bytes).map_err(|reason| SwarmError::Unreadable {
            sha: sha.to_string(),
            reason,
        })?;
        let seeder = Peer::start(PeerConfig {
            id_prefix: SEEDER_PREFIX.into(),
            upload_limit: (self.upload_kib > 0).then_some(self.upload_kib * 1024),
            whole: true,
            ..PeerConfig::new(meta, self.files_dir.join(sha), self.client.clone())
        })
        .await?;
        info!(%sha, port = seeder.port(), "seeder started");
        // Of two started at once, one is kept; the other stops as it is dropped.
        lock(&self.seeders).entry(sha.to_string()).or_insert(seeder);
        Ok(())
    }

    /// The file `sha` is gone: stop seeding and tracking it.
    pub fn stop(&self, sha: &str) {
        // A seeder stops (and leaves the swarm) when it is dropped.
        drop(lock(&self.seeders).remove(sha));
        if let Some(t) = lock(&self.torrents).remove(sha) {
            self.tracker().forget(&t.info_hash);
        }
    }
}
