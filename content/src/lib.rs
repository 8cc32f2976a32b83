//! GLORY-CL's content addressing: files named by their SHA-256, as the cluster
//! masters keep OS images and software packages, standby cluster masters copy them,
//! and group masters and provisioners cache them for their nodes
//! ([`ContentCache`], filled over HTTP by [`fetch_into`]). Agents verify what they
//! download the same way (by hash, as it streams).
//!
//! A [`ContentStore`] is a directory: `sha256/<hex>` holds finished files, `tmp/`
//! those being written. A file enters `sha256/` only by a rename after its bytes were
//! hashed as they arrived and matched: a reader never sees a partial or corrupt file
//! under a hash (unless the disk corrupts it later, which every reader verifies again).
#![forbid(unsafe_code)]

pub mod peer;
pub mod swarm;
pub mod torrent;
pub mod tracker;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// An HTTP client for fetching from the cluster's masters, trusting the cluster CA
/// (`ca_pem`) when the cluster master's API (and so its content) is HTTPS; plain HTTP
/// works as well. Connections time out after 10 s.
pub fn http_client(ca_pem: Option<&str>) -> reqwest::Result<reqwest::Client> {
    let mut builder =
        reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10));
    if let Some(pem) = ca_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build()
}

/// Whether `text` is a SHA-256 in lower-case hex.
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Why a file could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("content does not match its hash: expected sha256 {expected}, got {actual}")]
    Mismatch { expected: String, actual: String },
    #[error("content is larger than the {max} bytes allowed")]
    TooLarge { max: u64 },
    #[error("{expected:?} is not a SHA-256 (64 lower-case hex digits)")]
    BadHash { expected: String },
    #[error("content store: {0}")]
    Io(#[from] std::io::Error),
}

/// A directory of content-addressed files.
#[derive(Clone, Debug)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Open (creating) the store at `root`; files left half-written by a crash are
    /// removed.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<ContentStore> {
        let root = root.into();
        std::fs::create_dir_all(root.join("sha256"))?;
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(ContentStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the file of `sha256` is (whether or not it exists); None for a bad hash.
    pub fn path(&self, sha256: &str) -> Option<PathBuf> {
        is_sha256(sha256).then(|| self.root.join("sha256").join(sha256))
    }

    /// The size of the stored file of `sha256`, if it is stored.
    pub fn size(&self, sha256: &str) -> Option<u64> {
        let path = self.path(sha256)?;
        std::fs::metadata(path).ok().map(|m| m.len())
    }

    /// Remove the file of `sha256` (nothing if it is not there).
    pub fn remove(&self, sha256: &str) -> std::io::Result<()> {
        let Some(path) = self.path(sha256) else {
            return Ok(());
        };
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every stored hash.
    pub fn hashes(&self) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join("sha256"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if is_sha256(&name) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Start writing a file whose hash, when `expected` is given, must be that one;
    /// at most `max` bytes.
    pub async fn writer(
        &self,
        expected: Option<&str>,
        max: u64,
    ) -> Result<ContentWriter, ContentError> {
        if let Some(e) = expected {
            if !is_sha256(e) {
                return Err(ContentError::BadHash {
                    expected: e.to_string(),
                });
            }
        }
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()));
        let file = tokio::fs::File::create(&tmp).await?;
        Ok(ContentWriter {
            store: self.clone(),
            tmp,
            file: Some(tokio::io::BufWriter::with_capacity(1 << 20, file)),
            hasher: Sha256::new(),
            size: 0,
            max,
            expected: expected.map(str::to_string),
        })
    }
}

/// A file being written into a [`ContentStore`]. Dropped unfinished, it leaves nothing.
pub struct ContentWriter {
    store: ContentStore,
    tmp: PathBuf,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    hasher: Sha256,
    size: u64,
    max: u64,
    expected: Option<String>,
}

impl ContentWriter {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ContentError> {
        self.size += chunk.len() as u64;
        if self.size > self.max {
            return Err(ContentError::TooLarge { max: self.max });
        }
        self.hasher.update(chunk);
        if let Some(f) = self.file.as_mut() {
            f.write_all(chunk).await?;
        }
        Ok(())
    }

