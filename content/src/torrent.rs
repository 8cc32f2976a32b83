//! BitTorrent metainfo for a stored file (BEP 3, v1): bencoding, the `.torrent` of a
//! content file with its pieces' SHA-1s, and its info hash. The torrent's `name` is
//! the file's SHA-256, so a client saving into a content store's `sha256/` directory
//! (our seeder does) finds the file under the name it expects.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use sha1::{Digest, Sha1};

/// A bencoded value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bencode {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Bencode>),
    /// Keys sorted, as bencoding requires (a `BTreeMap` of raw bytes).
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

impl Bencode {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bencode::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Bencode::List(items) => {
                out.push(b'l');
                for i in items {
                    i.write(out);
                }
                out.push(b'e');
            }
            Bencode::Dict(map) => {
                out.push(b'd');
                for (k, v) in map {
                    Bencode::Bytes(k.clone()).write(out);
                    v.write(out);
                }
                out.push(b'e');
            }
        }
    }

    /// A dictionary from `(key, value)` pairs.
    pub fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, Bencode)>) -> Bencode {
        Bencode::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    pub fn str(s: &str) -> Bencode {
        Bencode::Bytes(s.as_bytes().to_vec())
    }

    /// Decode one value; the rest of the input is an error.
    pub fn decode(input: &[u8]) -> Result<Bencode, String> {
        let (v, rest) = Self::parse(input, 0)?;
        if rest != input.len() {
            return Err(format!("trailing bytes at {rest}"));
        }
        Ok(v)
    }

    fn parse(input: &[u8], at: usize) -> Result<(Bencode, usize), String> {
        // Nesting deeper than this is an attack, not a torrent.
        fn go(input: &[u8], at: usize, depth: u32) -> Result<(Bencode, usize), String> {
            if depth > 64 {
                return Err("nested too deep".into());
            }
            match input.get(at) {
                Some(b'i') => {
                    let end = find(input, at, b'e')?;
                    let text =
                        std::str::from_utf8(&input[at + 1..end]).map_err(|e| e.to_string())?;
                    let i = text.parse().map_err(|_| format!("bad integer {text:?}"))?;
                    Ok((Bencode::Int(i), end + 1))
                }
                Some(b'l') => {
                    let mut items = Vec::new();
                    let mut pos = at + 1;
                    while input.get(pos) != Some(&b'e') {
                        let (v, next) = go(input, pos, depth + 1)?;
                        items.push(v);
                        pos = next;
                    }
                    Ok((Bencode::List(items), pos + 1))
                }
                Some(b'd') => {
                    let mut map = BTreeMap::new();
                    let mut pos = at + 1;
                    while input.get(pos) != Some(&b'e') {
                        let (k, next) = go(input, pos, depth + 1)?;
                        let Bencode::Bytes(k) = k else {
                            return Err("dictionary key is not a string".into());
                        };
                        let (v, next) = go(input, next, depth + 1)?;
                        map.insert(k, v);
                        pos = next;
                    }
                    Ok((Bencode::Dict(map), pos + 1))
                }
                Some(b'0'..=b'9') => {
                    let colon = find(input, at, b':')?;
                    let len: usize = std::str::from_utf8(&input[at..colon])
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .ok_or("bad string length")?;
                    let start = colon + 1;
                    let end = start.checked_add(len).filter(|e| *e <= input.len());
                    let end = end.ok_or("string runs past the end")?;
                    Ok((Bencode::Bytes(input[start..end].to_vec()), end))
                }
                Some(c) => Err(format!("unexpected byte {c:#x} at {at}")),
                None => Err("unexpected end".into()),
            }
        }
        fn find(input: &[u8], at: usize, byte: u8) -> Result<usize, String> {
            input[at..]
                .iter()
                .position(|b| *b == byte)
                .map(|p| at + p)
                .ok_or_else(|| format!("no {:?} after {at}", byte as char))
        }
        go(input, at, 0)
    }

    pub fn get(&self, key: &str) -> Option<&Bencode> {
        match self {
            Bencode::Dict(m) => m.get(key.as_bytes()),
            _ => None,
        }
    }
}

