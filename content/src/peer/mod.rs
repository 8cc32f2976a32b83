//! Our BitTorrent peer, which nodes fetch images and large packages with (agents in
//! process, booting machines through `glory-agent torrent-get` in the initramfs).
//!
//! Why our own and not a general client: the swarms it joins are the cluster's own
//! (private torrents, our tracker, every peer one of our nodes), so nobody has to be
//! made to upload. A general client's tit-for-tat rations uploads to a few peers at a
//! time to punish free riders; `aria2c` sends to 4, a number fixed in its source, and
//! that alone held 32 capped nodes at 76% of their upload capacity (BENCHMARKS.md).
//! This peer uploads to every neighbour that asks, as fast as its link allows, and
//! asks for the rarest pieces first. It speaks the plain BEP 3 protocol (no
//! extensions), which any client understands: the tests run it against `aria2c`.
//!
//! A peer is started with [`Peer::start`]; [`Peer::finished`] waits for the whole,
//! verified file; it seeds until [`Peer::stop`] (or until it is dropped).

mod conn;
pub mod pieces;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha1::{Digest, Sha1};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::torrent::Bencode;
use pieces::Pieces;
use wire::Message;

/// The peer ids of our nodes' peers start with this (client `GL`, version 0001).
pub const PEER_ID_PREFIX: &str = "-GL0001-";

/// The ports a peer listens on, the first free one (BitTorrent's customary range, for
/// firewalls); any port when all are taken.
pub const PORTS: std::ops::RangeInclusive<u16> = 6881..=6999;

/// The most neighbours a peer keeps (connections both ways).
const MAX_NEIGHBOURS: usize = 60;
/// How often the tracker is asked again after a failed announce.
const RETRY: Duration = Duration::from_secs(5);

/// A `.torrent` of one file, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metainfo {
    pub announce: String,
    /// SHA-1 of the info dictionary, encoded canonically (as ours are).
    pub info_hash: [u8; 20],
    pub name: String,
    pub length: u64,
    pub piece_length: u64,
    pub hashes: Vec<[u8; 20]>,
}

impl Metainfo {
    pub fn parse(bytes: &[u8]) -> Result<Metainfo, String> {
        let meta = Bencode::decode(bytes)?;
        let text = |v: Option<&Bencode>, what: &str| -> Result<String, String> {
            match v {
                Some(Bencode::Bytes(b)) => {
                    String::from_utf8(b.clone()).map_err(|_| format!("{what} is not UTF-8"))
                }
                _ => Err(format!("no {what}")),
            }
        };
        let int = |v: Option<&Bencode>, what: &str| -> Result<u64, String> {
            match v {
                Some(Bencode::Int(i)) if *i > 0 => Ok(*i as u64),
                _ => Err(format!("no positive {what}")),
            }
        };
        let announce = text(meta.get("announce"), "announce URL")?;
        let info = meta.get("info").ok_or("no info dictionary")?;
        if info.get("files").is_some() {
            return Err("a torrent of several files; ours have one".into());
        }
        let length = int(info.get("length"), "length")?;
        let piece_length = int(info.get("piece length"), "piece length")?;
        if piece_length > 16 << 20 {
            return Err(format!("pieces of {piece_length} bytes (at most 16 MiB)"));
        }
        let Some(Bencode::Bytes(pieces)) = info.get("pieces") else {
            return Err("no pieces".into());
        };
        if pieces.len() % 20 != 0 || (pieces.len() / 20) as u64 != length.div_ceil(piece_length) {
            return Err(format!(
                "{} bytes of piece hashes for {length} bytes in pieces of {piece_length}",
                pieces.len()
            ));
        }
        let name = text(info.get("name"), "name")?;
        // The file is written under its name: no paths.
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(format!("{name:?} is not a file name"));
        }
        Ok(Metainfo {
            announce,
            info_hash: Sha1::digest(info.encode()).into(),
            name,
            length,
            piece_length,
            hashes: pieces
                .chunks(20)
                .map(|c| c.try_into().expect("20 bytes"))
                .collect(),
        })
    }
}

/// What a peer is told when it starts.
pub struct PeerConfig {
    pub torrent: Metainfo,
    /// Where the file is written (and read from for neighbours). If it exists, its
    /// pieces are checked first and the good ones kept.
    pub file: PathBuf,
    /// Announces go through this client (it trusts the cluster CA).
    pub client: reqwest::Client,
    /// Our peer id starts with this (at most 12 bytes; the rest is random).
    pub id_prefix: String,
    /// Where to listen for neighbours (port 0: the first free of [`PORTS`], else any).
    pub listen: SocketAddr,
    /// Upload at most this many bytes a second, over all neighbours (None: as fast
    /// as the link goes).
    pub upload_limit: Option<u64>,
    /// The file is whole and verified already (a content store's, named by its
    /// SHA-256): it is opened read-only, only to seed, and not checked again.
    pub whole: bool,
}

