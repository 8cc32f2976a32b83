//! How long an image takes to reach the nodes (issue 19's benchmark): in network
//! namespaces of its own, with every link (the server's too) capped by `tc`, one image
//! goes to one node, then to every node from the cluster master's content server, then
//! through group caching proxies, then peer-to-peer (our peer on the nodes, as agents
//! run it, or `aria2c`; the cluster master's seeder and tracker). Needs root, `ip`,
//! `tc` and `aria2c`.
//!
//! ```text
//! bench-distribution [--size-mb 500] [--nodes 32] [--groups 4] [--mbit 100]
//!                    [--phases single,central,proxies,p2p] [--client glory|aria2c]
//!                    [--peer-args "ARIA2C FLAGS"] [--peer-command PROGRAM]
//! ```
//!
//! It runs itself inside the namespaces as a node that fetches (`fetch URL SHA SIZE DIR
//! CA_FILE`: verified by hash as it is written, as agents do), as a group proxy
//! (`proxy LISTEN URL SHA SIZE CA_FILE`: the group master's caching proxy) and as a
//! node's peer (`peer TORRENT DIR DONE CA_FILE`: our peer, seeding until killed). The API is
//! HTTPS, as it is off loopback: all of them check it against the cluster CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use glory_protocol::setup::PackageSpec;
use glory_tests::distribution;
use glory_tests::netns::Net;
use glory_tests::TestCluster;

struct Options {
    size_mb: usize,
    nodes: usize,
    groups: usize,
    mbit: u32,
    phases: Vec<String>,
    /// The nodes' client: `glory` (ours, what agents run) or `aria2c`.
    client: String,
    /// More flags for every peer's `aria2c` (tuning experiments).
    peer_args: Vec<String>,
    /// Another client instead of `aria2c`, run as `PROGRAM TORRENT DIR [PEER_ARGS]`: it
    /// must verify every piece, create `DIR/<sha256>.done` once it has the file, and
    /// seed until it is killed (comparisons between clients).
    peer_command: Option<String>,
}

fn options(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        size_mb: 500,
        nodes: 32,
        groups: 4,
        mbit: 100,
        phases: ["single", "central", "proxies", "p2p"]
            .map(String::from)
            .to_vec(),
        client: "glory".into(),
        peer_args: Vec::new(),
        peer_command: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{flag}: a positive number, not {value:?}"))
        };
        match flag.as_str() {
            "--size-mb" => o.size_mb = number()?,
            "--nodes" => o.nodes = number()?,
            "--groups" => o.groups = number()?,
            "--mbit" => o.mbit = number()? as u32,
            "--peer-command" => o.peer_command = Some(value.clone()),
            "--client" if ["glory", "aria2c"].contains(&value.as_str()) => o.client = value.clone(),
            "--client" => bail!("--client: glory or aria2c, not {value:?}"),
            "--peer-args" => o.peer_args = value.split_whitespace().map(str::to_string).collect(),
            "--phases" => {
                o.phases = value.split(',').map(str::to_string).collect();
                for p in &o.phases {
                    if !["single", "central", "proxies", "p2p"].contains(&p.as_str()) {
                        bail!("--phases: no phase {p:?} (single, central, proxies, p2p)");
                    }
                }
            }
            _ => bail!("unknown option {flag}"),
        }
    }
    anyhow::ensure!(
        o.nodes + o.groups <= 200,
        "at most 200 namespaces (nodes + groups)"
    );
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        Some("fetch") => rt.block_on(fetch(&args[1..])),
        Some("proxy") => rt.block_on(proxy(&args[1..])),
        Some("peer") => rt.block_on(peer(&args[1..])),
        _ => {
            let o = options(&args)?;
            rt.block_on(bench(o))
        }
    }
}

/// A node: GET the file into a content store, verified by its hash.
async fn fetch(args: &[String]) -> anyhow::Result<()> {
    let [url, sha, size, dir, ca] = args else {
        bail!("fetch URL SHA SIZE DIR CA_FILE");
    };
    let size: u64 = size.parse()?;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca)?)?;
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()?;
    let store = glory_content::ContentStore::open(dir)?;
    let writer = store.writer(Some(sha), size).await?;
    let source = glory_content::Source {
        url: url.clone(),
        size,
    };
    glory_content::fetch_into(client, source, writer)
        .await
        .map_err(anyhow::Error::msg)
}

/// A group's caching proxy, told about one file, until killed.
async fn proxy(args: &[String]) -> anyhow::Result<()> {
    let [listen, url, sha, size, ca] = args else {
        bail!("proxy LISTEN URL SHA SIZE CA_FILE");
    };
    let listen: SocketAddr = listen.parse()?;
    let ca = std::fs::read_to_string(ca)?;
    let (proxy, listener) =
        glory_group_master::content::ContentProxy::bind(listen, listen.ip(), None, Some(&ca))
            .await?;
    proxy.rewrite(&mut [PackageSpec {
        name: "image".into(),
        version: "1".into(),
        sha256: sha.clone(),
        size: size.parse()?,
        url: url.clone(),
        torrent: None,
    }]);
    proxy
        .serve(listener, tokio_util::sync::CancellationToken::new())
        .await;
    Ok(())
}