    /// Check the hash and move the file into the store: its hash and size.
    pub async fn finish(mut self) -> Result<(String, u64), ContentError> {
        let actual = hex::encode(self.hasher.clone().finalize());
        if let Some(expected) = &self.expected {
            if *expected != actual {
                return Err(ContentError::Mismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        if let Some(mut f) = self.file.take() {
            f.flush().await?;
            f.get_ref().sync_all().await?;
        }
        let dest = self.store.root.join("sha256").join(&actual);
        tokio::fs::rename(&self.tmp, &dest).await?;
        Ok((actual, self.size))
    }
}

impl Drop for ContentWriter {
    fn drop(&mut self) {
        // After a successful `finish` the temporary file was renamed away.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Where a cached file comes from, and its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub url: String,
    pub size: u64,
}

/// Why a cache could not produce a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// Nobody named this file to the cache (it is not an open relay).
    #[error("no content {0} is known here")]
    Unknown(String),
    /// The upstream fetch failed or its bytes did not match their hash.
    #[error("{0}")]
    Upstream(String),
}

type Flight = std::sync::Arc<tokio::sync::OnceCell<Result<(), String>>>;

/// A [`ContentStore`] filled from upstream on demand: a file is fetched once however
/// many ask for it at the same time, verified against its hash as it is written, and
/// served from the store after. Only files named to it ([`ContentCache::learn`]) are
/// fetched.
pub struct ContentCache {
    store: ContentStore,
    known: std::sync::Mutex<std::collections::HashMap<String, Source>>,
    inflight: std::sync::Mutex<std::collections::HashMap<String, Flight>>,
    /// Fetches made upstream (for tests and metrics).
    pub upstream_fetches: std::sync::atomic::AtomicU64,
}

impl ContentCache {
    pub fn new(store: ContentStore) -> ContentCache {
        ContentCache {
            store,
            known: Default::default(),
            inflight: Default::default(),
            upstream_fetches: Default::default(),
        }
    }

    pub fn store(&self) -> &ContentStore {
        &self.store
    }

    /// `sha256` may be fetched from `source`.
    pub fn learn(&self, sha256: &str, source: Source) {
        if is_sha256(sha256) {
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(sha256.to_string(), source);
        }
    }

    /// Have `sha256` in the store. `fetch` gets its source and a writer to fill (and
    /// finish); it runs once for all callers waiting at the same time.
    pub async fn ensure<F, Fut>(&self, sha256: &str, fetch: F) -> Result<(), CacheError>
    where
        F: FnOnce(Source, ContentWriter) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        if self.store.size(sha256).is_some() {
            return Ok(());
        }
        let source = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sha256)
            .cloned()
            .ok_or_else(|| CacheError::Unknown(sha256.to_string()))?;
        let flight: Flight = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(sha256.to_string())
            .or_default()
            .clone();
        let result = flight
            .get_or_init(|| async {
                if self.store.size(sha256).is_some() {
                    return Ok(());
                }
                self.upstream_fetches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let writer = self
                    .store
                    .writer(Some(sha256), source.size)
                    .await
                    .map_err(|e| e.to_string())?;
                fetch(source, writer).await
            })
            .await
            .clone();
        // The next request after a failure tries again.
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sha256);
        result.map_err(CacheError::Upstream)
    }
}

/// GET `source` with `client` into `writer`, whose hash is checked when it is
/// finished: the file's hash and size.
pub async fn fetch_into(
    client: reqwest::Client,
    source: Source,
    mut writer: ContentWriter,
) -> Result<(), String> {
    let mut resp = client
        .get(&source.url)
        .send()
        .await
        .map_err(|e| format!("{}: {e}", source.url))?;
    if !resp.status().is_success() {
        return Err(format!("{}: {}", source.url, resp.status()));
    }
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("{}: {e}", source.url))?
    {
        writer.write(&chunk).await.map_err(|e| e.to_string())?;
    }
    let (sha256, size) = writer
        .finish()
        .await
        .map_err(|e| format!("{}: {e}", source.url))?;
    tracing::info!(%sha256, bytes = size, "content fetched");
    Ok(())
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_enters_the_store_only_when_its_hash_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let data = b"hello, cluster".repeat(1000);
        let sha = sha256_hex(&data);

        let mut w = store.writer(Some(&sha), 1 << 20).await.unwrap();
        for chunk in data.chunks(777) {
            w.write(chunk).await.unwrap();
        }
        assert_eq!(w.finish().await.unwrap(), (sha.clone(), data.len() as u64));
        assert_eq!(store.size(&sha), Some(data.len() as u64));
        assert_eq!(std::fs::read(store.path(&sha).unwrap()).unwrap(), data);

        // Wrong bytes under that hash: refused, nothing left behind.
        let other = sha256_hex(b"other");
        let mut w = store.writer(Some(&other), 1 << 20).await.unwrap();
        w.write(b"not other").await.unwrap();
        assert!(matches!(
            w.finish().await,
            Err(ContentError::Mismatch { .. })
        ));
        assert_eq!(store.size(&other), None);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );

        // Too large: refused, nothing left.
        let mut w = store.writer(None, 10).await.unwrap();
        assert!(matches!(
            w.write(&[0; 11]).await,
            Err(ContentError::TooLarge { max: 10 })
        ));
        drop(w);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(store.hashes().unwrap(), vec![sha.clone()]);

        assert!(matches!(
            store.writer(Some("ABC"), 1).await,
            Err(ContentError::BadHash { .. })
        ));
        assert_eq!(store.path("../etc/passwd"), None);
        store.remove(&sha).unwrap();
        assert_eq!(store.size(&sha), None);
    }
}