impl PeerConfig {
    /// A node's peer fetching `torrent` into `file`: our peer id prefix, any port, no
    /// upload limit.
    pub fn new(torrent: Metainfo, file: PathBuf, client: reqwest::Client) -> PeerConfig {
        PeerConfig {
            torrent,
            file,
            client,
            id_prefix: PEER_ID_PREFIX.into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            upload_limit: None,
            whole: false,
        }
    }
}

/// How far a download is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub pieces: usize,
    pub of: usize,
    /// Why the peer gave up (the file cannot be written), if it did.
    pub failed: Option<String>,
}

impl Progress {
    pub fn done(&self) -> bool {
        self.pieces == self.of
    }
}

/// Why a peer could not start.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has {has} bytes, the torrent {wants}")]
    Size { path: PathBuf, has: u64, wants: u64 },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What a writer task is told to send.
enum Out {
    Msg(Message),
    /// A block a neighbour asked for: read from the file, then sent.
    Block {
        index: u32,
        begin: u32,
        length: u32,
    },
}

struct Neighbour {
    no: u64,
    /// Whose connection this is (the initiator's peer id): of two connections between
    /// the same pair, both ends keep the one the smaller id started.
    initiator: [u8; 20],
    tx: mpsc::UnboundedSender<Out>,
    close: watch::Sender<bool>,
}

#[derive(Default)]
struct Neighbours {
    by_id: HashMap<[u8; 20], Neighbour>,
    /// Addresses we dialled, while the connection lasts.
    dialled: HashSet<SocketAddr>,
    /// Who each dialled address turned out to be.
    known: HashMap<SocketAddr, [u8; 20]>,
    /// Dials whose TCP connection is not made yet.
    connecting: usize,
    next_no: u64,
}

/// What a peer's tasks share.
struct Shared {
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    hashes: Vec<[u8; 20]>,
    piece_length: u64,
    file: std::fs::File,
    pieces: Mutex<Pieces>,
    neighbours: Mutex<Neighbours>,
    uploaded: AtomicU64,
    downloaded: AtomicU64,
    progress: watch::Sender<Progress>,
    stop: watch::Receiver<bool>,
    limit: Option<RateLimit>,
}

/// At most `rate` bytes a second over every neighbour: each block waits its turn
/// (the bucket goes into debt, and the sender sleeps it off).
struct RateLimit {
    rate: f64,
    /// Bytes that may go now (negative: owed) and when that was reckoned.
    bucket: Mutex<(f64, std::time::Instant)>,
}

impl RateLimit {
    fn new(rate: u64) -> RateLimit {
        RateLimit {
            rate: rate.max(1) as f64,
            bucket: Mutex::new((0.0, std::time::Instant::now())),
        }
    }

