//! Peer-to-peer distribution of images (issue 19): a real BitTorrent client, Debian's
//! `aria2c`, fetches an image by the `.torrent` the API hands out, from our seeder (our
//! peer) and through our tracker; then 8 peers in network namespaces of this test's own,
//! 6 of ours (the agent's `torrent-get`) and 2 `aria2c`, fetch an image together while
//! the seeder's upload is capped: most bytes come from each other, and both clients
//! trade with each other.

use std::net::SocketAddr;
use std::time::Duration;

use glory_tests::distribution::{
    aria2c, big_and_small_everywhere, image, noise, swarm_completed, torrent, BigAndSmall,
};
use glory_tests::netns::Net;
use glory_tests::TestCluster;
use reqwest::Method;

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
    let t = torrent(api, "p2p", dir.path()).await?;
    let served = reqwest::Client::new()
        .get(format!("{}/api/v1/images/p2p/torrent", api.base()))
        .bearer_auth(cluster.operator_token().trim())
        .send()
        .await?;
    assert_eq!(
        served.headers()["content-type"].to_str()?,
        "application/x-bittorrent"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_peers_get_most_bytes_from_each_other() -> anyhow::Result<()> {
    const PEERS: usize = 8;
    const SIZE: usize = 16 << 20;
    let net = Net::create(PEERS)?;
    // The API (and the tracker) on this host's end of the veth pair, plain HTTP (the
    // HTTPS tracker is tested in security.rs); the seeder's upload capped at 1 MiB/s,
    // so 8 copies from it alone would take 128 s.
    let cluster = TestCluster::builder()
        .groups(1)
        .agents(1)
        .api_listen(SocketAddr::from((net.host_ip, 0)))
        .insecure_http()
        .seed_upload_kib(1024)
        .tracker_interval_seconds(2)
        .start()
        .await?;
    let api = &cluster.api;
    let dir = tempfile::tempdir()?;
    let img = image(api, dir.path(), "spread", SIZE).await?;
    let sha = img["rootfs"]["sha256"].as_str().unwrap().to_string();
    let t = torrent(api, "spread", dir.path()).await?;

    // All 8 at once; each seeds for 20 s after it completes, then leaves. Peers 0
    // and 1 are aria2c, the others ours, as agents and booting machines run it.
    let agent = glory_tests::binary("glory-node-agent")?;
    let mut children = Vec::new();
    for i in 0..net.peers.len() {
        let out = dir.path().join(format!("peer{i}"));
        let mut cmd = if i < 2 {
            let inner = aria2c(&t, &out, "0.33");
            let mut cmd = net.command(i, inner.get_program());
            cmd.args(inner.get_args());
            cmd
        } else {
            let mut cmd = net.command(i, agent.as_os_str());
            cmd.arg("torrent-get")
                .arg(&t)
                .arg("--dir")
                .arg(&out)
                .args(["--seed-seconds", "20"]);
            cmd
        };
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
    for (i, (ok, out)) in results.iter().enumerate() {
        assert!(ok, "peer {i} failed");
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

/// Upload a package and add it as `name` version 1: its content's hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_fetch_large_packages_from_each_other() -> anyhow::Result<()> {
    const AGENTS: usize = 4;
    const SIZE: usize = 4 << 20;
    // Packages of 1 MiB or more go peer-to-peer; the seeder's upload is capped at
    // 512 KiB/s, so 4 copies from it alone would take 32 s.
    let cluster = TestCluster::builder()
        .groups(1)
        .agents(AGENTS)
        .p2p_min_mb(1)
        .seed_upload_kib(512)
        .tracker_interval_seconds(2)
        .start()
        .await?;
    cluster
        .wait_all_up(AGENTS as u64, Duration::from_secs(30))
        .await?;
    let api = &cluster.api;
    let BigAndSmall {
        big_sha,
        small_sha,
        roots,
    } = big_and_small_everywhere(&cluster, AGENTS, SIZE, 42).await?;
    let blob = std::fs::read(roots[0].join("opt/glory/software/big/current/share/blob"))?;
    assert_eq!(blob, noise(SIZE, 42), "the package's content, whole");
    // The big one went through the swarm: every agent completed it there, and the
    // agents uploaded to each other.
    let swarm = swarm_completed(api, &big_sha, AGENTS).await?;
    eprintln!("swarm: {swarm}");
    assert!(
        swarm["peer_uploaded"].as_u64().unwrap_or(0) >= SIZE as u64,
        "at least a copy's worth went between agents: {swarm}"
    );
    // The small one is not offered peer-to-peer.
    let (status, body) = api
        .request(
            Method::GET,
            &format!("/api/v1/content/{small_sha}/swarm"),
            None,
        )
        .await?;
    assert_eq!(status, 404, "{body}");
    let torrent = reqwest::get(format!("{}/torrent/{small_sha}", api.base())).await?;
    assert_eq!(torrent.status(), 404);
    let torrent = reqwest::get(format!("{}/torrent/{big_sha}", api.base())).await?;
    assert_eq!(torrent.status(), 200);
    cluster.shutdown().await;
    Ok(())
}
