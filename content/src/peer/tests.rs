//! Peers of ours in one swarm on loopback, with a tracker of ours behind a minimal
//! HTTP server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::torrent::make_torrent;
use crate::tracker::{parse_announce, Tracker};

/// A tracker answering `GET /announce?...` on loopback; its address.
async fn tracker(info_hash: [u8; 20]) -> (SocketAddr, Arc<Mutex<Tracker>>) {
    let tracker = Arc::new(Mutex::new(Tracker::new(1, b"-SEED-")));
    tracker.lock().unwrap().allow(info_hash);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let t = tracker.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, from) = listener.accept().await.unwrap();
            let t = t.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or("");
                let query = target.split_once('?').map(|x| x.1).unwrap_or("");
                let body = {
                    let mut t = t.lock().unwrap();
                    let peers = parse_announce(query, from.ip())
                        .and_then(|a| t.announce(&a, None, now_ms()));
                    t.answer(peers)
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    (addr, tracker)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

/// The file's torrent, announced to a new tracker.
async fn torrent(dir: &Path, bytes: &[u8]) -> (Metainfo, Arc<Mutex<Tracker>>) {
    let path = dir.join("source");
    std::fs::write(&path, bytes).unwrap();
    let probe = make_torrent(&path, "f", "http://x/announce").unwrap();
    let (addr, tracker) = tracker(probe.info_hash).await;
    let t = make_torrent(&path, "f", &format!("http://{addr}/announce")).unwrap();
    assert_eq!(
        t.info_hash, probe.info_hash,
        "the announce URL is outside the info"
    );
    (Metainfo::parse(&t.bytes).unwrap(), tracker)
}

/// Wait for `peer` to finish (a minute at most) and check `file` holds `bytes`.
async fn whole(peer: &mut Peer, file: &Path, bytes: &[u8]) {
    tokio::time::timeout(Duration::from_secs(60), peer.finished())
        .await
        .expect("fetched within a minute")
        .unwrap();
    assert_eq!(std::fs::read(file).unwrap(), bytes);
}

fn config(t: &Metainfo, file: std::path::PathBuf, prefix: &str) -> PeerConfig {
    PeerConfig {
        id_prefix: prefix.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..PeerConfig::new(t.clone(), file, reqwest::Client::new())
    }
}

#[tokio::test]
async fn five_peers_fetch_from_one_seeder_and_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data((3 << 20) + 12345);
    let (t, tracker) = torrent(dir.path(), &bytes).await;
    assert_eq!(t.length, bytes.len() as u64);
    // The seeder starts from a whole file, checked piece by piece.
    let seeder = Peer::start(config(&t, dir.path().join("source"), "-SEED-"))
        .await
        .unwrap();
    assert!(seeder.progress().done());
    let mut peers = Vec::new();
    for i in 0..5 {
        let file = dir.path().join(format!("p{i}"));
        peers.push((
            file.clone(),
            Peer::start(config(&t, file, "-GL-")).await.unwrap(),
        ));
    }
    for (file, peer) in &mut peers {
        whole(peer, file, &bytes).await;
    }
    let downloaded: u64 = peers.iter().map(|(_, p)| p.transferred().1).sum();
    assert_eq!(downloaded, 5 * bytes.len() as u64);
    // Completed peers tell the tracker, and stopped ones leave.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = tracker.lock().unwrap().stats(&t.info_hash).unwrap();
    assert_eq!(stats.completed, 5, "{stats:?}");
    for (_, p) in peers {
        p.stop().await;
    }
    let stats = tracker.lock().unwrap().stats(&t.info_hash).unwrap();
    assert_eq!(stats.peers, 1, "only the seeder is left: {stats:?}");
    seeder.stop().await;
}

