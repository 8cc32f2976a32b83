//! QUIC endpoints tuned for thousands of small, mostly idle connections, and the
//! `Hello` exchange that opens every link.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{RecvStream, SendStream, TransportConfig, VarInt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::{read_frame, write_frame, FrameError};
use crate::link::{ClientLinkConfig, Link, LinkEnd, LinkEndpoint, ServerLinkConfig};
use crate::messages::{Hello, HelloReply, Refusal, RefusalCode, PROTOCOL_VERSION};
use crate::tls::{ClientAuth, TlsError};

/// Application close codes, so a peer's log says why it was disconnected.
pub mod close {
    pub const NORMAL: u32 = 0;
    pub const REFUSED: u32 = 1;
    pub const PROTOCOL_ERROR: u32 = 2;
    pub const REMOVED: u32 = 3;
    pub const SHUTDOWN: u32 = 4;
    pub const REPLACED: u32 = 5;
    pub const LEAVING: u32 = 6;
}

/// Socket buffers asked for on every endpoint: the default 208 KiB drops packets in a
/// connection storm of thousands of handshakes.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Link timing.
#[derive(Clone, Copy, Debug)]
pub struct LinkTiming {
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// Send QUIC pings this often when there is nothing else to send (None: never).
    pub keep_alive: Option<Duration>,
    /// Round trip assumed until one is measured: lost handshake packets are resent
    /// after about three times this.
    pub initial_rtt: Duration,
}

/// Initial RTT of links that open a few at a time and must recover from a lost packet
/// in milliseconds: agents moving to a standby group master, group masters' links.
pub const CONTROL_INITIAL_RTT: Duration = Duration::from_millis(10);

/// Initial RTT at the cluster master, where thousands of servers enroll at once. With
/// 10 ms every client resent its first packet every 30 ms while the busy master got to
/// it, multiplying the storm; 100 ms (a datacenter LAN's worst round trip) resends
/// after about 300 ms.
pub const STORM_INITIAL_RTT: Duration = Duration::from_millis(100);

/// Transport settings for small control traffic: small windows keep per-connection
/// memory low (thousands of connections per group master endpoint), a handful of
/// streams, and room for heartbeat datagrams.
pub fn transport_config(timing: LinkTiming) -> Arc<TransportConfig> {
    Arc::new(transport(timing))
}

/// [`transport_config`], not yet shared (to adjust for one kind of link).
pub(crate) fn transport(timing: LinkTiming) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(16));
    t.max_concurrent_uni_streams(VarInt::from_u32(4));
    t.stream_receive_window(VarInt::from_u32(256 * 1024));
    t.receive_window(VarInt::from_u32(1024 * 1024));
    t.send_window(1024 * 1024);
    t.datagram_receive_buffer_size(Some(16 * 1024));
    t.datagram_send_buffer_size(16 * 1024);
    // Lower bound on idle timeouts the varint can carry is fine for seconds.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(timing.idle_timeout).ok());
    t.keep_alive_interval(timing.keep_alive);
    t.initial_rtt(timing.initial_rtt);
    // Each connection keeps a transmit buffer sized for a whole GSO batch (up to
    // dozens of datagrams, measured ~18 KB per connection with heaptrack); links that
    // send a heartbeat a second never fill one. One datagram per send instead.
    t.enable_segmentation_offload(false);
    // Control messages fit the 1,200-byte minimum MTU; probing for more costs packets
    // and per-connection state on links that never need it.
    t.mtu_discovery_config(None);
    // Ask the peer to acknowledge every ack-eliciting packet at once (ACK_FREQUENCY,
    // threshold 0) instead of after its 25 ms max_ack_delay. Our links carry one
    // small message a second, so each would get its own ACK either way; sent at once,
    // the ACK leaves in the same pass that read the packet, where a delayed one costs
    // the receiver a timer, a second wake-up and a second pass over the connection
    // per heartbeat.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(0));
    t.ack_frequency_config(Some(ack));
    t
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(LinkEnd),
    #[error("datagram: {0}")]
    Datagram(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("refused by peer: {0}")]
    Refused(Refusal),
    #[error("peer closed the stream before answering")]
    Closed,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A dial that nothing answered: the address is wrong, or no server listens there.
    #[error("no answer within {after:?} (is the address right, and is a {peer} listening there?)")]
    NoAnswer { after: Duration, peer: &'static str },
    /// Any other failure, with what we were doing and the address we tried, so a log
    /// line or an error message says where to look.
    #[error("{action} {addr}: {cause}")]
    At {
        /// What the link was for, e.g. "enroll with cluster master".
        action: &'static str,
        addr: SocketAddr,
        cause: Box<LinkError>,
    },
}

