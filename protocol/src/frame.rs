//! Framing: a u32 big-endian length, then a MessagePack body with named fields.
//!
//! A frame over the configured maximum, or one whose body does not decode, is an error
//! for that stream only; the caller closes the stream and goes on serving others.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default largest frame body accepted or sent: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// A well-formed frame of a message kind this build does not know (a newer peer's):
    /// receivers skip it and read on, so peers can be upgraded one at a time.
    #[error("message of a kind this version does not know: {0}")]
    UnknownKind(String),
    #[error("cannot encode frame: {0}")]
    Encode(String),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Encode `msg` as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let body = encode_body(msg)?;
    if body.len() > max {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max,
        });
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Encode a message body without a length prefix (used for datagrams).
pub fn encode_body<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    rmp_serde::to_vec_named(msg).map_err(|e| FrameError::Encode(e.to_string()))
}

/// Decode a message body (a datagram, or a frame without its prefix).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    rmp_serde::from_slice(body).map_err(|e| {
        let message = e.to_string();
        // The frame's length was right and its body is MessagePack: only the enum
        // variant is unknown, so the stream is still in step.
        if message.starts_with("unknown variant") {
            FrameError::UnknownKind(message)
        } else {
            FrameError::Decode(message)
        }
    })
}

impl FrameError {
    /// Whether the receiver may skip this frame and read on.
    pub fn is_skippable(&self) -> bool {
        matches!(self, FrameError::UnknownKind(_))
    }
}

/// Write one frame.
pub async fn write_frame<W, T>(writer: &mut W, msg: &T, max: usize) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode_frame(msg, max)?;
    writer.write_all(&frame).await?;
    Ok(())
}

