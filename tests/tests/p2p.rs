//! Peer-to-peer distribution of images (issue 19): a real BitTorrent client, Debian's
//! `aria2c`, fetches an image by the `.torrent` the API hands out, from our seeder and
//! through our tracker; then 8 peers in network namespaces of this test's own fetch an
//! image together while the seeder's upload is capped, and most bytes come from each
//! other.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use glory::client::ApiClient;
use glory_tests::TestCluster;
use reqwest::Method;
use serde_json::{json, Value};

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `len` bytes that do not compress (xorshift from `seed`).
fn noise(len: usize, seed: u64) -> Vec<u8> {
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
async fn image(api: &ApiClient, dir: &Path, name: &str, size: usize) -> anyhow::Result<Value> {
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

/// The image's torrent, written to `dir`.
async fn torrent(api: &ApiClient, token: &str, name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/images/{name}/torrent", api.base()))
        .bearer_auth(token.trim())
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "torrent: {}", resp.status());
    assert_eq!(
        resp.headers()["content-type"].to_str()?,
        "application/x-bittorrent"
    );
    let path = dir.join(format!("{name}.torrent"));
    std::fs::write(&path, resp.bytes().await?)?;
    Ok(path)
}

fn aria2c(torrent: &Path, out: &Path, seed_minutes: &str) -> Command {
    let mut cmd = Command::new("aria2c");
    cmd.arg(format!("--dir={}", out.display()))
        .arg(format!("--seed-time={seed_minutes}"))
        .args([
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--summary-interval=0",
            "--console-log-level=warn",
            "--file-allocation=none",
            "--listen-port=7881-7999",
        ])
        .arg(torrent);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aria2c_fetches_an_image_from_our_seeder_and_tracker() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .groups(1)
        .agents(1)
        .tracker_interval_seconds(2)
        .start()
        .await?;
    let api = &cluster.api;
    let dir = tempfile::tempdir()?;
    let img = image(api, dir.path(), "p2p", 3 << 20).await?;
    let sha = img["rootfs"]["sha256"].as_str().unwrap().to_string();
    let t = torrent(api, &cluster.operator_token(), "p2p", dir.path()).await?;
    let (s, e) = api
        .request(Method::GET, "/api/v1/images/nope/torrent", None)
        .await?;
    assert_eq!(s, 404, "{e}");

    let out = dir.path().join("out");
    let fetched = tokio::task::spawn_blocking(move || {
        aria2c(&t, &out, "0")
            .arg("--bt-stop-timeout=60")
            .output()
            .map(|o| {
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                    out,
                )
            })
    })
    .await??;
    assert!(fetched.0, "aria2c failed:\n{}", fetched.1);
    let bytes = std::fs::read(fetched.2.join(&sha))?;
    assert_eq!(glory_content::sha256_hex(&bytes), sha, "the image's bytes");
    // The seeder did the uploading (there was no one else), and the tracker knows.
    let (swarm, _) = glory_tests::wait::until(
        "the seeder's upload reported",
        Duration::from_secs(30),
        || async {
            let s = api
                .get("/api/v1/images/p2p/swarm")
                .await
                .map_err(|e| e.to_string())?;
            (s["seeder_uploaded"].as_u64().unwrap_or(0) >= 3 << 20)
                .then_some(s.clone())
                .ok_or(s.to_string())
        },
    )
    .await?;
    assert_eq!(swarm["peer_uploaded"], 0, "{swarm}");
    // A tracker request that is not an announce: a bencoded failure, still serving.
    let bad = reqwest::get(format!("{}/announce?info_hash=x", api.base()))
        .await?
        .text()
        .await?;
    assert!(bad.contains("failure reason"), "{bad}");
    cluster.shutdown().await;
    Ok(())
}

/// A hub namespace with a bridge, joined to this host by a veth pair, and `peers`
/// namespaces on the bridge. Removed when dropped.
struct Net {
    hub: String,
    host_if: String,
    host_ip: Ipv4Addr,
    peers: Vec<(String, Ipv4Addr)>,
}

