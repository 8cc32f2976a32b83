//! What the cluster sets a node up with besides processes: its first-boot
//! configuration (files written under `setup_root`, the running hostname set) and its
//! software packages (tar.zst files downloaded through the group master's caching
//! proxy, unpacked as they stream in, verified by hash, installed atomically).
//!
//! Files are written whole and renamed into place. A package is unpacked into a
//! staging directory; only when every byte matched its SHA-256 is the directory renamed
//! to `<setup_root>/opt/glory/software/<name>/<version>` and the `current` link
//! switched to it, so a failed install changes nothing. The applied configuration is
//! kept in `state_dir/setup.json`: a restarted agent still knows what to check for
//! drift.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glory_protocol::setup::{
    ConfigFile, InstalledPackage, NodeConfig, PackageFailure, PackageSpec, SetupReport,
};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

/// Where packages go under the setup root.
const SOFTWARE_DIR: &str = "opt/glory/software";
const PACKAGE_META: &str = ".glory-package.json";

#[derive(Default)]
struct Inner {
    applied: Option<NodeConfig>,
    config_error: Option<String>,
    drift: Vec<String>,
    desired: Vec<PackageSpec>,
    installing: Vec<(String, String)>,
    failed: BTreeMap<(String, String), String>,
    /// The running hostname changed: the inventory goes again.
    inventory_due: bool,
}

/// A node's setup, shared by the agent's sessions.
pub struct Setup {
    /// None: this agent applies nothing (simulated and test agents that were not
    /// given a root); it says so in its reports.
    root: Option<PathBuf>,
    state_file: Option<PathBuf>,
    inner: Mutex<Inner>,
    /// A report is due.
    pub changed: tokio::sync::Notify,
    /// Made at the first install: most agents never install anything, and 10,000
    /// simulated agents in one process must not each build an HTTP client.
    client: std::sync::OnceLock<reqwest::Client>,
    /// Packages offered peer-to-peer are fetched so, then seeded this long; None:
    /// always over HTTP (simulated agents).
    p2p_seed: Option<Duration>,
    /// The cluster CA (PEM), which an HTTPS cluster master's content and tracker are
    /// checked against; set once the agent has its identity.
    ca_pem: std::sync::OnceLock<String>,
}