impl From<quinn::ConnectionError> for LinkError {
    fn from(e: quinn::ConnectionError) -> Self {
        LinkError::Connection(LinkEnd::from(e))
    }
}

impl From<LinkEnd> for LinkError {
    fn from(end: LinkEnd) -> Self {
        LinkError::Connection(end)
    }
}

impl LinkError {
    /// Say what we were doing and where: `action` names the peer too ("enroll with
    /// cluster master"). A refusal is left as it is (it is the peer's answer, and callers
    /// branch on it); an error that already names `addr` gets the new action.
    pub fn at(self, action: &'static str, addr: SocketAddr) -> LinkError {
        match self {
            LinkError::Refused(_) => self,
            LinkError::At {
                addr: named, cause, ..
            } if named == addr => LinkError::At {
                action,
                addr,
                cause,
            },
            other => LinkError::At {
                action,
                addr,
                cause: Box::new(other),
            },
        }
    }

    /// The error under any [`LinkError::At`] context.
    pub fn cause(&self) -> &LinkError {
        match self {
            LinkError::At { cause, .. } => cause.cause(),
            other => other,
        }
    }

    /// The peer's refusal, if that is what this is.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self.cause() {
            LinkError::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// The peer refused the connection before its handshake because it is busy
    /// (admission control): retry soon, it is not down.
    pub fn is_busy(&self) -> bool {
        matches!(self.cause(), LinkError::Connection(LinkEnd::Busy))
    }
}

/// What a server name is, for messages: "cluster master", "group master".
pub fn peer_kind(server_name: &str) -> &'static str {
    match server_name {
        crate::tls::CLUSTER_MASTER_NAME => "cluster master",
        crate::tls::GROUP_MASTER_NAME => "group master",
        _ => "server",
    }
}

pub(crate) fn udp_socket(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

/// How accepted links are set up: our identity, whether clients must present a
/// certificate, and the links' timing.
pub fn server_config(
    identity: &crate::LiveIdentity,
    client_auth: ClientAuth,
    timing: LinkTiming,
) -> Result<ServerLinkConfig, LinkError> {
    Ok(ServerLinkConfig(Arc::new(quinn_server_config(
        identity,
        client_auth,
        timing,
    )?)))
}

/// quinn server configuration with our identity.
pub(crate) fn quinn_server_config(
    identity: &crate::LiveIdentity,
    client_auth: ClientAuth,
    timing: LinkTiming,
) -> Result<quinn::ServerConfig, LinkError> {
    let tls = identity.server_tls(client_auth)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport_config(timing));
    Ok(server)
}

/// Endpoint settings. quinn sizes each endpoint's receive buffer by the largest UDP
/// payload it accepts (64 KB by default) times a batch of 32: 2 MB per endpoint, and a
/// master process with a listening and a dialling endpoint per group carries dozens.
/// Our packets never exceed the 1,200-byte QUIC minimum (MTU discovery is off), so an
/// Ethernet-sized limit loses nothing.
pub(crate) fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    // 1472 = 1500-byte Ethernet MTU minus IPv4 and UDP headers; always >= 1200.
    let _ = config.max_udp_payload_size(1472);
    config
}

/// A server endpoint (which can also dial out) with our identity.
pub fn server_endpoint(
    bind: SocketAddr,
    identity: &crate::LiveIdentity,
    client_auth: ClientAuth,
    timing: LinkTiming,
) -> Result<LinkEndpoint, LinkError> {
    let server = quinn_server_config(identity, client_auth, timing)?;
    // Keep the handshake cheap: address validation (Retry) costs a round trip and we
    // only listen on networks we manage.
    let endpoint = quinn::Endpoint::new(
        endpoint_config(),
        Some(server),
        udp_socket(bind)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok(LinkEndpoint(endpoint))
}

/// A client-only endpoint.
pub fn client_endpoint(bind: SocketAddr) -> Result<LinkEndpoint, LinkError> {
    Ok(LinkEndpoint(quinn::Endpoint::new(
        endpoint_config(),
        None,
        udp_socket(bind)?,
        Arc::new(quinn::TokioRuntime),
    )?))
}

/// How dialled links are set up, from a TLS client configuration
/// ([`crate::TlsIdentity::client_tls`], or [`crate::tls::enroll_client_tls`] without a
/// certificate) and the links' timing.
pub fn client_config(
    tls: rustls::ClientConfig,
    timing: LinkTiming,
) -> Result<ClientLinkConfig, LinkError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(timing));
    Ok(ClientLinkConfig(config))
}