impl Net {
    fn create(peers: usize) -> anyhow::Result<Net> {
        let id = std::process::id() % 100_000;
        let subnet = 100 + (id % 100) as u8;
        let hub = format!("glp2p-{id}");
        let mut net = Net {
            hub: hub.clone(),
            host_if: format!("gph{id}"),
            host_ip: Ipv4Addr::new(10, 216, subnet, 1),
            peers: Vec::new(),
        };
        run(&["ip", "netns", "add", &hub])?;
        let ns = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", hub.as_str()];
            all.extend_from_slice(args);
            run(&all)
        };
        ns(&["ip", "link", "add", "br0", "type", "bridge"])?;
        ns(&["ip", "link", "set", "br0", "up"])?;
        let hub_end = format!("gpb{id}");
        run(&[
            "ip",
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &hub_end,
            "netns",
            &hub,
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.host_ip),
            "dev",
            &net.host_if,
        ])?;
        run(&["ip", "link", "set", &net.host_if, "up"])?;
        ns(&["ip", "link", "set", &hub_end, "master", "br0"])?;
        ns(&["ip", "link", "set", &hub_end, "up"])?;
        for i in 0..peers {
            let name = format!("glp2p-{id}-{i}");
            let ip = Ipv4Addr::new(10, 216, subnet, 10 + i as u8);
            run(&["ip", "netns", "add", &name])?;
            net.peers.push((name.clone(), ip));
            let (a, b) = (format!("gpa{id}x{i}"), format!("gpp{id}x{i}"));
            ns(&[
                "ip", "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &name,
            ])?;
            ns(&["ip", "link", "set", &a, "master", "br0"])?;
            ns(&["ip", "link", "set", &a, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["ip", "netns", "exec", name.as_str()];
                all.extend_from_slice(args);
                run(&all)
            };
            inside(&["ip", "link", "set", "lo", "up"])?;
            inside(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &b])?;
            inside(&["ip", "link", "set", &b, "up"])?;
        }
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        for (name, _) in &self.peers {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_peers_get_most_bytes_from_each_other() -> anyhow::Result<()> {
    const PEERS: usize = 8;
    const SIZE: usize = 16 << 20;
    let net = Net::create(PEERS)?;
    // The API (and the tracker) on this host's end of the veth pair; the seeder's
    // upload capped at 1 MiB/s, so 8 copies from it alone would take 128 s.
    let cluster = TestCluster::builder()
        .groups(1)
        .agents(1)
        .api_listen(SocketAddr::from((net.host_ip, 0)))
        .seed_upload_kib(1024)
        .tracker_interval_seconds(2)
        .start()
        .await?;
    let api = &cluster.api;
    let dir = tempfile::tempdir()?;
    let img = image(api, dir.path(), "spread", SIZE).await?;
    let sha = img["rootfs"]["sha256"].as_str().unwrap().to_string();
    let t = torrent(api, &cluster.operator_token(), "spread", dir.path()).await?;

    // All 8 at once; each seeds for 20 s after it completes, then leaves.
    let mut children = Vec::new();
    for (i, (ns, _)) in net.peers.iter().enumerate() {
        let out = dir.path().join(format!("peer{i}"));
        let inner = aria2c(&t, &out, "0.33");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(inner.get_program());
        cmd.args(inner.get_args());
        cmd.stdout(std::process::Stdio::null());
        children.push((cmd.spawn()?, out));
    }
    let started = std::time::Instant::now();
    let results = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|(mut c, out)| (c.wait().map(|s| s.success()).unwrap_or(false), out))
            .collect::<Vec<_>>()
    })
    .await?;
    eprintln!(
        "8 peers done (including 20 s of seeding) in {:?}",
        started.elapsed()
    );
    for (ok, out) in &results {
        assert!(ok, "a peer's aria2c failed");
        let bytes = std::fs::read(out.join(&sha))?;
        assert_eq!(glory_content::sha256_hex(&bytes), sha);
    }
    let swarm = api.get("/api/v1/images/spread/swarm").await?;
    eprintln!("swarm: {swarm}");
    let peer_uploaded = swarm["peer_uploaded"].as_u64().unwrap_or(0);
    let total = (PEERS * SIZE) as u64;
    assert!(
        peer_uploaded * 2 > total,
        "peers uploaded {peer_uploaded} of the {total} bytes fetched: {swarm}"
    );
    cluster.shutdown().await;
    drop(net);
    Ok(())
}
