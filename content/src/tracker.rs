//! A BitTorrent tracker's decisions (BEP 3 announces, BEP 23 compact answers), pure:
//! who is in each swarm, which peers an announcing peer gets (its own group's first,
//! then other peers, seeders last, so nodes exchange pieces with their neighbours
//! before they load a seeder), and what the swarm has moved. Only torrents made here
//! are tracked. Time is passed in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::torrent::Bencode;

/// Peers silent for longer than this many announce intervals are dropped.
const EXPIRE_INTERVALS: u64 = 3;

/// One announce, as a client sent it (the address is where it connected from).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    pub info_hash: [u8; 20],
    pub peer_id: Vec<u8>,
    pub ip: IpAddr,
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    /// `started`, `completed`, `stopped` or none.
    pub event: Option<String>,
    pub numwant: usize,
}

#[derive(Clone, Debug)]
struct Peer {
    addr: SocketAddr,
    left: u64,
    group: Option<String>,
    seeder: bool,
    seen_ms: u64,
}

/// What a swarm has moved, by what its peers last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwarmStats {
    pub peers: usize,
    pub complete: usize,
    /// Bytes the cluster's own seeders uploaded.
    pub seeder_uploaded: u64,
    /// Bytes every other peer uploaded (to each other).
    pub peer_uploaded: u64,
    /// Peers that reported `completed`.
    pub completed: u64,
}

#[derive(Default)]
struct Swarm {
    peers: HashMap<Vec<u8>, Peer>,
    /// The most each peer id ever reported uploading (clients report totals), and
    /// whether it is a seeder: kept when a peer leaves or goes silent, so a peer that
    /// comes back after expiring is not counted twice.
    uploads: HashMap<Vec<u8>, (bool, u64)>,
    completed: u64,
}

/// The tracker's state.
pub struct Tracker {
    swarms: HashMap<[u8; 20], Swarm>,
    /// Seconds between announces, told to clients.
    pub interval_s: u64,
    /// Peer ids starting with this are the cluster's seeders.
    pub seeder_prefix: Vec<u8>,
}

impl Tracker {
    pub fn new(interval_s: u64, seeder_prefix: &[u8]) -> Tracker {
        Tracker {
            swarms: HashMap::new(),
            interval_s: interval_s.max(1),
            seeder_prefix: seeder_prefix.to_vec(),
        }
    }

    /// Track `info_hash` (a torrent made here).
    pub fn allow(&mut self, info_hash: [u8; 20]) {
        self.swarms.entry(info_hash).or_default();
    }

    /// Stop tracking `info_hash`.
    pub fn forget(&mut self, info_hash: &[u8; 20]) {
        self.swarms.remove(info_hash);
    }

    /// Record `a` (from a peer in `group`) and choose the peers to answer with.
    pub fn announce(
        &mut self,
        a: &Announce,
        group: Option<String>,
        now_ms: u64,
    ) -> Result<Vec<SocketAddr>, String> {
        let expire_ms = self.interval_s * 1000 * EXPIRE_INTERVALS;
        let seeder = a.peer_id.starts_with(&self.seeder_prefix);
        let Some(swarm) = self.swarms.get_mut(&a.info_hash) else {
            return Err("unknown torrent: ask the cluster for its .torrent".into());
        };
        // Drop peers that went silent, keeping what they uploaded.
        let stale: Vec<Vec<u8>> = swarm
            .peers
            .iter()
            .filter(|(_, p)| now_ms.saturating_sub(p.seen_ms) > expire_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            swarm.peers.remove(&id);
        }
        let total = swarm
            .uploads
            .entry(a.peer_id.clone())
            .or_insert((seeder, 0));
        total.1 = total.1.max(a.uploaded);
        if a.event.as_deref() == Some("completed") {
            swarm.completed += 1;
        }
        if a.event.as_deref() == Some("stopped") {
            swarm.peers.remove(&a.peer_id);
            return Ok(Vec::new());
        }
        let me = Peer {
            addr: SocketAddr::new(a.ip, a.port),
            left: a.left,
            group: group.clone(),
            seeder,
            seen_ms: now_ms,
        };
        swarm.peers.insert(a.peer_id.clone(), me);
        let mut others: Vec<&Peer> = swarm
            .peers
            .iter()
            .filter(|(id, _)| **id != a.peer_id)
            .map(|(_, p)| p)
            .collect();
        // Same group first, then other peers still downloading or done, the cluster's
        // seeders last; a stable order inside each class (by address).
        let rank = |p: &Peer| -> u8 {
            if p.seeder {
                3
            } else if group.is_some() && p.group == group {
                0
            } else if p.left > 0 {
                1
            } else {
                2
            }
        };
        others.sort_by_key(|p| (rank(p), p.addr));
        let want = if a.numwant == 0 {
            50
        } else {
            a.numwant.min(200)
        };
        // A finished peer needs nobody.
        if a.left == 0 {
            return Ok(Vec::new());
        }
        Ok(others.into_iter().take(want).map(|p| p.addr).collect())
    }

