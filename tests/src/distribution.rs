//! Images for distribution tests and benchmarks: incompressible content stored as an
//! image, its `.torrent` from the API, and Debian's `aria2c` as the BitTorrent client.

use std::path::{Path, PathBuf};
use std::process::Command;

use glory::client::ApiClient;
use reqwest::Method;
use serde_json::{json, Value};

/// `len` bytes that do not compress (xorshift from `seed`).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Store noise as an image's root filesystem: the image's record.
pub async fn image(api: &ApiClient, dir: &Path, name: &str, size: usize) -> anyhow::Result<Value> {
    let mut parts = Vec::new();
    for (part, len) in [("kernel", 1000), ("initrd", 1000), ("rootfs", size)] {
        let bytes = noise(len, name.len() as u64 * 7919 + len as u64);
        let path = dir.join(format!("{name}.{part}"));
        std::fs::write(&path, &bytes)?;
        let (sha256, size) = api.upload(&path, |_| {}).await?;
        parts.push(json!({"sha256": sha256, "size": size}));
    }
    let body = json!({"name": name, "kernel": parts[0], "initrd": parts[1], "rootfs": parts[2]});
    api.call(Method::POST, "/api/v1/images", Some(body)).await
}

/// What every `aria2c` of the tests runs with: no DHT, no local peer discovery (the
/// tracker decides who meets whom), no preallocation, no progress lines.
pub const ARIA2C_ARGS: [&str; 5] = [
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--file-allocation=none",
    "--summary-interval=0",
];

/// The image's torrent, written to `dir`.
pub async fn torrent(api: &ApiClient, name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let bytes = api
        .get_bytes(&format!("/api/v1/images/{name}/torrent"))
        .await?;
    let path = dir.join(format!("{name}.torrent"));
    std::fs::write(&path, bytes)?;
    Ok(path)
}

pub fn aria2c(torrent: &Path, out: &Path, seed_minutes: &str) -> Command {
    let mut cmd = Command::new("aria2c");
    cmd.arg(format!("--dir={}", out.display()))
        .arg(format!("--seed-time={seed_minutes}"))
        .args(ARIA2C_ARGS)
        .args(["--console-log-level=warn", "--listen-port=7881-7999"])
        .arg(torrent);
    cmd
}

/// A software package (tar.zst) of `files`: path and content.
pub fn package(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        tar.append_data(&mut header, path, *content).unwrap();
    }
    zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap()
}

/// Upload `bytes` as package `name` version 1: its SHA-256.
pub async fn add_package(
    api: &ApiClient,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> anyhow::Result<String> {
    let path = dir.join(format!("{name}.tar.zst"));
    std::fs::write(&path, bytes)?;
    let (sha256, size) = api.upload(&path, |_| {}).await?;
    let body = json!({"name": name, "version": "1", "sha256": sha256, "size": size});
    api.call(Method::POST, "/api/v1/software", Some(body))
        .await?;
    Ok(sha256)
}

/// Packages `big` (`big_size` bytes of noise from `seed`, in `share/blob`) and `small`,
/// version 1, installed on every one of `agents` nodes of `cluster`.
pub struct BigAndSmall {
    pub big_sha: String,
    pub small_sha: String,
    /// Each node's setup root, by fleet index.
    pub roots: Vec<PathBuf>,
}

/// Upload `big` and `small`, install both everywhere and wait until every node has them.
pub async fn big_and_small_everywhere(
    cluster: &crate::TestCluster,
    agents: usize,
    big_size: usize,
    seed: u64,
) -> anyhow::Result<BigAndSmall> {
    let api = &cluster.api;
    let dir = tempfile::tempdir()?;
    let big = package(&[
        ("share/blob", &noise(big_size, seed)),
        ("bin/big", b"#!/bin/sh\n"),
    ]);
    let big_sha = add_package(api, dir.path(), "big", &big).await?;
    let small = package(&[("bin/small", b"#!/bin/sh\necho small\n")]);
    let small_sha = add_package(api, dir.path(), "small", &small).await?;
    for name in ["big", "small"] {
        let body = json!({"installations": [{"version": "1"}]});
        api.call(
            Method::PUT,
            &format!("/api/v1/software/{name}/installations"),
            Some(body),
        )
        .await?;
    }
    let roots: Vec<PathBuf> = (0..agents)
        .map(|i| cluster.fleet().setup_root_of(i))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow::anyhow!("a node without a setup root"))?;
    let has = |root: &Path, name: &str| {
        root.join(format!("opt/glory/software/{name}/current/bin/{name}"))
            .exists()
    };
    cluster
        .wait_until(
            "both packages on every node",
            std::time::Duration::from_secs(90),
            async |_| roots.iter().all(|r| has(r, "big") && has(r, "small")),
        )
        .await?;
    Ok(BigAndSmall {
        big_sha,
        small_sha,
        roots,
    })
}

/// Wait until `peers` peers completed content `sha256` in its swarm: the swarm's stats.
pub async fn swarm_completed(api: &ApiClient, sha256: &str, peers: usize) -> anyhow::Result<Value> {
    let (swarm, _) = crate::wait::until(
        "every agent completed in the swarm",
        std::time::Duration::from_secs(30),
        || async {
            let s = api
                .get(&format!("/api/v1/content/{sha256}/swarm"))
                .await
                .map_err(|e| e.to_string())?;
            (s["completed"].as_u64().unwrap_or(0) >= peers as u64)
                .then_some(s.clone())
                .ok_or(s.to_string())
        },
    )
    .await?;
    Ok(swarm)
}