    async fn take(&self, bytes: u32) {
        let wait = {
            let mut b = lock(&self.bucket);
            let now = std::time::Instant::now();
            // At most a quarter of a second's worth saved up.
            let refill = now.duration_since(b.1).as_secs_f64() * self.rate;
            b.0 = (b.0 + refill).min(self.rate / 4.0) - bytes as f64;
            b.1 = now;
            (b.0 < 0.0).then(|| Duration::from_secs_f64(-b.0 / self.rate))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn update_progress(&self, failed: Option<String>) {
        let (have, of) = {
            let p = lock(&self.pieces);
            (p.have_count(), p.count())
        };
        self.progress.send_modify(|pr| {
            pr.pieces = have;
            pr.of = of;
            if failed.is_some() {
                pr.failed = failed;
            }
        });
    }

    /// Tell every neighbour.
    fn broadcast(&self, msg: Message) {
        for n in lock(&self.neighbours).by_id.values() {
            let _ = n.tx.send(Out::Msg(msg.clone()));
        }
    }
}

/// A running peer.
pub struct Peer {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    progress: watch::Receiver<Progress>,
    port: u16,
    tracker: Option<tokio::task::JoinHandle<()>>,
}

impl Peer {
    /// Check what is already in the file, listen, announce and start fetching.
    pub async fn start(config: PeerConfig) -> Result<Peer, PeerError> {
        let t = &config.torrent;
        let file_err = |source| PeerError::File {
            path: config.file.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!config.whole)
            .create(!config.whole)
            .truncate(false)
            .open(&config.file)
            .map_err(file_err)?;
        let mut pieces = Pieces::new(t.hashes.clone(), t.piece_length, t.length);
        let has = file.metadata().map_err(file_err)?.len();
        if config.whole {
            if has != t.length {
                return Err(PeerError::Size {
                    path: config.file.clone(),
                    has,
                    wants: t.length,
                });
            }
            for p in 0..pieces.count() as u32 {
                pieces.got(p);
            }
        } else if has == t.length {
            let check = (
                file.try_clone().map_err(file_err)?,
                t.hashes.clone(),
                t.piece_length,
            );
            let good =
                tokio::task::spawn_blocking(move || existing_pieces(&check.0, &check.1, check.2))
                    .await
                    .expect("checking pieces does not panic")
                    .map_err(file_err)?;
            for p in good {
                pieces.got(p);
            }
        } else {
            file.set_len(t.length).map_err(file_err)?;
        }
        let listener = listen(config.listen)
            .await
            .map_err(|source| PeerError::Listen {
                addr: config.listen,
                source,
            })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let mut peer_id = [0u8; 20];
        let prefix = config.id_prefix.as_bytes();
        let keep = prefix.len().min(12);
        peer_id[..keep].copy_from_slice(&prefix[..keep]);
        for b in &mut peer_id[keep..] {
            *b = b"0123456789abcdefghijklmnopqrstuvwxyz"[rand::random_range(0..36)];
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            info_hash: t.info_hash,
            peer_id,
            hashes: t.hashes.clone(),
            piece_length: t.piece_length,
            file,
            pieces: Mutex::new(pieces),
            neighbours: Mutex::new(Neighbours::default()),
            uploaded: AtomicU64::new(0),
            downloaded: AtomicU64::new(0),
            progress: progress_tx,
            stop: stop_rx,
            limit: config.upload_limit.map(RateLimit::new),
        });
        shared.update_progress(None);
        tokio::spawn(accept(shared.clone(), listener));
        let tracker = tokio::spawn(announce_loop(
            shared.clone(),
            config.client,
            config.torrent.announce.clone(),
            port,
        ));
        info!(torrent = %config.torrent.name, port, "peer started");
        Ok(Peer {
            shared,
            stop: stop_tx,
            progress: progress_rx,
            port,
            tracker: Some(tracker),
        })
    }

    /// The port neighbours connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Bytes uploaded to neighbours and verified bytes downloaded.
    pub fn transferred(&self) -> (u64, u64) {
        (
            self.shared.uploaded.load(Ordering::Relaxed),
            self.shared.downloaded.load(Ordering::Relaxed),
        )
    }

    /// Wait until the whole file is here and verified, or the peer failed.
    pub async fn finished(&mut self) -> Result<(), String> {
        let p = self
            .progress
            .wait_for(|p| p.done() || p.failed.is_some())
            .await
            .map_err(|_| "the peer stopped".to_string())?;
        match &p.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Leave the swarm: tell the tracker and close every connection.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.tracker.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The pieces of `file` whose hashes match.
fn existing_pieces(
    file: &std::fs::File,
    hashes: &[[u8; 20]],
    piece_length: u64,
) -> std::io::Result<Vec<u32>> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; piece_length as usize];
    let mut good = Vec::new();
    for (i, h) in hashes.iter().enumerate() {
        let start = i as u64 * piece_length;
        let n = (len - start).min(piece_length) as usize;
        file.read_exact_at(&mut buf[..n], start)?;
        if Sha1::digest(&buf[..n]).as_slice() == h {
            good.push(i as u32);
        }
    }
    Ok(good)
}

/// Bind `addr`; port 0 is the first free port of [`PORTS`], else any.
async fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if addr.port() == 0 {
        for port in PORTS {
            if let Ok(l) = TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
                return Ok(l);
            }
        }
    }
    TcpListener::bind(addr).await
}