    pub fn stats(&self, info_hash: &[u8; 20]) -> Option<SwarmStats> {
        let s = self.swarms.get(info_hash)?;
        let mut st = SwarmStats {
            peers: s.peers.len(),
            complete: s.peers.values().filter(|p| p.left == 0).count(),
            completed: s.completed,
            ..SwarmStats::default()
        };
        for (seeder, uploaded) in s.uploads.values() {
            if *seeder {
                st.seeder_uploaded += uploaded;
            } else {
                st.peer_uploaded += uploaded;
            }
        }
        Some(st)
    }

    /// The answer's body: the peers, compact (IPv4) and `peers6` (IPv6), or a failure.
    pub fn answer(&self, peers: Result<Vec<SocketAddr>, String>) -> Vec<u8> {
        match peers {
            Err(reason) => Bencode::dict([("failure reason", Bencode::str(&reason))]).encode(),
            Ok(peers) => {
                let (mut v4, mut v6) = (Vec::new(), Vec::new());
                for p in peers {
                    match p.ip() {
                        IpAddr::V4(ip) => {
                            v4.extend_from_slice(&ip.octets());
                            v4.extend_from_slice(&p.port().to_be_bytes());
                        }
                        IpAddr::V6(ip) => {
                            v6.extend_from_slice(&ip.octets());
                            v6.extend_from_slice(&p.port().to_be_bytes());
                        }
                    }
                }
                Bencode::dict([
                    ("interval", Bencode::Int(self.interval_s as i64)),
                    ("peers", Bencode::Bytes(v4)),
                    ("peers6", Bencode::Bytes(v6)),
                ])
                .encode()
            }
        }
    }
}