#[tokio::test]
async fn a_partial_file_keeps_its_good_pieces_and_a_bad_one_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(1 << 20);
    let (t, _tracker) = torrent(dir.path(), &bytes).await;
    // Half the file is there, one of its pieces corrupted.
    let file = dir.path().join("half");
    let mut half = bytes.clone();
    half[bytes.len() / 2..].fill(0);
    half[100] ^= 0xff;
    std::fs::write(&file, &half).unwrap();
    let mut peer = Peer::start(config(&t, file.clone(), "-GL-")).await.unwrap();
    let p = peer.progress();
    assert_eq!((p.pieces, p.of), (t.hashes.len() / 2 - 1, t.hashes.len()));
    let seeder = Peer::start(config(&t, dir.path().join("source"), "-SEED-"))
        .await
        .unwrap();
    whole(&mut peer, &file, &bytes).await;
    assert_eq!(
        peer.transferred().1,
        bytes.len() as u64 / 2 + t.piece_length
    );
    drop(seeder);
}

#[tokio::test]
async fn a_neighbour_sending_garbage_is_dropped_and_the_peer_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(256 << 10);
    let (t, _tracker) = torrent(dir.path(), &bytes).await;
    let seeder = Peer::start(config(&t, dir.path().join("source"), "-SEED-"))
        .await
        .unwrap();
    let at = SocketAddr::from(([127, 0, 0, 1], seeder.port()));
    // Not BitTorrent at all; then the right handshake with a huge message.
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    s.write_all(&[b'x'; 68]).await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    let id = wire::exchange_handshakes(&mut s, &t.info_hash, &[9; 20])
        .await
        .unwrap();
    assert!(id.starts_with(b"-SEED-"));
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    // Thousands of requests, none read: the peer hangs up rather than queue them all.
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    wire::exchange_handshakes(&mut s, &t.info_hash, &[9; 20])
        .await
        .unwrap();
    let ask = Message::Request {
        index: 0,
        begin: 0,
        length: 16384,
    };
    let asks: Vec<u8> = (0..3000).flat_map(|_| ask.encode()).collect();
    s.write_all(&asks).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the peer hung up");
    assert!(got.len() < 3000 * 16384, "{} bytes served", got.len());
    // A peer still gets the file.
    let file = dir.path().join("p");
    let mut peer = Peer::start(config(&t, file.clone(), "-GL-")).await.unwrap();
    whole(&mut peer, &file, &bytes).await;
}

#[test]
fn metainfo_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, data(200_000)).unwrap();
    let t = make_torrent(&path, "abc", "http://t/announce").unwrap();
    let m = Metainfo::parse(&t.bytes).unwrap();
    assert_eq!(m.info_hash, t.info_hash);
    assert_eq!(
        (m.length, m.hashes.len(), m.name.as_str()),
        (200_000, 4, "abc")
    );
    assert!(Metainfo::parse(b"de").is_err());
    let mut short = Bencode::decode(&t.bytes).unwrap();
    if let Bencode::Dict(meta) = &mut short {
        if let Some(Bencode::Dict(info)) = meta.get_mut(&b"info"[..]) {
            info.insert(b"length".to_vec(), Bencode::Int(10_000_000));
        }
    }
    let err = Metainfo::parse(&short.encode()).unwrap_err();
    assert!(err.contains("piece hashes"), "{err}");
}

#[test]
fn tracker_answers_are_parsed_compact_or_not() {
    let compact = Bencode::dict([
        ("interval", Bencode::Int(30)),
        ("peers", Bencode::Bytes(vec![10, 0, 0, 1, 0x1a, 0xe1])),
    ]);
    let (interval, peers) = parse_answer(&compact.encode()).unwrap();
    assert_eq!(interval, Duration::from_secs(30));
    assert_eq!(peers, vec!["10.0.0.1:6881".parse().unwrap()]);
    let listed = Bencode::dict([
        ("interval", Bencode::Int(5)),
        (
            "peers",
            Bencode::List(vec![Bencode::dict([
                ("ip", Bencode::str("::1")),
                ("port", Bencode::Int(7000)),
            ])]),
        ),
    ]);
    assert_eq!(
        parse_answer(&listed.encode()).unwrap().1,
        vec!["[::1]:7000".parse().unwrap()]
    );
    let failed = Bencode::dict([("failure reason", Bencode::str("unknown torrent"))]);
    assert!(parse_answer(&failed.encode())
        .unwrap_err()
        .contains("unknown torrent"));
}

