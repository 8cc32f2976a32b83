//! The peer wire protocol (BEP 3): the handshake and the length-prefixed messages a
//! peer of ours sends and understands. Extensions are not offered (the reserved bytes
//! are zero), so a peer sends none; an unknown message id is skipped, not fatal.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a handshake starts with: the protocol name, length-prefixed.
const PROTOCOL: &[u8; 20] = b"\x13BitTorrent protocol";

/// The largest block we ask for and the largest a peer may ask of us (128 KiB, as
/// most clients refuse more).
pub const MAX_BLOCK: u32 = 128 << 10;

/// A message on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(Vec<u8>),
    Request {
        index: u32,
        begin: u32,
        length: u32,
    },
    Piece {
        index: u32,
        begin: u32,
        data: Vec<u8>,
    },
    Cancel {
        index: u32,
        begin: u32,
        length: u32,
    },
    /// Any other id (DHT port, extensions a peer sends anyway): read and ignored.
    Other(u8),
}

/// Why a peer's bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a BitTorrent handshake")]
    NotBitTorrent,
    #[error("the peer offers another torrent")]
    OtherTorrent,
    #[error("a {0}-byte message is larger than any this torrent needs")]
    TooLong(u32),
    #[error("message {id} has {len} bytes, not what its kind has")]
    Malformed { id: u8, len: u32 },
}

impl Message {
    /// The message, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let u32s = |id: u8, xs: &[u32], body: &mut Vec<u8>| {
            body.push(id);
            for x in xs {
                body.extend_from_slice(&x.to_be_bytes());
            }
        };
        match self {
            Message::KeepAlive => {}
            Message::Choke => body.push(0),
            Message::Unchoke => body.push(1),
            Message::Interested => body.push(2),
            Message::NotInterested => body.push(3),
            Message::Have(i) => u32s(4, &[*i], &mut body),
            Message::Bitfield(bits) => {
                body.push(5);
                body.extend_from_slice(bits);
            }
            Message::Request {
                index,
                begin,
                length,
            } => u32s(6, &[*index, *begin, *length], &mut body),
            Message::Piece { index, begin, data } => {
                u32s(7, &[*index, *begin], &mut body);
                body.extend_from_slice(data);
            }
            Message::Cancel {
                index,
                begin,
                length,
            } => u32s(8, &[*index, *begin, *length], &mut body),
            Message::Other(id) => body.push(*id),
        }
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    /// One message from its body (the bytes after the length prefix).
    pub fn decode(body: &[u8]) -> Result<Message, WireError> {
        let Some((&id, rest)) = body.split_first() else {
            return Ok(Message::KeepAlive);
        };
        let malformed = || WireError::Malformed {
            id,
            len: body.len() as u32,
        };
        let u32_at = |i: usize| -> Result<u32, WireError> {
            let b = rest.get(i * 4..i * 4 + 4).ok_or_else(malformed)?;
            Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")))
        };
        let exact = |n: usize| -> Result<(), WireError> {
            if rest.len() == n {
                Ok(())
            } else {
                Err(malformed())
            }
        };
        Ok(match id {
            0..=3 => {
                exact(0)?;
                [
                    Message::Choke,
                    Message::Unchoke,
                    Message::Interested,
                    Message::NotInterested,
                ][id as usize]
                    .clone()
            }
            4 => {
                exact(4)?;
                Message::Have(u32_at(0)?)
            }
            5 => Message::Bitfield(rest.to_vec()),
            6 | 8 => {
                exact(12)?;
                let (index, begin, length) = (u32_at(0)?, u32_at(1)?, u32_at(2)?);
                if id == 6 {
                    Message::Request {
                        index,
                        begin,
                        length,
                    }
                } else {
                    Message::Cancel {
                        index,
                        begin,
                        length,
                    }
                }
            }
            7 => {
                if rest.len() < 8 {
                    return Err(malformed());
                }
                Message::Piece {
                    index: u32_at(0)?,
                    begin: u32_at(1)?,
                    data: rest[8..].to_vec(),
                }
            }
            other => Message::Other(other),
        })
    }
}

/// The handshake's 68 bytes for `info_hash` and our `peer_id`.
pub fn handshake(info_hash: &[u8; 20], peer_id: &[u8; 20]) -> Vec<u8> {
    let mut out = PROTOCOL.to_vec();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(info_hash);
    out.extend_from_slice(peer_id);
    out
}

/// Send our handshake and read the peer's: its peer id, if it offers `info_hash`.
pub async fn exchange_handshakes<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    info_hash: &[u8; 20],
    peer_id: &[u8; 20],
) -> Result<[u8; 20], WireError> {
    stream.write_all(&handshake(info_hash, peer_id)).await?;
    let mut theirs = [0u8; 68];
    stream.read_exact(&mut theirs).await?;
    if &theirs[..20] != PROTOCOL {
        return Err(WireError::NotBitTorrent);
    }
    if &theirs[28..48] != info_hash {
        return Err(WireError::OtherTorrent);
    }
    Ok(theirs[48..68].try_into().expect("20 bytes"))
}

/// Read one message whose body is at most `max` bytes.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: u32,
) -> Result<Message, WireError> {
    let len = reader.read_u32().await?;
    if len > max {
        return Err(WireError::TooLong(len));
    }
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body).await?;
    Message::decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(7),
            Message::Bitfield(vec![0b1010_0000, 1]),
            Message::Request {
                index: 1,
                begin: 16384,
                length: 16384,
            },
            Message::Piece {
                index: 2,
                begin: 0,
                data: vec![9; 10],
            },
            Message::Cancel {
                index: 3,
                begin: 4,
                length: 5,
            },
            Message::Other(20),
        ] {
            let bytes = m.encode();
            let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len() - 4);
            assert_eq!(Message::decode(&bytes[4..]).unwrap(), m);
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [&[0u8, 1][..], &[4, 0, 0, 1], &[6, 0, 0, 0, 1], &[7, 0, 0]] {
            assert!(Message::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn handshakes_check_the_torrent_and_lengths_are_bounded() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let ours = [1u8; 20];
        let peer = tokio::spawn(async move {
            exchange_handshakes(&mut b, &[7; 20], &[2; 20])
                .await
                .map(|id| (id, b))
        });
        assert_eq!(
            exchange_handshakes(&mut a, &[7; 20], &ours).await.unwrap(),
            [2; 20]
        );
        let (id, mut b) = peer.await.unwrap().unwrap();
        assert_eq!(id, ours);
        a.write_all(&Message::Have(3).encode()).await.unwrap();
        a.write_all(&[0, 1, 0, 0]).await.unwrap();
        assert_eq!(read_message(&mut b, 100).await.unwrap(), Message::Have(3));
        assert!(matches!(
            read_message(&mut b, 100).await,
            Err(WireError::TooLong(65536))
        ));

        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let peer =
            tokio::spawn(async move { exchange_handshakes(&mut b, &[8; 20], &[2; 20]).await });
        assert!(matches!(
            exchange_handshakes(&mut a, &[7; 20], &ours).await,
            Err(WireError::OtherTorrent)
        ));
        assert!(matches!(peer.await.unwrap(), Err(WireError::OtherTorrent)));
    }
}