/// Percent-decode a query value into bytes (info hashes and peer ids are raw bytes).
pub fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// An announce from a raw query string and the client's address; or what is wrong.
pub fn parse_announce(query: &str, ip: IpAddr) -> Result<Announce, String> {
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            fields.insert(k, v);
        }
    }
    let bytes = |k: &str| -> Result<Vec<u8>, String> {
        let v = fields.get(k).ok_or(format!("{k} is missing"))?;
        percent_decode(v).ok_or(format!("{k} is not percent-encoded"))
    };
    let number = |k: &str| -> Result<u64, String> {
        fields
            .get(k)
            .ok_or(format!("{k} is missing"))?
            .parse()
            .map_err(|_| format!("{k} is not a number"))
    };
    let info_hash: [u8; 20] = bytes("info_hash")?
        .try_into()
        .map_err(|_| "info_hash is not 20 bytes".to_string())?;
    let peer_id = bytes("peer_id")?;
    if peer_id.len() != 20 {
        return Err("peer_id is not 20 bytes".into());
    }
    let port = u16::try_from(number("port")?).map_err(|_| "port out of range".to_string())?;
    if port == 0 {
        return Err("port is 0".into());
    }
    Ok(Announce {
        info_hash,
        peer_id,
        ip,
        port,
        uploaded: number("uploaded").unwrap_or(0),
        downloaded: number("downloaded").unwrap_or(0),
        left: number("left")?,
        event: fields
            .get("event")
            .filter(|e| !e.is_empty())
            .map(|e| e.to_string()),
        numwant: number("numwant").unwrap_or(50) as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce(id: u8, ip: [u8; 4], left: u64, uploaded: u64, event: Option<&str>) -> Announce {
        let mut peer_id = vec![b'-', b'A', b'R'];
        peer_id.resize(20, id);
        Announce {
            info_hash: [7; 20],
            peer_id,
            ip: IpAddr::from(ip),
            port: 6881,
            uploaded,
            downloaded: 0,
            left,
            event: event.map(str::to_string),
            numwant: 50,
        }
    }

    #[test]
    fn peers_of_the_same_group_come_first_and_seeders_last() {
        let mut t = Tracker::new(30, b"-GLORYSEED");
        assert!(t
            .announce(&announce(1, [10, 0, 0, 1], 9, 0, None), None, 0)
            .is_err());
        t.allow([7; 20]);
        let mut seed = announce(0, [10, 0, 9, 9], 0, 0, Some("started"));
        seed.peer_id = b"-GLORYSEED-000000000".to_vec();
        t.announce(&seed, None, 0).unwrap();
        let g = |s: &str| Some(s.to_string());
        t.announce(&announce(1, [10, 0, 1, 1], 100, 0, None), g("g01"), 0)
            .unwrap();
        t.announce(&announce(2, [10, 0, 2, 1], 100, 0, None), g("g02"), 0)
            .unwrap();
        t.announce(&announce(3, [10, 0, 1, 2], 0, 0, None), g("g01"), 0)
            .unwrap();
        let got = t
            .announce(&announce(4, [10, 0, 1, 3], 100, 0, None), g("g01"), 1)
            .unwrap();
        let ips: Vec<String> = got.iter().map(|a| a.ip().to_string()).collect();
        assert_eq!(ips, ["10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.9.9"]);
        // Finished peers are told nobody; uploads are summed, seeders apart.
        assert!(t
            .announce(&announce(3, [10, 0, 1, 2], 0, 500, None), g("g01"), 2)
            .unwrap()
            .is_empty());
        seed.uploaded = 300;
        seed.event = None;
        t.announce(&seed, None, 2).unwrap();
        t.announce(
            &announce(1, [10, 0, 1, 1], 0, 200, Some("stopped")),
            None,
            3,
        )
        .unwrap();
        let s = t.stats(&[7; 20]).unwrap();
        assert_eq!((s.seeder_uploaded, s.peer_uploaded), (300, 700));
        // Silent peers expire (their uploads kept).
        t.announce(&announce(5, [10, 0, 5, 1], 1, 0, None), None, 1_000_000)
            .unwrap();
        let s = t.stats(&[7; 20]).unwrap();
        assert_eq!(s.peers, 1);
        assert_eq!((s.seeder_uploaded, s.peer_uploaded), (300, 700));
        // One that expired and comes back reports its total again: counted once.
        t.announce(
            &announce(3, [10, 0, 1, 2], 0, 650, None),
            g("g01"),
            1_000_001,
        )
        .unwrap();
        let s = t.stats(&[7; 20]).unwrap();
        assert_eq!((s.seeder_uploaded, s.peer_uploaded), (300, 850));
        let body = t.answer(Ok(vec!["10.1.2.3:6881".parse().unwrap()]));
        let v = Bencode::decode(&body).unwrap();
        assert_eq!(
            v.get("peers"),
            Some(&Bencode::Bytes(vec![10, 1, 2, 3, 0x1a, 0xe1]))
        );
    }

    #[test]
    fn announces_are_parsed_from_raw_queries() {
        let q = "info_hash=%07%07%07%07%07%07%07%07%07%07%07%07%07%07%07%07%07%07%07%07\
                 &peer_id=-AR1000-abcdefghijkl&port=6881&uploaded=1&downloaded=2&left=3\
                 &event=started&compact=1";
        let a = parse_announce(q, IpAddr::from([1, 2, 3, 4])).unwrap();
        assert_eq!(a.info_hash, [7; 20]);
        assert_eq!(a.left, 3);
        assert_eq!(a.event.as_deref(), Some("started"));
        assert!(parse_announce("info_hash=%07&peer_id=x&port=1&left=0", a.ip).is_err());
        assert!(parse_announce(&q.replace("port=6881", "port=0"), a.ip).is_err());
        assert!(parse_announce(&q.replace("left=3", "left=x"), a.ip).is_err());
        assert!(parse_announce("", a.ip).is_err());
        assert_eq!(percent_decode("%zz"), None);
    }
}