impl Setup {
    pub fn new(
        root: Option<PathBuf>,
        state_file: Option<PathBuf>,
        p2p_seed: Option<Duration>,
    ) -> Arc<Setup> {
        let applied = state_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice::<NodeConfig>(&b).ok());
        Arc::new(Setup {
            root,
            state_file,
            inner: Mutex::new(Inner {
                applied,
                ..Inner::default()
            }),
            changed: tokio::sync::Notify::new(),
            client: std::sync::OnceLock::new(),
            p2p_seed,
            ca_pem: std::sync::OnceLock::new(),
        })
    }

    /// Trust `ca_pem` (the cluster CA) for downloads: the first call counts (every
    /// identity of this agent comes from the same cluster).
    pub fn trust(&self, ca_pem: &str) {
        let _ = self.ca_pem.set(ca_pem.to_string());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this agent applies configuration and installs software at all.
    pub fn has_root(&self) -> bool {
        self.root.is_some()
    }

    /// Whether the inventory must be sent again (the hostname changed); clears it.
    pub fn take_inventory_due(&self) -> bool {
        std::mem::take(&mut self.lock().inventory_due)
    }

    /// Whether there is anything to report (an agent with nothing applied, installed
    /// or failed says nothing when its session opens).
    pub fn has_news(&self) -> bool {
        self.report() != SetupReport::default()
    }

    fn software_dir(&self) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.join(SOFTWARE_DIR))
    }

    /// What the agent has applied and installed now.
    pub fn report(&self) -> SetupReport {
        let inner = self.lock();
        SetupReport {
            config_hash: inner.applied.as_ref().map(|c| c.hash.clone()),
            config_error: inner.config_error.clone(),
            drift: inner.drift.clone(),
            installed: self.installed(),
            failed: inner
                .failed
                .iter()
                .map(|((name, version), error)| PackageFailure {
                    name: name.clone(),
                    version: version.clone(),
                    error: error.clone(),
                })
                .collect(),
        }
    }

    /// Packages installed (their `current` version), read from the disk.
    fn installed(&self) -> Vec<InstalledPackage> {
        let Some(dir) = self.software_dir() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let meta = entry.path().join("current").join(PACKAGE_META);
            if let Ok(bytes) = std::fs::read(meta) {
                if let Ok(p) = serde_json::from_slice::<InstalledPackage>(&bytes) {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }

    /// Apply a configuration (None: the node has none; files stay as they are).
    pub fn apply_config(&self, config: Option<NodeConfig>) {
        let Some(config) = config else {
            return;
        };
        let result = match &self.root {
            None => Err("this agent applies no configuration (no setup_root)".to_string()),
            Some(root) => apply_files(root, &config.files).and_then(|()| {
                let same =
                    self.lock().applied.as_ref().map(|c| &c.hostname) == Some(&config.hostname);
                match &config.hostname {
                    Some(name) if root == Path::new("/") && !same => {
                        set_hostname(name)?;
                        self.lock().inventory_due = true;
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }),
        };
        let mut inner = self.lock();
        match result {
            Ok(()) => {
                info!(hash = %config.hash, files = config.files.len(), "configuration applied");
                if let Some(f) = &self.state_file {
                    if let Err(e) =
                        write_atomically(f, &serde_json::to_vec(&config).unwrap_or_default(), 0o600)
                    {
                        warn!(error = %e, "cannot save the applied configuration");
                    }
                }
                inner.applied = Some(config);
                inner.config_error = None;
                inner.drift.clear();
            }
            Err(e) => {
                warn!(error = %e, "configuration not applied");
                inner.config_error = Some(e);
            }
        }
        drop(inner);
        self.changed.notify_one();
    }

    /// Compare the applied files with the disk: drift is reported, and written back
    /// when the configuration says to repair.
    pub fn check_drift(&self) {
        let Some(root) = &self.root else { return };
        let Some(applied) = self.lock().applied.clone() else {
            return;
        };
        let drifted: Vec<ConfigFile> = applied
            .files
            .iter()
            .filter(|f| {
                std::fs::read(under(root, &f.path))
                    .map(|b| b != f.content.as_bytes())
                    .unwrap_or(true)
            })
            .cloned()
            .collect();
        let paths: Vec<String> = drifted.iter().map(|f| f.path.clone()).collect();
        if !paths.is_empty() {
            warn!(?paths, repair = applied.repair, "configuration drift");
            if applied.repair {
                if let Err(e) = apply_files(root, &drifted) {
                    warn!(error = %e, "cannot repair drifted files");
                }
            }
        }
        let mut inner = self.lock();
        if inner.drift != paths {
            inner.drift = paths;
            drop(inner);
            self.changed.notify_one();
        }
    }

    /// The packages this node must have: install what is missing (each on its own
    /// task), remove what is no longer wanted.
    pub fn set_software(self: &Arc<Self>, specs: Vec<PackageSpec>) {
        {
            let mut inner = self.lock();
            // A new wish clears old failures of versions no longer wanted.
            inner
                .failed
                .retain(|(n, v), _| specs.iter().any(|s| s.name == *n && s.version == *v));
            inner.desired = specs;
        }
        self.converge(true);
    }

    /// Start the installs that are due; `retry_failed` tries failed ones again.
    pub fn converge(self: &Arc<Self>, retry_failed: bool) {
        let Some(dir) = self.software_dir() else {
            let mut inner = self.lock();
            let mut news = false;
            for s in inner.desired.clone() {
                news |= inner
                    .failed
                    .insert(
                        (s.name, s.version),
                        "this agent installs no software (no setup_root)".into(),
                    )
                    .is_none();
            }
            drop(inner);
            if news {
                self.changed.notify_one();
            }
            return;
        };
        let installed = self.installed();
        let mut start = Vec::new();
        let desired = {
            let mut inner = self.lock();
            for s in inner.desired.clone() {
                let key = (s.name.clone(), s.version.clone());
                let have = installed
                    .iter()
                    .any(|p| p.name == s.name && p.version == s.version && p.sha256 == s.sha256);
                if have
                    || inner.installing.contains(&key)
                    || (!retry_failed && inner.failed.contains_key(&key))
                {
                    continue;
                }
                inner.installing.push(key);
                start.push(s);
            }
            inner.desired.clone()
        };
        // Packages no longer wanted at all are removed.
        for p in &installed {
            if !desired.iter().any(|s| s.name == p.name) {
                info!(package = %p.name, "removing a package no longer wanted");
                let _ = std::fs::remove_dir_all(dir.join(&p.name));
                self.changed.notify_one();
            }
        }
        for spec in start {
            let me = self.clone();
            let dir = dir.clone();
            tokio::spawn(async move {
                let key = (spec.name.clone(), spec.version.clone());
                let ca = me.ca_pem.get().map(String::as_str);
                let client = me.client.get_or_init(|| {
                    glory_content::http_client(ca).unwrap_or_else(|e| {
                        warn!(error = %e, "the cluster CA is unusable for downloads; HTTP only");
                        reqwest::Client::default()
                    })
                });
                let result = install(client, &dir, &spec, me.p2p_seed).await;
                let mut inner = me.lock();
                inner.installing.retain(|k| *k != key);
                match result {
                    Ok(()) => {
                        info!(package = %spec.name, version = %spec.version, "package installed");
                        inner.failed.remove(&key);
                    }
                    Err(e) => {
                        warn!(package = %spec.name, version = %spec.version, error = %e, "package not installed");
                        inner.failed.insert(key, e);
                    }
                }
                drop(inner);
                me.changed.notify_one();
            });
        }
    }
}

/// `path` (absolute, checked by the cluster master) under `root`.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn write_atomically(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("glory-tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn apply_files(root: &Path, files: &[ConfigFile]) -> Result<(), String> {
    for f in files {
        if !f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
            return Err(format!("{}: not an absolute path without `..`", f.path));
        }
        write_atomically(&under(root, &f.path), f.content.as_bytes(), f.mode)
            .map_err(|e| format!("{}: {e}", f.path))?;
    }
    Ok(())
}

fn set_hostname(name: &str) -> Result<(), String> {
    let status = std::process::Command::new("hostname")
        .arg(name)
        .status()
        .map_err(|e| format!("hostname {name}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("hostname {name}: {status}"))
    }
}

/// Reads from a channel of downloaded chunks, hashing and counting as it goes.
struct Incoming {
    rx: std::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    chunk: bytes::Bytes,
    hasher: Sha256,
    size: u64,
    max: u64,
}

impl Read for Incoming {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.size += chunk.len() as u64;
                    if self.size > self.max {
                        return Err(std::io::Error::other(format!(
                            "download is larger than its {} bytes",
                            self.max
                        )));
                    }
                    self.hasher.update(&chunk);
                    self.chunk = chunk;
                }
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

/// Download `spec` and install it under `dir`: unpacked as it streams in, then
/// verified, then moved into place. Nothing is left behind on failure.
async fn install(
    client: &reqwest::Client,
    dir: &Path,
    spec: &PackageSpec,
    p2p_seed: Option<Duration>,
) -> Result<(), String> {
    if spec.name.contains('/') || spec.version.contains('/') || spec.name.starts_with('.') {
        return Err("bad package name or version".into());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let staging = dir.join(format!(
        ".staging-{}-{}-{:08x}",
        spec.name,
        spec.version,
        rand::random::<u32>()
    ));
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<bytes::Bytes, String>>(16);
    let unpack = {
        let staging = staging.clone();
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || unpack_verified(rx, &staging, &spec))
    };
    // Large packages peer-to-peer where the cluster master offers a torrent; HTTP
    // through the group's proxy otherwise, or when that fails.
    let local = match (&spec.torrent, p2p_seed) {
        (Some(torrent), Some(seed)) => match p2p::fetch(client, torrent, dir, spec, seed).await {
            Ok(path) => Some(path),
            Err(e) => {
                warn!(package = %spec.name, version = %spec.version, error = %e, "peer-to-peer fetch failed; downloading over HTTP");
                None
            }
        },
        _ => None,
    };
    let fetched: Result<(), String> = async {
        if let Some(path) = &local {
            use tokio::io::AsyncReadExt;
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            loop {
                let mut buf = bytes::BytesMut::with_capacity(1 << 20);
                let n = file
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if n == 0 || !feed(&tx, buf.freeze()).await {
                    return Ok(());
                }
            }
        }
        let mut resp = client
            .get(&spec.url)
            .send()
            .await
            .map_err(|e| format!("fetch {}: {e}", spec.url))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("fetch {}: {status}: {}", spec.url, text.trim()));
        }
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("fetch {}: {e}", spec.url))?
        {
            if !feed(&tx, chunk).await {
                break;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = &fetched {
        let _ = tx.send(Err(e.clone()));
    }
    drop(tx);
    let unpacked = unpack
        .await
        .map_err(|e| format!("unpacker: {e}"))
        .and_then(|r| r);
    let result = fetched.and(unpacked).and_then(|()| {
        let meta = InstalledPackage {
            name: spec.name.clone(),
            version: spec.version.clone(),
            sha256: spec.sha256.clone(),
        };
        std::fs::write(
            staging.join(PACKAGE_META),
            serde_json::to_vec(&meta).unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
        let home = dir.join(&spec.name);
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        let target = home.join(&spec.version);
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|e| e.to_string())?;
        }
        std::fs::rename(&staging, &target).map_err(|e| e.to_string())?;
        // Switch `current` in one rename.
        let link = home.join(".current-new");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&spec.version, &link).map_err(|e| e.to_string())?;
        std::fs::rename(&link, home.join("current")).map_err(|e| e.to_string())?;
        // Older versions go.
        if let Ok(entries) = std::fs::read_dir(&home) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name != spec.version && name != "current" {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Hand a chunk to the unpacker, which reads on its own thread (a full channel waits
/// here). False when the unpacker has stopped reading.
async fn feed(
    tx: &std::sync::mpsc::SyncSender<Result<bytes::Bytes, String>>,
    chunk: bytes::Bytes,
) -> bool {
    let tx = tx.clone();
    tokio::task::spawn_blocking(move || tx.send(Ok(chunk)).is_ok())
        .await
        .unwrap_or(false)
}

/// Unpack a tar.zst stream into `staging`, then check that every byte read matched
/// the package's hash and size.
fn unpack_verified(
    rx: std::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    staging: &Path,
    spec: &PackageSpec,
) -> Result<(), String> {
    let incoming = Incoming {
        rx,
        chunk: bytes::Bytes::new(),
        hasher: Sha256::new(),
        size: 0,
        max: spec.size,
    };
    std::fs::create_dir_all(staging).map_err(|e| e.to_string())?;
    let decoder = zstd::stream::read::Decoder::new(incoming).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(decoder);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    let unpacked = archive.unpack(staging);
    // Whatever the archive left unread still counts for the hash.
    let mut rest = archive.into_inner().finish();
    let drained = std::io::copy(&mut rest, &mut std::io::sink());
    let incoming = rest.into_inner();
    let actual = hex::encode(incoming.hasher.clone().finalize());
    if actual != spec.sha256 || incoming.size != spec.size {
        return Err(format!(
            "download does not match its hash: expected sha256 {} ({} bytes), got {actual} ({} bytes)",
            spec.sha256, spec.size, incoming.size
        ));
    }
    drained.map_err(|e| e.to_string())?;
    unpacked.map_err(|e| format!("unpack: {e}"))?;
    Ok(())
}

pub mod p2p;
#[cfg(test)]
mod tests;

#[cfg(test)]
fn config_of(files: Vec<ConfigFile>, repair: bool) -> NodeConfig {
    NodeConfig {
        profile: "p".into(),
        hash: NodeConfig::hash_of(None, &files),
        hostname: None,
        files,
        repair,
    }
}