/// Dial `addr` expecting a server certificate for `server_name`, within `timeout`.
/// Every error names the address and the kind of peer ("connect to cluster master
/// 10.0.0.9:7401: no answer within 3s ..."); callers replace the action with
/// [`LinkError::at`] when they know better what the link is for.
pub async fn connect(
    endpoint: &LinkEndpoint,
    config: ClientLinkConfig,
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> Result<Link, LinkError> {
    let peer = peer_kind(server_name);
    let action = match peer {
        "cluster master" => "connect to cluster master",
        "group master" => "connect to group master",
        _ => "connect to",
    };
    let dial = async {
        let connecting = endpoint.0.connect_with(config.0, addr, server_name)?;
        match tokio::time::timeout(timeout, connecting).await {
            Ok(conn) => Ok(Link(conn?)),
            Err(_) => Err(LinkError::NoAnswer {
                after: timeout,
                peer,
            }),
        }
    };
    dial.await.map_err(|e| e.at(action, addr))
}

/// The control stream of a link: typed frames in both directions.
pub struct ControlStream {
    sender: ControlSender,
    receiver: ControlReceiver,
}

impl ControlStream {
    fn new(send: SendStream, recv: RecvStream, max_frame: usize) -> Self {
        ControlStream {
            sender: ControlSender { send, max_frame },
            receiver: ControlReceiver { recv, max_frame },
        }
    }

    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        self.sender.send(msg).await
    }

    /// Next frame; `Ok(None)` when the peer finished the stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        self.receiver.recv().await
    }

    /// Say we will send no more.
    pub fn finish(&mut self) {
        self.sender.finish()
    }

    /// Write bytes that are not a frame (tests of what a peer does with garbage).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.sender.write_raw(bytes).await
    }

    /// The sending and the receiving half, to use from different places.
    pub fn split(self) -> (ControlSender, ControlReceiver) {
        (self.sender, self.receiver)
    }
}

/// The sending half of a [`ControlStream`].
pub struct ControlSender {
    send: SendStream,
    max_frame: usize,
}

impl ControlSender {
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        write_frame(&mut self.send, msg, self.max_frame).await
    }

    /// Say we will send no more.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Say we will send no more and wait, at most `within`, until the peer has read
    /// everything (so a close that follows does not overtake the last frames).
    pub async fn finish_and_wait(&mut self, within: Duration) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(within, self.send.stopped()).await;
    }

    /// Write bytes that are not a frame (tests of what a peer does with garbage).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| LinkError::Stream(e.to_string()))
    }
}

/// The receiving half of a [`ControlStream`].
pub struct ControlReceiver {
    recv: RecvStream,
    max_frame: usize,
}

impl ControlReceiver {
    /// Next frame; `Ok(None)` when the peer finished the stream. Not cancel-safe: a
    /// read cut off mid-frame desynchronises the stream (use [`Self::spawn_reader`]
    /// under `select!`).
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        read_frame(&mut self.recv, self.max_frame).await
    }

    /// Read frames on their own task into a channel, so a `select!` can wait on them
    /// without cutting a read off mid-frame.
    pub fn spawn_reader<T>(self) -> FrameReader<T>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let ControlReceiver {
            mut recv,
            max_frame,
        } = self;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let item = match read_frame::<_, T>(&mut recv, max_frame).await {
                    // A newer peer's message: skip it, the stream is in step.
                    Err(e) if e.is_skippable() => {
                        tracing::debug!(error = %e, "message skipped");
                        continue;
                    }
                    other => other.map_err(|e| e.to_string()),
                };
                let end = !matches!(item, Ok(Some(_)));
                if tx.send(item).await.is_err() || end {
                    break;
                }
            }
        });
        FrameReader { task, rx }
    }
}

/// Frames read by their own task ([`ControlReceiver::spawn_reader`]). Dropping it stops
/// the task.
pub struct FrameReader<T> {
    task: tokio::task::JoinHandle<()>,
    rx: tokio::sync::mpsc::Receiver<Result<Option<T>, String>>,
}

impl<T> FrameReader<T> {
    /// `Some(Ok(Some(msg)))` per frame, then one final `Some(Ok(None))` (clean end) or
    /// `Some(Err)` (bad frame, lost stream); `None` after that. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Result<Option<T>, String>> {
        self.rx.recv().await
    }
}

