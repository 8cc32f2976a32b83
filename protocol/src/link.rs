//! The link API every other crate uses: endpoints that dial and listen, links to one
//! peer (datagrams, the control stream, close with a code), and why a link ended.
//!
//! API boundary: QUIC stays behind these types. A crate outside `protocol` never names
//! `quinn` (checked by `tests/tests/architecture.rs`), so the transport can change (a
//! lean endpoint as for the agents' side, another QUIC library) without touching the
//! masters or the agent. The wrappers are a pointer each and cost nothing per call.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use quinn::VarInt;

use crate::tls::{peer_cert, PeerCert};
use crate::transport::LinkError;

/// A QUIC endpoint: dials links ([`crate::transport::connect`]) and, when it has a
/// server configuration, accepts them ([`crate::transport::accept_loop`]). Cheap to
/// clone; clones share the socket.
#[derive(Clone, Debug)]
pub struct LinkEndpoint(pub(crate) quinn::Endpoint);

impl LinkEndpoint {
    /// The address the socket is bound to (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// Close every link of this endpoint with `code` (see [`crate::close`]).
    pub fn close(&self, code: u32, reason: &str) {
        self.0.close(VarInt::from_u32(code), reason.as_bytes());
    }

    /// Wait until every link has finished closing (their close frames are sent).
    pub async fn wait_idle(&self) {
        self.0.wait_idle().await
    }

    /// Stop accepting new links (those open stay up).
    pub fn stop_accepting(&self) {
        self.0.set_server_config(None);
    }
}

/// How a dialled link is set up: our TLS client identity (or none, for enrollment),
/// the server we trust and the link's timing. Built by
/// [`crate::transport::client_config`].
#[derive(Clone, Debug)]
pub struct ClientLinkConfig(pub(crate) quinn::ClientConfig);

/// How accepted links are set up: our server certificate, whether clients must show
/// one, and the link's timing. Built by [`crate::transport::server_config`].
#[derive(Clone, Debug)]
pub struct ServerLinkConfig(pub(crate) Arc<quinn::ServerConfig>);

/// A link to one peer. Cheap to clone; clones are the same link.
#[derive(Clone, Debug)]
pub struct Link(pub(crate) quinn::Connection);

impl Link {
    /// The peer's address as we see it.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// The peer's verified client certificate, if it presented one.
    pub fn peer_cert(&self) -> Option<PeerCert> {
        peer_cert(&self.0)
    }

    /// Send one unreliable datagram (heartbeats). Fails when the link has ended or the
    /// payload is larger than the link carries.
    pub fn send_datagram(&self, payload: Bytes) -> Result<(), LinkError> {
        self.0
            .send_datagram(payload)
            .map_err(|e| LinkError::Datagram(e.to_string()))
    }

    /// Close the link with `code` (see [`crate::close`]) and a reason the peer logs.
    pub fn close(&self, code: u32, reason: &str) {
        self.0.close(VarInt::from_u32(code), reason.as_bytes());
    }

    /// Wait until the link ends, and say why.
    pub async fn closed(&self) -> LinkEnd {
        LinkEnd::from(self.0.closed().await)
    }

    /// A raw bidirectional stream beside the control stream (for tests that speak
    /// malformed frames on purpose; production links use
    /// [`crate::transport::client_hello`]).
    pub async fn open_raw_stream(&self) -> Result<RawStream, LinkError> {
        let (send, recv) = self.0.open_bi().await?;
        Ok(RawStream { send, recv })
    }
}

/// A bidirectional stream of bytes with no framing (see [`Link::open_raw_stream`]).
#[derive(Debug)]
pub struct RawStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl RawStream {
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| LinkError::Stream(e.to_string()))
    }

    /// Say we will send no more.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Everything the peer sends until it finishes the stream (at most `limit` bytes).
    pub async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, LinkError> {
        self.recv
            .read_to_end(limit)
            .await
            .map_err(|e| LinkError::Stream(e.to_string()))
    }
}

/// Why a link ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkEnd {
    /// The peer closed it with an application code ([`crate::close`]) and a reason.
    #[error("closed by peer (code {code}): {reason}")]
    ByPeer { code: u32, reason: String },
    /// We closed it.
    #[error("closed locally")]
    Locally,
    /// Nothing was heard from the peer for the idle timeout.
    #[error("timed out")]
    TimedOut,
    /// The peer refused the connection before its handshake (it is busy: admission
    /// control); retry soon, it is not down.
    #[error("refused by a busy peer")]
    Busy,
    /// The peer reset the link (it restarted and no longer knows it).
    #[error("reset by peer")]
    Reset,
    /// Anything else: a transport or protocol error, with quinn's words.
    #[error("{0}")]
    Other(String),
}

impl LinkEnd {
    /// The peer's application close code, if it closed the link with one.
    pub fn peer_code(&self) -> Option<u32> {
        match self {
            LinkEnd::ByPeer { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<quinn::ConnectionError> for LinkEnd {
    fn from(e: quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        match e {
            E::ApplicationClosed(c) => LinkEnd::ByPeer {
                code: u32::try_from(c.error_code.into_inner()).unwrap_or(u32::MAX),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            E::LocallyClosed => LinkEnd::Locally,
            E::TimedOut => LinkEnd::TimedOut,
            E::Reset => LinkEnd::Reset,
            E::ConnectionClosed(c)
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                LinkEnd::Busy
            }
            other => LinkEnd::Other(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_close_keeps_code_and_reason() {
        let end = LinkEnd::from(quinn::ConnectionError::ApplicationClosed(
            quinn::ApplicationClose {
                error_code: VarInt::from_u32(crate::close::REMOVED),
                reason: Bytes::from_static(b"removed by operator"),
            },
        ));
        assert_eq!(end.peer_code(), Some(crate::close::REMOVED));
        assert_eq!(
            end.to_string(),
            "closed by peer (code 3): removed by operator"
        );
        assert_eq!(
            LinkEnd::from(quinn::ConnectionError::TimedOut).peer_code(),
            None
        );
    }
}