async fn accept(shared: Arc<Shared>, listener: TcpListener) {
    let mut stop = shared.stop.clone();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    if lock(&shared.neighbours).by_id.len() >= MAX_NEIGHBOURS {
                        debug!(%addr, "neighbour refused: enough neighbours");
                        continue;
                    }
                    tokio::spawn(conn::run(shared.clone(), stream, None));
                }
                Err(e) => {
                    warn!("accepting a neighbour: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Until `flag` is set (or its sender is gone).
async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

/// Percent-encode every byte (info hashes and peer ids are raw bytes).
fn escape(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// One announce: the interval to wait and the peers offered.
async fn announce(
    shared: &Shared,
    client: &reqwest::Client,
    url: &str,
    port: u16,
    event: Option<&str>,
) -> Result<(Duration, Vec<SocketAddr>), String> {
    let left = lock(&shared.pieces).left();
    let mut query = format!(
        "info_hash={}&peer_id={}&port={port}&uploaded={}&downloaded={}&left={left}&compact=1&numwant=50",
        escape(&shared.info_hash),
        escape(&shared.peer_id),
        shared.uploaded.load(Ordering::Relaxed),
        shared.downloaded.load(Ordering::Relaxed),
    );
    if let Some(e) = event {
        query.push_str("&event=");
        query.push_str(e);
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    let resp = client
        .get(format!("{url}{sep}{query}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("tracker {url}: {e}"))?;
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("tracker {url}: {e}"))?;
    parse_answer(&body)
}

/// A tracker's answer: its interval and peers (compact or not, IPv4 and IPv6).
fn parse_answer(body: &[u8]) -> Result<(Duration, Vec<SocketAddr>), String> {
    let answer = Bencode::decode(body).map_err(|e| format!("tracker answer: {e}"))?;
    if let Some(Bencode::Bytes(reason)) = answer.get("failure reason") {
        return Err(format!("tracker: {}", String::from_utf8_lossy(reason)));
    }
    let interval = match answer.get("interval") {
        Some(Bencode::Int(i)) if *i > 0 => Duration::from_secs(*i as u64),
        _ => return Err("tracker answer: no interval".into()),
    };
    let mut peers = Vec::new();
    match answer.get("peers") {
        Some(Bencode::Bytes(b)) => {
            for c in b.chunks_exact(6) {
                let ip: [u8; 4] = c[..4].try_into().expect("4 bytes");
                peers.push(SocketAddr::new(
                    IpAddr::from(ip),
                    u16::from_be_bytes([c[4], c[5]]),
                ));
            }
        }
        Some(Bencode::List(list)) => {
            for p in list {
                let ip = match p.get("ip") {
                    Some(Bencode::Bytes(b)) => String::from_utf8_lossy(b).parse::<IpAddr>().ok(),
                    _ => None,
                };
                if let (Some(ip), Some(Bencode::Int(port))) = (ip, p.get("port")) {
                    if let Ok(port) = u16::try_from(*port) {
                        peers.push(SocketAddr::new(ip, port));
                    }
                }
            }
        }
        _ => {}
    }
    if let Some(Bencode::Bytes(b)) = answer.get("peers6") {
        for c in b.chunks_exact(18) {
            let ip: [u8; 16] = c[..16].try_into().expect("16 bytes");
            peers.push(SocketAddr::new(
                IpAddr::from(ip),
                u16::from_be_bytes([c[16], c[17]]),
            ));
        }
    }
    Ok((interval, peers))
}

/// Announce now and every interval; dial the peers offered; say `completed` when
/// the file is whole and `stopped` when the peer stops.
async fn announce_loop(shared: Arc<Shared>, client: reqwest::Client, url: String, port: u16) {
    let mut stop = shared.stop.clone();
    let mut progress = shared.progress.subscribe();
    let mut event = Some("started");
    let mut reported_done = progress.borrow().done();
    loop {
        let wait = match announce(&shared, &client, &url, port, event).await {
            Ok((interval, peers)) => {
                event = None;
                for addr in peers {
                    dial(&shared, addr);
                }
                interval
            }
            Err(e) => {
                warn!("{e}");
                RETRY
            }
        };
        let want_done = !reported_done;
        tokio::select! {
            _ = stopped(&mut stop) => break,
            _ = tokio::time::sleep(wait) => {}
            _ = async { progress.wait_for(move |p| want_done && p.done()).await.map(drop) } => {
                reported_done = true;
                event = Some("completed");
            }
        }
    }
    if let Err(e) = announce(&shared, &client, &url, port, Some("stopped")).await {
        debug!("leaving the swarm: {e}");
    }
}

/// Connect to `addr` unless it is a neighbour already or we have enough.
fn dial(shared: &Arc<Shared>, addr: SocketAddr) {
    {
        let mut n = lock(&shared.neighbours);
        let is_neighbour = n
            .known
            .get(&addr)
            .is_some_and(|id| n.by_id.contains_key(id));
        if is_neighbour
            || n.dialled.contains(&addr)
            || n.by_id.len() + n.connecting >= MAX_NEIGHBOURS
        {
            return;
        }
        n.dialled.insert(addr);
        n.connecting += 1;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let stream =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await;
        lock(&shared.neighbours).connecting -= 1;
        match stream {
            Ok(Ok(stream)) => conn::run(shared.clone(), stream, Some(addr)).await,
            Ok(Err(e)) => debug!(%addr, "neighbour unreachable: {e}"),
            Err(_) => debug!(%addr, "neighbour unreachable: timed out"),
        }
        lock(&shared.neighbours).dialled.remove(&addr);
    });
}

#[cfg(test)]
mod tests;