impl<T> Drop for FrameReader<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Client side: open the control stream, send `Hello`, wait for the answer.
pub async fn client_hello(
    conn: &Link,
    hello: &Hello,
    max_frame: usize,
    timeout: Duration,
) -> Result<ControlStream, LinkError> {
    let exchange = async {
        let (send, recv) = conn.0.open_bi().await?;
        let mut control = ControlStream::new(send, recv, max_frame);
        control.send(hello).await?;
        match control.recv::<HelloReply>().await? {
            Some(HelloReply::Welcome { .. }) => Ok(control),
            Some(HelloReply::Refused(refusal)) => Err(LinkError::Refused(refusal)),
            None => Err(LinkError::Closed),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| LinkError::Timeout(timeout))?
}

/// Server side: accept the control stream and read `Hello`. A version mismatch is
/// answered with a refusal here; identity checks are the caller's (see [`accept_hello`]).
pub async fn server_hello(
    conn: &Link,
    max_frame: usize,
    timeout: Duration,
) -> Result<(Hello, ControlStream), LinkError> {
    let exchange = async {
        let (send, recv) = conn.0.accept_bi().await?;
        let mut control = ControlStream::new(send, recv, max_frame);
        let hello: Hello = control.recv().await?.ok_or(LinkError::Closed)?;
        if let Some(refusal) = version_refusal(&hello) {
            refuse(&mut control, conn, refusal.clone()).await;
            return Err(LinkError::Refused(refusal));
        }
        Ok((hello, control))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| LinkError::Timeout(timeout))?
}

/// The refusal for a `Hello` of a protocol version this server does not speak.
pub(crate) fn version_refusal(hello: &Hello) -> Option<Refusal> {
    (hello.protocol_version != PROTOCOL_VERSION).then(|| {
        Refusal::new(
            RefusalCode::VersionMismatch,
            format!(
                "protocol version {} is not supported (this server speaks {})",
                hello.protocol_version, PROTOCOL_VERSION
            ),
        )
    })
}

/// Accept the peer: answer `Welcome`.
pub async fn welcome(control: &mut ControlStream, server_id: &str) -> Result<(), FrameError> {
    control
        .send(&HelloReply::Welcome {
            protocol_version: PROTOCOL_VERSION,
            server_id: server_id.to_string(),
        })
        .await
}

/// Refuse the peer with a reason it can log, then close the connection.
pub async fn refuse(control: &mut ControlStream, conn: &Link, refusal: Refusal) {
    let _ = control.send(&HelloReply::Refused(refusal.clone())).await;
    // Give the refusal a moment to reach the peer before the close overtakes it.
    control
        .sender
        .finish_and_wait(Duration::from_millis(200))
        .await;
    conn.close(close::REFUSED, &refusal.message);
}

/// Accept connections until `shutdown`, serving each with `serve` on its own task.
/// On shutdown every open connection is closed with `SHUTDOWN` and the call returns
/// once every task has ended.
pub async fn accept_loop<F, Fut>(
    endpoint: LinkEndpoint,
    shutdown: tokio_util::sync::CancellationToken,
    who: &'static str,
    serve: F,
) where
    F: Fn(Link) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    crate::admission::accept_loop_admitting(
        endpoint,
        shutdown,
        who,
        crate::admission::Limits::UNLIMITED,
        None,
        |_| false,
        serve,
    )
    .await
}

/// Serve one accepted connection attempt (with `config`, or the endpoint's): finish
/// its handshake, then `serve` it until it ends or `shutdown` (which closes it with
/// `SHUTDOWN`).
pub(crate) async fn serve_incoming<F, Fut>(
    incoming: quinn::Incoming,
    config: Option<ServerLinkConfig>,
    shutdown: tokio_util::sync::CancellationToken,
    who: &'static str,
    serve: F,
) where
    F: FnOnce(Link) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let remote = incoming.remote_address();
    let connecting = match config {
        Some(config) => incoming.accept_with(config.0),
        None => incoming.accept(),
    };
    let handshake = async move { connecting?.await };
    let conn = tokio::select! {
        _ = shutdown.cancelled() => return,
        conn = handshake => match conn {
            Ok(conn) => Link(conn),
            Err(e) => {
                tracing::debug!(%remote, error = %e, "{who}: handshake failed");
                return;
            }
        },
    };
    tokio::select! {
        _ = shutdown.cancelled() => {
            conn.close(close::SHUTDOWN, &format!("{who} shutting down"));
        }
        _ = serve(conn.clone()) => {}
    }
}