/// Read one frame. `Ok(None)` means the stream ended cleanly between frames.
pub async fn read_frame<R, T>(reader: &mut R, max: usize) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len_buf = [0u8; 4];
    let mut filled = 0;
    while filled < 4 {
        let n = reader.read(&mut len_buf[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
    decode_body(&body).map(Some).map_err(|e| match e {
        FrameError::Decode(m) => {
            let head: String = body.iter().take(24).map(|b| format!("{b:02x}")).collect();
            FrameError::Decode(format!("{m} ({} bytes, starting {head})", body.len()))
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_newer_peers_message_kind_is_skippable_not_garbage() {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Newer {
            Brand { x: u32 },
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Older {
            #[allow(dead_code)]
            Known { x: u32 },
        }
        let body = encode_body(&Newer::Brand { x: 1 }).unwrap();
        let err = decode_body::<Older>(&body).unwrap_err();
        assert!(err.is_skippable(), "{err}");
        let garbage = decode_body::<Older>(&[0xc1, 0xc1]).unwrap_err();
        assert!(!garbage.is_skippable(), "{garbage}");
    }
    use super::*;
    use crate::messages::{Hello, Role};

    #[tokio::test]
    async fn round_trip() {
        let hello = Hello::new(Role::Agent, "n-1");
        let frame = encode_frame(&hello, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(
            u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
            frame.len() - 4
        );
        let mut reader = &frame[..];
        let back: Hello = read_frame(&mut reader, DEFAULT_MAX_FRAME)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, hello);
        let end: Option<Hello> = read_frame(&mut reader, DEFAULT_MAX_FRAME).await.unwrap();
        assert!(end.is_none(), "clean end of stream between frames");
    }

    #[tokio::test]
    async fn two_frames_back_to_back() {
        let mut buf = encode_frame(&Hello::new(Role::Agent, "a"), 1024).unwrap();
        buf.extend(encode_frame(&Hello::new(Role::GroupMaster, "g00"), 1024).unwrap());
        let mut reader = &buf[..];
        let a: Hello = read_frame(&mut reader, 1024).await.unwrap().unwrap();
        let b: Hello = read_frame(&mut reader, 1024).await.unwrap().unwrap();
        assert_eq!((a.id.as_str(), b.id.as_str()), ("a", "g00"));
    }

    #[tokio::test]
    async fn oversize_frame_is_refused_before_reading_body() {
        let mut buf = (10_000_000u32).to_be_bytes().to_vec();
        buf.extend([0u8; 16]);
        let mut reader = &buf[..];
        let err = read_frame::<_, Hello>(&mut reader, DEFAULT_MAX_FRAME)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    len: 10_000_000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn oversize_message_is_not_encoded() {
        let big = Hello::new(Role::Agent, "x".repeat(2000));
        assert!(matches!(
            encode_frame(&big, 100),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn garbage_body_is_a_decode_error() {
        let mut buf = 5u32.to_be_bytes().to_vec();
        buf.extend([0xc1, 0xff, 0x00, 0x13, 0x37]);
        let mut reader = &buf[..];
        let err = read_frame::<_, Hello>(&mut reader, DEFAULT_MAX_FRAME)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
    }

    #[tokio::test]
    async fn truncated_frames_are_errors() {
        let frame = encode_frame(&Hello::new(Role::Agent, "n-1"), 1024).unwrap();
        for cut in [2, 4, frame.len() - 1] {
            let mut reader = &frame[..cut];
            let err = read_frame::<_, Hello>(&mut reader, 1024).await.unwrap_err();
            assert!(matches!(err, FrameError::Truncated), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        #[derive(serde::Serialize)]
        struct HelloV2<'a> {
            protocol_version: u32,
            role: Role,
            id: &'a str,
            shiny_new_field: u64,
        }
        let body = encode_body(&HelloV2 {
            protocol_version: 1,
            role: Role::Agent,
            id: "n-1",
            shiny_new_field: 7,
        })
        .unwrap();
        let hello: Hello = decode_body(&body).unwrap();
        assert_eq!(hello.id, "n-1");
    }
}

#[cfg(test)]
mod link_messages {
    use super::*;
    use crate::messages::*;

    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn every_link_message_round_trips() {
        let addr: std::net::SocketAddr = "127.0.0.1:7402".parse().unwrap();
        let msgs = vec![
            ClusterToGroup::Role {
                active: true,
                masters: vec![addr],
            },
            ClusterToGroup::Members {
                members: vec![],
                revoked: vec!["ab".into()],
            },
            ClusterToGroup::MemberRemoved {
                node: "n".into(),
                serial: "s".into(),
            },
            ClusterToGroup::MemberAdded(Member {
                node: "n".into(),
                serial: "s".into(),
                previous_serial: Some("r".into()),
                state: NodeState::Up,
            }),
            ClusterToGroup::Certificate {
                cert_pem: "pem".into(),
            },
            ClusterToGroup::Members {
                members: vec![Member {
                    node: "n".into(),
                    serial: "s".into(),
                    previous_serial: None,
                    state: NodeState::Unreachable,
                }],
                revoked: vec![],
            },
        ];
        for msg in msgs {
            let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
            let mut reader = &frame[..];
            let via_frame: ClusterToGroup =
                futures_lite_block_on(read_frame(&mut reader, DEFAULT_MAX_FRAME))
                    .unwrap()
                    .unwrap();
            assert_eq!(via_frame, msg);
            let body = encode_body(&msg).unwrap();
            let back: ClusterToGroup =
                decode_body(&body).unwrap_or_else(|e| panic!("{msg:?}: {e}"));
            assert_eq!(back, msg);
        }
        let refusal = Refusal::new(RefusalCode::Unavailable, "standby").redirect_to(Some(addr));
        let back: HelloReply =
            decode_body(&encode_body(&HelloReply::Refused(refusal.clone())).unwrap()).unwrap();
        assert_eq!(back, HelloReply::Refused(refusal));
        let loc = GroupLocation {
            group: "g00".into(),
            masters: vec![addr],
        };
        assert_eq!(
            decode_body::<GroupLocation>(&encode_body(&loc).unwrap()).unwrap(),
            loc
        );
    }
}
