//! What a connection's events, control stream and frames do to its link.

use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{Dir, Event, ReadError, StreamEvent};
use tracing::{debug, warn};

use crate::frame::{decode_body, encode_frame};
use crate::messages::{Hello, HelloReply, PROTOCOL_VERSION};
use crate::tls::peer_cert_of;
use crate::transport::{close, version_refusal};

use super::driver::{Conn, Phase};
use super::{LeanSettings, LinkHandle, Outbox, Remote, Service};

pub(super) fn close_conn<S: Service>(
    c: &mut Conn<S::Session>,
    service: &mut S,
    code: u32,
    reason: Bytes,
    now: Instant,
    why: &str,
) {
    c.conn
        .close(now, quinn_proto::VarInt::from_u32(code), reason);
    c.phase = Phase::Closed;
    c.tx.clear();
    if let Some(session) = c.session.take() {
        service.closed(c.link, session, why);
    }
}

/// Write what the control stream will take; finish it after the last byte if asked.
pub(super) fn flush<T>(c: &mut Conn<T>) {
    let Some(id) = c.control else {
        return;
    };
    while !c.tx.is_empty() {
        match c.conn.send_stream(id).write(&c.tx) {
            Ok(n) => {
                c.tx.drain(..n);
            }
            Err(quinn_proto::WriteError::Blocked) => return,
            Err(_) => {
                // Stopped by the peer or gone: nothing more will be read.
                c.tx.clear();
                return;
            }
        }
    }
    if c.finish {
        c.finish = false;
        let _ = c.conn.send_stream(id).finish();
    }
}

pub(super) fn on_event<S: Service>(
    c: &mut Conn<S::Session>,
    event: Event,
    service: &mut S,
    out: &mut Outbox,
    settings: &LeanSettings,
    remote: &Remote,
    now: Instant,
) {
    match event {
        Event::HandshakeDataReady | Event::DatagramsUnblocked => {}
        Event::Connected => {
            if matches!(c.phase, Phase::Handshake) {
                c.phase = Phase::Hello {
                    deadline: now + settings.hello_timeout,
                };
            }
        }
        Event::ConnectionLost { reason } => {
            c.phase = Phase::Closed;
            if let Some(session) = c.session.take() {
                service.closed(c.link, session, &reason.to_string());
            }
        }
        Event::Stream(StreamEvent::Opened { dir }) => {
            while let Some(id) = c.conn.streams().accept(dir) {
                if dir == Dir::Bi && c.control.is_none() {
                    c.control = Some(id);
                    read_control(c, service, out, settings, remote, now);
                } else {
                    // One control stream per link; anything else is not read.
                    let _ = c.conn.recv_stream(id).stop(0u32.into());
                }
            }
        }
        Event::Stream(StreamEvent::Readable { id }) if Some(id) == c.control => {
            read_control(c, service, out, settings, remote, now)
        }
        Event::Stream(StreamEvent::Writable { id }) if Some(id) == c.control => flush(c),
        Event::Stream(StreamEvent::Finished { id }) if Some(id) == c.control => {
            // The refusal was delivered: close now rather than at the deadline.
            if let Phase::Refusing { reason, .. } = &c.phase {
                let reason = reason.clone();
                close_conn(c, service, close::REFUSED, reason, now, "refused");
            }
        }
        Event::Stream(_) => {}
        Event::DatagramReceived => {
            while let Some(body) = c.conn.datagrams().recv() {
                if let (Phase::Open, Some(session)) = (&c.phase, c.session.as_mut()) {
                    service.datagram(out, c.link, session, &body);
                }
            }
        }
    }
}

/// Take what arrived on the control stream and hand over every whole frame.
fn read_control<S: Service>(
    c: &mut Conn<S::Session>,
    service: &mut S,
    out: &mut Outbox,
    settings: &LeanSettings,
    remote: &Remote,
    now: Instant,
) {
    let Some(id) = c.control else {
        return;
    };
    let mut ended = false;
    if let Ok(mut chunks) = c.conn.recv_stream(id).read(true) {
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => c.rx.extend_from_slice(&chunk.bytes),
                Ok(None) | Err(ReadError::Reset(_)) => {
                    ended = true;
                    break;
                }
                Err(ReadError::Blocked) => break,
            }
        }
        let _ = chunks.finalize();
    }
    let buf = std::mem::take(&mut c.rx);
    let mut at = 0;
    while buf.len() - at >= 4 {
        let len = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len > settings.max_frame {
            warn!(remote = %c.conn.remote_address(), len, "frame over the limit; closing the link");
            close_conn(
                c,
                service,
                close::PROTOCOL_ERROR,
                Bytes::from_static(b"frame too large"),
                now,
                "bad frame",
            );
            return;
        }
        if buf.len() - at - 4 < len {
            break;
        }
        on_frame(
            c,
            &buf[at + 4..at + 4 + len],
            service,
            out,
            settings,
            remote,
            now,
        );
        at += 4 + len;
        if matches!(c.phase, Phase::Closed) {
            return;
        }
    }
    c.rx = buf;
    c.rx.drain(..at);
    if ended && matches!(c.phase, Phase::Hello { .. }) {
        close_conn(
            c,
            service,
            close::PROTOCOL_ERROR,
            Bytes::from_static(b"bad hello"),
            now,
            "no hello",
        );
    }
}

fn on_frame<S: Service>(
    c: &mut Conn<S::Session>,
    body: &[u8],
    service: &mut S,
    out: &mut Outbox,
    settings: &LeanSettings,
    remote: &Remote,
    now: Instant,
) {
    match c.phase {
        Phase::Open => {
            if let Some(session) = c.session.as_mut() {
                service.frame(out, c.link, session, body);
            }
        }
        Phase::Hello { .. } => {
            let hello: Hello = match decode_body(body) {
                Ok(hello) => hello,
                Err(e) => {
                    debug!(who = settings.who, remote = %c.conn.remote_address(), error = %e, "bad hello");
                    close_conn(
                        c,
                        service,
                        close::PROTOCOL_ERROR,
                        Bytes::from_static(b"bad hello"),
                        now,
                        "bad hello",
                    );
                    return;
                }
            };
            let verdict = match version_refusal(&hello) {
                Some(refusal) => Err(refusal),
                None => service.admit(
                    &hello,
                    peer_cert_of(c.conn.crypto_session().peer_identity()),
                    c.conn.remote_address(),
                ),
            };
            match verdict {
                Ok(mut session) => {
                    c.phase = Phase::Open;
                    let welcome = HelloReply::Welcome {
                        protocol_version: PROTOCOL_VERSION,
                        server_id: service.server_id(),
                    };
                    if let Ok(frame) = encode_frame(&welcome, settings.max_frame) {
                        c.tx.extend_from_slice(&frame);
                        flush(c);
                    }
                    let handle = LinkHandle {
                        id: c.link,
                        remote: remote.clone(),
                    };
                    service.opened(out, handle, &mut session);
                    c.session = Some(session);
                }
                Err(refusal) => {
                    if let Ok(frame) =
                        encode_frame(&HelloReply::Refused(refusal.clone()), settings.max_frame)
                    {
                        c.tx.extend_from_slice(&frame);
                    }
                    c.finish = true;
                    flush(c);
                    c.phase = Phase::Refusing {
                        // As `transport::refuse`: a moment for the refusal to arrive
                        // before the close overtakes it.
                        close_at: now + Duration::from_millis(200),
                        reason: Bytes::from(refusal.message.into_bytes()),
                    };
                }
            }
        }
        // Frames after a refusal or close are not read.
        Phase::Handshake | Phase::Refusing { .. } | Phase::Closed => {}
    }
}