/// A node's peer, as booting machines run it (`glory-node-agent torrent-get`): fetch
/// by the torrent into DIR, create DONE, seed until killed.
async fn peer(args: &[String]) -> anyhow::Result<()> {
    let [torrent, dir, done, ca] = args else {
        bail!("peer TORRENT DIR DONE CA_FILE");
    };
    let until_killed = Duration::from_secs(365 * 24 * 3600);
    glory_node_agent::setup::p2p::torrent_get(
        Path::new(torrent),
        Path::new(dir),
        Some(Path::new(done)),
        until_killed,
        Some(Path::new(ca)),
    )
    .await
}

/// Children started in namespaces: how long each took to exit successfully.
async fn wait_all(
    children: Vec<tokio::process::Child>,
    started: Instant,
) -> anyhow::Result<Vec<f64>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, mut c) in children.into_iter().enumerate() {
        set.spawn(async move {
            let status = c.wait().await?;
            anyhow::ensure!(status.success(), "node {i}: {status}");
            Ok(started.elapsed().as_secs_f64())
        });
    }
    let mut times = Vec::new();
    while let Some(r) = set.join_next().await {
        times.push(r??);
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

fn report(phase: &str, times: &[f64], single: Option<f64>, extra: &str) {
    let last = times.last().copied().unwrap_or(0.0);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    let ratio = single
        .filter(|s| *s > 0.0)
        .map(|s| format!("{:.2}x", last / s))
        .unwrap_or_else(|| "-".into());
    println!(
        "| {phase:<8} | {:>5} | {:>8.1} | {:>8.1} | {:>8.1} | {ratio:>7} | {extra}",
        times.len(),
        times.first().copied().unwrap_or(0.0),
        median,
        last
    );
}

async fn bench(o: Options) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let size = o.size_mb << 20;
    let net = Net::create(o.nodes + o.groups)?;
    net.cap(o.mbit)?;
    let cluster = TestCluster::builder()
        .groups(1)
        .agents(1)
        .api_listen(SocketAddr::from((net.host_ip, 0)))
        .tracker_interval_seconds(2)
        .start()
        .await?;
    let api = &cluster.api;
    let work = tempfile::tempdir()?;
    // The API is HTTPS off loopback: nodes, proxies and peers check it against the CA.
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, cluster.cluster().ca_pem())?;
    eprintln!("storing a {} MB image", o.size_mb);
    let img = distribution::image(api, work.path(), "bench", size).await?;
    let sha = img["rootfs"]["sha256"].as_str().context("sha")?.to_string();
    let central = format!("{}/content/{sha}", api.base());
    println!(
        "{} MB image, {} nodes, {} groups, every link (the server's too) capped at {} Mbit/s",
        o.size_mb, o.nodes, o.groups, o.mbit
    );
    println!("| phase    | nodes | first s  | median s | last s   | vs one  |");
    println!("|----------|-------|----------|----------|----------|---------|");
    let out = |phase: &str, i: usize| -> PathBuf { work.path().join(phase).join(format!("n{i}")) };
    let fetcher = |i: usize, url: &str, dir: &Path| {
        let mut cmd = net.command(i, exe.as_os_str());
        cmd.args(["fetch", url, &sha, &size.to_string()])
            .args([dir, &ca])
            .stdout(Stdio::null());
        tokio::process::Command::from(cmd)
    };
    let mut single = None;
    for phase in &o.phases {
        let phase = phase.as_str();
        let count = if phase == "single" { 1 } else { o.nodes };
        let started = Instant::now();
        let mut extra = String::new();
        let times = match phase {
            "single" | "central" => {
                let mut children = Vec::new();
                for i in 0..count {
                    children.push(fetcher(i, &central, &out(phase, i)).spawn()?);
                }
                wait_all(children, started).await?
            }
            "proxies" => {
                let mut proxies = Vec::new();
                let mut urls = Vec::new();
                for g in 0..o.groups {
                    let ns = o.nodes + g;
                    let listen = SocketAddr::from((net.peers[ns].1, 8080));
                    let mut cmd = net.command(ns, exe.as_os_str());
                    cmd.args(["proxy", &listen.to_string(), &central, &sha])
                        .arg(size.to_string())
                        .arg(&ca)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    proxies.push(
                        tokio::process::Command::from(cmd)
                            .kill_on_drop(true)
                            .spawn()?,
                    );
                    urls.push(format!("http://{listen}/content/{sha}"));
                    let up = glory_tests::wait::until(
                        "proxy listening",
                        Duration::from_secs(20),
                        || async {
                            tokio::net::TcpStream::connect(listen)
                                .await
                                .map(drop)
                                .map_err(|e| e.to_string())
                        },
                    );
                    up.await?;
                }
                let started = Instant::now();
                let mut children = Vec::new();
                for i in 0..count {
                    children.push(fetcher(i, &urls[i % o.groups], &out(phase, i)).spawn()?);
                }
                let times = wait_all(children, started).await?;
                drop(proxies);
                times
            }
            "p2p" => {
                let t = distribution::torrent(api, "bench", work.path()).await?;
                // aria2c keeps its control file while it seeds: a hook marks the end
                // of the download itself (aria2c passes the file's path third).
                let hook = work.path().join("done.sh");
                std::fs::write(&hook, "#!/bin/sh\ntouch \"$3.done\"\n")?;
                std::fs::set_permissions(
                    &hook,
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                )?;
                let mut peers = Vec::new();
                for i in 0..count {
                    let mut cmd = match &o.peer_command {
                        Some(program) => {
                            let mut cmd = net.command(i, std::ffi::OsStr::new(program));
                            cmd.arg(&t).arg(out(phase, i)).args(&o.peer_args);
                            cmd
                        }
                        None if o.client == "glory" => {
                            let mut cmd = net.command(i, exe.as_os_str());
                            let done = out(phase, i).join(format!("{sha}.done"));
                            cmd.arg("peer")
                                .arg(&t)
                                .arg(out(phase, i))
                                .arg(done)
                                .arg(&ca);
                            cmd
                        }
                        None => {
                            let inner = distribution::aria2c(&t, &out(phase, i), "60");
                            let mut cmd = net.command(i, inner.get_program());
                            // Every node keeps seeding until all are done (not only to
                            // a ratio of 1).
                            cmd.arg(format!("--on-bt-download-complete={}", hook.display()))
                                .arg(format!("--ca-certificate={}", ca.display()))
                                .args(&o.peer_args)
                                .arg("--seed-ratio=0.0")
                                .args(inner.get_args());
                            cmd
                        }
                    };
                    cmd.stdout(Stdio::null()).stderr(Stdio::null());
                    peers.push(
                        tokio::process::Command::from(cmd)
                            .kill_on_drop(true)
                            .spawn()?,
                    );
                }
                let mut times = vec![None; count];
                let mut shown = Instant::now();
                while times.iter().any(Option::is_none) {
                    if shown.elapsed() >= Duration::from_secs(10) {
                        shown = Instant::now();
                        let swarm = api.get("/api/v1/images/bench/swarm").await?;
                        eprintln!(
                            "{:6.1} s: {} of {count} done, peers uploaded {} MB, the seeder {} MB",
                            started.elapsed().as_secs_f64(),
                            times.iter().filter(|t| t.is_some()).count(),
                            swarm["peer_uploaded"].as_u64().unwrap_or(0) >> 20,
                            swarm["seeder_uploaded"].as_u64().unwrap_or(0) >> 20,
                        );
                    }
                    for (i, t) in times.iter_mut().enumerate() {
                        if t.is_none() && out(phase, i).join(format!("{sha}.done")).exists() {
                            *t = Some(started.elapsed().as_secs_f64());
                        }
                    }
                    for p in &mut peers {
                        if let Some(status) = p.try_wait()? {
                            anyhow::ensure!(status.success(), "a peer failed: {status}");
                        }
                    }
                    anyhow::ensure!(
                        started.elapsed() < Duration::from_secs(3600),
                        "p2p: over an hour"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // The peers' counts reach the tracker with their next announce.
                tokio::time::sleep(Duration::from_secs(3)).await;
                let swarm = api.get("/api/v1/images/bench/swarm").await?;
                extra = format!(
                    "peers uploaded {} MB, the seeder {} MB",
                    swarm["peer_uploaded"].as_u64().unwrap_or(0) >> 20,
                    swarm["seeder_uploaded"].as_u64().unwrap_or(0) >> 20
                );
                drop(peers);
                let mut times: Vec<f64> = times.into_iter().flatten().collect();
                times.sort_by(f64::total_cmp);
                times
            }
            _ => unreachable!("phases are checked"),
        };
        if phase != "p2p" {
            for i in 0..count {
                let got = glory_content::ContentStore::open(out(phase, i))?.size(&sha);
                anyhow::ensure!(
                    got == Some(size as u64),
                    "{phase}: node {i} has no verified copy"
                );
            }
        } else {
            for i in 0..count {
                let bytes = std::fs::metadata(out(phase, i).join(&sha))?.len();
                anyhow::ensure!(bytes == size as u64, "p2p: node {i} has {bytes} bytes");
            }
        }
        if phase == "single" {
            single = times.last().copied();
        }
        report(phase, &times, single, &extra);
        let _ = std::fs::remove_dir_all(work.path().join(phase));
    }
    cluster.shutdown().await;
    drop(net);
    Ok(())
}