/// A `.torrent` made for a stored file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Torrent {
    /// The bencoded metainfo.
    pub bytes: Vec<u8>,
    /// SHA-1 of the bencoded info dictionary.
    pub info_hash: [u8; 20],
    pub piece_length: u64,
    pub pieces: usize,
}

/// The piece length for a file of `size` bytes: a power of two from 64 KiB, so that
/// the file has at most about 8,000 pieces (160 KB of SHA-1s in the torrent). Small
/// pieces spread sooner (a peer offers a piece only once it has verified all of it)
/// and shorten the end game, where the last pieces are asked of every peer at once:
/// 64 KiB took a 500 MB image to 32 capped peers in 1.34x one node's time, 256 KiB
/// in 1.38x (BENCHMARKS.md).
pub fn piece_length(size: u64) -> u64 {
    let mut len = 64 << 10;
    while size / len > 8000 && len < (16 << 20) {
        len *= 2;
    }
    len
}

/// The torrent of the file at `path` (named `name`: its SHA-256), announced to
/// `announce`. Reads the file once.
pub fn make_torrent(path: &Path, name: &str, announce: &str) -> std::io::Result<Torrent> {
    let size = std::fs::metadata(path)?.len();
    let piece_len = piece_length(size);
    let mut file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut pieces = Vec::new();
    let mut buf = vec![0u8; piece_len as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        pieces.extend_from_slice(&Sha1::digest(&buf[..filled]));
        if filled < buf.len() {
            break;
        }
    }
    let count = pieces.len() / 20;
    let info = Bencode::dict([
        ("length", Bencode::Int(size as i64)),
        ("name", Bencode::str(name)),
        ("piece length", Bencode::Int(piece_len as i64)),
        ("pieces", Bencode::Bytes(pieces)),
        // Peers come from our tracker only (no DHT, no peer exchange beyond it).
        ("private", Bencode::Int(1)),
    ]);
    let info_hash: [u8; 20] = Sha1::digest(info.encode()).into();
    let meta = Bencode::dict([
        ("announce", Bencode::str(announce)),
        ("created by", Bencode::str("GLORY-CL")),
        ("info", info),
    ]);
    Ok(Torrent {
        bytes: meta.encode(),
        info_hash,
        piece_length: piece_len,
        pieces: count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencoding_round_trips_and_refuses_garbage() {
        let v = Bencode::dict([
            ("a", Bencode::Int(-3)),
            ("b", Bencode::List(vec![Bencode::str("x"), Bencode::Int(0)])),
        ]);
        assert_eq!(v.encode(), b"d1:ai-3e1:bl1:xi0eee");
        assert_eq!(Bencode::decode(&v.encode()).unwrap(), v);
        for bad in [
            &b"i12"[..],
            b"5:ab",
            b"d1:a",
            b"x",
            b"1:ab",
            b"di1ei2ee",
            b"99999999999999999999:",
        ] {
            assert!(Bencode::decode(bad).is_err(), "{bad:?}");
        }
        let deep = [vec![b'l'; 100], vec![b'e'; 100]].concat();
        assert!(Bencode::decode(&deep).is_err());
    }

    #[test]
    fn a_torrent_names_every_piece() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(600u32 << 10)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let t = make_torrent(&path, "abc", "http://t/announce").unwrap();
        assert_eq!(t.piece_length, 64 << 10);
        assert_eq!(t.pieces, 10);
        let meta = Bencode::decode(&t.bytes).unwrap();
        let info = meta.get("info").unwrap();
        assert_eq!(info.get("length"), Some(&Bencode::Int(data.len() as i64)));
        let Some(Bencode::Bytes(pieces)) = info.get("pieces") else {
            panic!("no pieces")
        };
        assert_eq!(
            &pieces[180..200],
            Sha1::digest(&data[576 << 10..]).as_slice()
        );
        let hash: [u8; 20] = Sha1::digest(info.encode()).into();
        assert_eq!(hash, t.info_hash);
        assert_eq!(piece_length(500 << 20), 64 << 10);
        assert_eq!(piece_length(10 << 30), 2 << 20);
    }
}
