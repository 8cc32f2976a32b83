//! Large packages peer-to-peer: the cluster master names a `.torrent` for packages
//! above its size threshold, and the agent fetches them with Debian's `aria2c` (a
//! maintained BitTorrent client) from the nodes of its group first, the cluster's
//! seeder last, every piece checked by its SHA-1. The agent then checks the whole file
//! against the package's SHA-256 as it unpacks it. `aria2c` keeps seeding for a while
//! after the download, for the nodes still fetching, then its directory goes.
//!
//! Any failure here (no `aria2c`, no torrent, a stalled swarm) falls back to the HTTP
//! download through the group's proxy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use glory_protocol::setup::PackageSpec;
use tracing::{debug, info};

/// The slowest download waited for (bytes a second) before falling back to HTTP, and
/// the least time given.
const SLOWEST: u64 = 256 * 1024;
const AT_LEAST: Duration = Duration::from_secs(300);

/// Whether this host can fetch peer-to-peer (`aria2c` on the PATH), looked up once.
pub fn available() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("aria2c").is_file()))
    })
}

/// Fetch `spec` by its torrent into a directory under `dir`: the downloaded file's
/// path. `aria2c` goes on seeding for `seed` and removes the directory after.
pub async fn fetch(
    client: &reqwest::Client,
    torrent_url: &str,
    dir: &Path,
    spec: &PackageSpec,
    seed: Duration,
    ca_pem: Option<&str>,
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
    let work = dir.join(format!(
        ".p2p-{}-{:08x}",
        spec.sha256,
        rand::random::<u32>()
    ));
    let prepared = prepare(&work, &torrent, ca_pem);
    if let Err(e) = prepared {
        let _ = std::fs::remove_dir_all(&work);
        return Err(format!("{}: {e}", work.display()));
    }
    let mut command = tokio::process::Command::new("aria2c");
    if ca_pem.is_some() {
        // An HTTPS tracker (the cluster master's API) is checked against the cluster CA.
        command.arg(format!(
            "--ca-certificate={}",
            work.join("ca.pem").display()
        ));
    }
    let mut child = match command
        .arg(format!("--dir={}", work.display()))
        .arg(format!("--seed-time={:.2}", seed.as_secs_f64() / 60.0))
        .arg(format!(
            "--on-bt-download-complete={}",
            work.join("done.sh").display()
        ))
        .arg(format!("--stop-with-process={}", std::process::id()))
        .args(glory_content::swarm::ARIA2C_ARGS)
        .args([
            "--seed-ratio=0.0",
            "--listen-port=6881-6999",
            "--console-log-level=error",
            "--quiet=true",
        ])
        .arg(work.join("package.torrent"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(format!("aria2c: {e}"));
        }
    };
    // The torrent's one file is named by the hash; the hook marks it whole.
    let file = work.join(&spec.sha256);
    let marker = work.join(format!("{}.done", spec.sha256));
    let deadline =
        tokio::time::Instant::now() + AT_LEAST.max(Duration::from_secs(spec.size / SLOWEST));
    let outcome = loop {
        if tokio::time::Instant::now() > deadline {
            break Err("the swarm was too slow; giving up on it".to_string());
        }
        if marker.exists() {
            break Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) => break Err(format!("aria2c ended before the download: {status}")),
            Ok(None) => {}
            Err(e) => break Err(format!("aria2c: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    match outcome {
        Ok(()) => {
            info!(package = %spec.name, version = %spec.version, "package fetched peer-to-peer; seeding");
            // Seeds on; its directory goes when it ends.
            tokio::spawn(async move {
                let _ = child.wait().await;
                debug!(dir = %work.display(), "seeding over");
                let _ = tokio::fs::remove_dir_all(&work).await;
            });
            Ok(file)
        }
        Err(e) => {
            let _ = child.kill().await;
            let _ = std::fs::remove_dir_all(&work);
            Err(e)
        }
    }
}

/// The torrent and the completion hook (`aria2c` passes the file's path third).
fn prepare(work: &Path, torrent: &[u8], ca_pem: Option<&str>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(work)?;
    std::fs::write(work.join("package.torrent"), torrent)?;
    if let Some(pem) = ca_pem {
        std::fs::write(work.join("ca.pem"), pem)?;
    }
    let hook = work.join("done.sh");
    std::fs::write(&hook, "#!/bin/sh\ntouch \"$3.done\"\n")?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
}
