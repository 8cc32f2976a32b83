//! Content spread peer-to-peer, as the cluster master does for images and large
//! packages and a provisioner does for the images its machines boot: a `.torrent` per
//! file (made once from the stored file, kept beside the store), a seeder per torrent
//! (Debian's `aria2c`, a maintained BitTorrent client, run as a child that stops with
//! this process), and the [`Tracker`] every torrent announces to.
//!
//! [`ARIA2C_ARGS`] are the flags every `aria2c` of ours runs with, seeder or peer:
//! peers come from our tracker only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tracing::{info, warn};

use crate::torrent::{make_torrent, Torrent};
use crate::tracker::{SwarmStats, Tracker};

/// Peer ids of our seeders start with this (`aria2c --peer-id-prefix`), so the
/// tracker counts their uploads apart from the peers'.
pub const SEEDER_PREFIX: &str = "-GLORYSEED-";

/// What every `aria2c` we start runs with: no DHT, no local peer discovery (the
/// tracker decides who meets whom), no preallocation, no progress lines.
pub const ARIA2C_ARGS: [&str; 5] = [
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--file-allocation=none",
    "--summary-interval=0",
];

/// Why a torrent could not be offered.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("torrent of {sha}: {source}")]
    Torrent { sha: String, source: std::io::Error },
    #[error("cannot start the seeder (aria2c; apt-get install aria2): {0}")]
    Seeder(std::io::Error),
}

/// Torrents, their seeders and the tracker.
pub struct Swarms {
    tracker: Mutex<Tracker>,
    torrents: Mutex<HashMap<String, Torrent>>,
    seeders: Mutex<HashMap<String, tokio::process::Child>>,
    /// Where `.torrent` files are kept.
    torrent_dir: PathBuf,
    /// The directory the seeded files are in, each named by its SHA-256 (a content
    /// store's `sha256/`).
    files_dir: PathBuf,
    /// The seeders' upload limit in KiB/s (0: none).
    upload_kib: u64,
    /// The CA the tracker's HTTPS certificate is checked against.
    ca_file: Option<PathBuf>,
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
            ca_file: None,
        }
    }

    /// Seeders check the tracker's HTTPS certificate against `ca_file` (PEM).
    pub fn trusting(self, ca_file: Option<PathBuf>) -> Self {
        Swarms { ca_file, ..self }
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
        self.ensure_seeder(sha, &file)?;
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
    fn ensure_seeder(&self, sha: &str, torrent: &Path) -> Result<(), SwarmError> {
        let mut seeders = lock(&self.seeders);
        if let Some(child) = seeders.get_mut(sha) {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
        }
        let mut command = tokio::process::Command::new("aria2c");
        if let Some(ca) = &self.ca_file {
            command.arg(format!("--ca-certificate={}", ca.display()));
        }
        let child = command
            .arg(format!("--dir={}", self.files_dir.display()))
            .args(ARIA2C_ARGS)
            .args([
                "--seed-ratio=0.0",
                "--bt-seed-unverified=true",
                "--check-integrity=false",
                "--enable-peer-exchange=false",
                "--listen-port=6881-6999",
                "--bt-max-peers=0",
                "--console-log-level=error",
                "--quiet=true",
            ])
            .arg(format!("--peer-id-prefix={SEEDER_PREFIX}"))
            .arg(format!("--max-overall-upload-limit={}K", self.upload_kib))
            .arg(format!("--stop-with-process={}", std::process::id()))
            .arg(torrent)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(SwarmError::Seeder)?;
        info!(%sha, pid = ?child.id(), "seeder started");
        seeders.insert(sha.to_string(), child);
        Ok(())
    }

    /// The file `sha` is gone: stop seeding and tracking it.
    pub fn stop(&self, sha: &str) {
        if let Some(mut child) = lock(&self.seeders).remove(sha) {
            if let Err(e) = child.start_kill() {
                warn!(%sha, error = %e, "cannot stop the seeder");
            }
        }
        if let Some(t) = lock(&self.torrents).remove(sha) {
            self.tracker().forget(&t.info_hash);
        }
    }
}