#[tokio::test]
async fn a_seeder_of_a_whole_file_keeps_to_its_upload_limit() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(2 << 20);
    let (t, _tracker) = torrent(dir.path(), &bytes).await;
    let source = dir.path().join("source");
    // Read-only, as a content store's files are.
    std::fs::set_permissions(&source, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    let seeder = Peer::start(PeerConfig {
        upload_limit: Some(1 << 20),
        whole: true,
        ..config(&t, source.clone(), "-SEED-")
    })
    .await
    .unwrap();
    assert!(seeder.progress().done());
    let started = std::time::Instant::now();
    let file = dir.path().join("p");
    let mut peer = Peer::start(config(&t, file.clone(), "-GL-")).await.unwrap();
    whole(&mut peer, &file, &bytes).await;
    // 2 MiB at 1 MiB/s, a quarter second's burst aside: no faster than 1.75 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1750),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(seeder.transferred().0, bytes.len() as u64);
    // A whole file of the wrong size is refused.
    std::fs::write(&file, b"short").unwrap();
    let err = Peer::start(PeerConfig {
        whole: true,
        ..config(&t, file.clone(), "-SEED-")
    });
    assert!(matches!(err.await, Err(PeerError::Size { has: 5, .. })));
}

/// A neighbour of the test's own: handshake, all pieces, unchoked; it answers the
/// peer's requests with `answer(index, begin, length)`, until the peer hangs up.
async fn fake_neighbour(
    port: u16,
    t: &Metainfo,
    answer: impl Fn(u32, u32, u32) -> Vec<u8>,
) -> usize {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    wire::exchange_handshakes(&mut s, &t.info_hash, &[7; 20])
        .await
        .unwrap();
    let all = pieces::to_bitfield(&vec![true; t.hashes.len()]);
    s.write_all(&Message::Bitfield(all).encode()).await.unwrap();
    s.write_all(&Message::Unchoke.encode()).await.unwrap();
    let mut answered = 0;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), wire::read_message(&mut s, 1 << 20));
        match m.await {
            Ok(Ok(Message::Request {
                index,
                begin,
                length,
            })) => {
                let data = answer(index, begin, length);
                let piece = Message::Piece { index, begin, data };
                if s.write_all(&piece.encode()).await.is_err() {
                    return answered;
                }
                answered += 1;
            }
            Ok(Ok(_)) => {}
            _ => return answered,
        }
    }
}

#[tokio::test]
async fn a_neighbour_sending_blocks_of_the_wrong_size_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(128 << 10);
    let (t, _tracker) = torrent(dir.path(), &bytes).await;
    let file = dir.path().join("p");
    let mut peer = Peer::start(config(&t, file.clone(), "-GL-")).await.unwrap();
    // Short blocks: the first one ends the connection (long before the neighbour's
    // 30 s of patience), and nothing is kept.
    let started = std::time::Instant::now();
    let answered = fake_neighbour(peer.port(), &t, |_, _, _| vec![1; 100]).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(answered >= 1, "the peer asked for blocks");
    assert_eq!(peer.progress().pieces, 0);
    // Honest blocks from the next neighbour: the file is whole.
    let (honest, port, t2, pl) = (bytes.clone(), peer.port(), t.clone(), t.piece_length);
    let serve = tokio::spawn(async move {
        fake_neighbour(port, &t2, move |index, begin, length| {
            let at = (index as u64 * pl) as usize + begin as usize;
            honest[at..at + length as usize].to_vec()
        })
        .await
    });
    whole(&mut peer, &file, &bytes).await;
    peer.stop().await;
    assert_eq!(
        serve.await.unwrap(),
        8,
        "2 pieces of 4 blocks, each asked once"
    );
}
