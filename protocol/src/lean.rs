//! A QUIC server endpoint for thousands of small, long-lived links (a group master's
//! node agents), driven directly on quinn-proto by one task.
//!
//! Why not quinn's `Endpoint`: quinn gives every connection a driver task, a
//! mutex-guarded state and an unbounded event channel fed by the endpoint task.
//! heaptrack at 2,000 links put that channel alone at 33 KiB per connection (tokio keeps
//! up to four 7.5 KB blocks of 235-byte events for each), and perf put most of the
//! masters' steady CPU in the hand-offs between the endpoint task and the connection
//! tasks. Here one task owns the socket, the quinn-proto `Endpoint` and every
//! `Connection`: a packet is decoded, handled and answered with no channel, wake-up or
//! lock between, and a link costs what quinn-proto needs for it plus a few hundred bytes.
//! The wire is the same QUIC with the same TLS configuration as every other endpoint.
//!
//! A link follows our protocol: the client opens one bidirectional control stream and
//! sends `Hello`; the server answers `Welcome` or a refusal (as
//! [`crate::transport::server_hello`] does); then frames flow both ways on that stream
//! and heartbeats arrive as datagrams. A [`Service`] decides who is admitted and handles
//! frames and datagrams. It runs on the driver's task, so it must not block; what it
//! wants sent goes through the [`Outbox`] it is handed, and other tasks reach links
//! through a [`Remote`].

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{ConnectionHandle, DatagramEvent, Dir, Event, ReadError, StreamEvent, StreamId};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::frame::{decode_body, encode_frame};
use crate::messages::{Hello, HelloReply, Refusal, PROTOCOL_VERSION};
use crate::tls::{peer_cert_of, ClientAuth, PeerCert, TlsIdentity};
use crate::transport::{
    close, endpoint_config, server_config, udp_socket, version_refusal, LinkError, LinkTiming,
};

/// One link for the life of its endpoint (quinn-proto reuses connection handles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkId(u64);

/// What other tasks ask of the driver.
enum Request {
    Close {
        link: LinkId,
        code: u32,
        reason: Bytes,
    },
    Wake(LinkId),
    Broadcast(Bytes),
}

/// Reaches the links of a running [`LeanEndpoint`] from other tasks.
#[derive(Clone)]
pub struct Remote {
    tx: mpsc::UnboundedSender<Request>,
    max_frame: usize,
}

impl Remote {
    /// Send `msg` as a frame to every admitted link.
    pub fn broadcast<T: Serialize>(&self, msg: &T) {
        match encode_frame(msg, self.max_frame) {
            Ok(frame) => {
                let _ = self.tx.send(Request::Broadcast(frame.into()));
            }
            Err(e) => warn!(error = %e, "broadcast frame not sent"),
        }
    }
}

/// A link as other tasks hold it: they can close it, or wake its session
/// ([`Service::wake`]) when something is queued for it.
#[derive(Clone)]
pub struct LinkHandle {
    pub id: LinkId,
    remote: Remote,
}

impl LinkHandle {
    /// Close the connection with an application error code and reason (like
    /// `quinn::Connection::close`).
    pub fn close(&self, code: quinn_proto::VarInt, reason: &[u8]) {
        let _ = self.remote.tx.send(Request::Close {
            link: self.id,
            code: code.into_inner() as u32,
            reason: Bytes::copy_from_slice(reason),
        });
    }

    /// Ask the driver to call [`Service::wake`] for this link's session.
    pub fn wake(&self) {
        let _ = self.remote.tx.send(Request::Wake(self.id));
    }
}

/// What a service asks for from inside a callback; the driver carries it out as soon
/// as the callback returns.
pub struct Outbox {
    actions: Vec<Action>,
    max_frame: usize,
    now: Instant,
}

enum Action {
    Send(LinkId, Vec<u8>),
    Close(LinkId, u32, Bytes),
}

impl Outbox {
    /// Send `msg` as a frame on `link`'s control stream.
    pub fn send<T: Serialize>(&mut self, link: LinkId, msg: &T) {
        match encode_frame(msg, self.max_frame) {
            Ok(frame) => self.actions.push(Action::Send(link, frame)),
            Err(e) => warn!(error = %e, "frame not sent"),
        }
    }

    /// Close `link` with an application error code and reason.
    pub fn close(&mut self, link: LinkId, code: u32, reason: impl Into<Bytes>) {
        self.actions.push(Action::Close(link, code, reason.into()));
    }

    /// The time the driver woke up for this batch of packets (saves a clock read per
    /// heartbeat).
    pub fn now(&self) -> Instant {
        self.now
    }
}

/// The application side of a [`LeanEndpoint`].
pub trait Service {
    /// Per-link state, created when the link is admitted.
    type Session;

    /// `server_id` in the `Welcome` answer.
    fn server_id(&self) -> String;

    /// A `Hello` of the protocol version we speak arrived on a new link: admit it or
    /// say why not (the driver sends the refusal and closes the link).
    fn admit(
        &mut self,
        hello: &Hello,
        peer: Option<PeerCert>,
        remote: SocketAddr,
    ) -> Result<Self::Session, Refusal>;

    /// The link was welcomed; frames sent from here follow the `Welcome`.
    fn opened(&mut self, out: &mut Outbox, link: LinkHandle, session: &mut Self::Session);

    /// A frame on an admitted link's control stream (its body, without the length).
    fn frame(&mut self, out: &mut Outbox, link: LinkId, session: &mut Self::Session, body: &[u8]);

    /// A datagram on an admitted link.
    fn datagram(
        &mut self,
        out: &mut Outbox,
        link: LinkId,
        session: &mut Self::Session,
        body: &[u8],
    );

    /// Another task called [`LinkHandle::wake`].
    fn wake(&mut self, out: &mut Outbox, link: LinkId, session: &mut Self::Session);

    /// An admitted link ended (peer closed, timed out, or closed here).
    fn closed(&mut self, link: LinkId, session: Self::Session, why: &str);
}

/// Driver settings.
#[derive(Clone, Copy, Debug)]
pub struct LeanSettings {
    /// Name in logs and in the reason of the shutdown close.
    pub who: &'static str,
    /// Largest frame body accepted or sent.
    pub max_frame: usize,
    /// A link that has not sent `Hello` this long after its handshake is closed.
    pub hello_timeout: Duration,
}

/// A bound endpoint, not yet serving.
pub struct LeanEndpoint {
    socket: Udp,
    endpoint: quinn_proto::Endpoint,
    local: SocketAddr,
    settings: LeanSettings,
    requests: mpsc::UnboundedReceiver<Request>,
    remote: Remote,
}

impl LeanEndpoint {
    /// Bind a server endpoint with our identity (the same TLS and transport settings as
    /// [`crate::transport::server_endpoint`]).
    pub fn bind(
        bind: SocketAddr,
        identity: &TlsIdentity,
        client_auth: ClientAuth,
        timing: LinkTiming,
        settings: LeanSettings,
    ) -> Result<Self, LinkError> {
        let mut server = server_config(identity, client_auth, timing)?;
        // A peer opens one control stream and no other: quinn-proto keeps state for
        // every stream a peer may open, so allow just that (and one spare).
        let mut transport = crate::transport::transport(timing);
        transport.max_concurrent_bidi_streams(2u32.into());
        transport.max_concurrent_uni_streams(0u32.into());
        server.transport_config(Arc::new(transport));
        let socket = Udp::bind(bind)?;
        let local = socket.socket.local_addr()?;
        let endpoint = quinn_proto::Endpoint::new(
            Arc::new(endpoint_config()),
            Some(Arc::new(server)),
            false,
            None,
        );
        let (tx, requests) = mpsc::unbounded_channel();
        Ok(LeanEndpoint {
            socket,
            endpoint,
            local,
            settings,
            requests,
            remote: Remote {
                tx,
                max_frame: settings.max_frame,
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A handle for other tasks; requests made before [`LeanEndpoint::serve`] wait.
    pub fn remote(&self) -> Remote {
        self.remote.clone()
    }

    /// Serve links with `service` until `shutdown`, then close every link with
    /// `SHUTDOWN` and return.
    pub async fn serve<S: Service>(self, service: S, shutdown: CancellationToken) {
        let LeanEndpoint {
            socket,
            endpoint,
            settings,
            mut requests,
            remote,
            ..
        } = self;
        let mut driver = Driver {
            socket,
            endpoint,
            service,
            settings,
            remote,
            conns: Conns(Vec::new()),
            links: HashMap::new(),
            timers: BTreeSet::new(),
            next_link: 1,
            out: Outbox {
                actions: Vec::new(),
                max_frame: settings.max_frame,
                now: Instant::now(),
            },
            dirty: Vec::new(),
            recv_buf: Vec::new(),
            send_buf: Vec::new(),
        };
        // A received batch may hold as many datagrams as the kernel coalesces (GRO).
        driver.recv_buf = vec![0; MAX_DATAGRAM * driver.socket.state.gro_segments().max(1)];
        let mut next_sweep = Instant::now();
        loop {
            let next_timer = driver.timers.first().map(|(at, _)| *at);
            let woke = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Wake::Shutdown,
                ready = driver.socket.socket.readable() => match ready {
                    Ok(()) => Wake::Readable,
                    Err(e) => {
                        warn!(error = %e, who = settings.who, "socket failed; endpoint stops");
                        Wake::Shutdown
                    }
                },
                request = requests.recv() => match request {
                    Some(r) => Wake::Request(r),
                    // Not reachable while `driver.remote` holds a sender.
                    None => Wake::Shutdown,
                },
                _ = sleep_until(next_timer) => Wake::Timer,
                _ = tokio::time::sleep_until(next_sweep.into()) => Wake::Timer,
            };
            let now = Instant::now();
            driver.out.now = now;
            match woke {
                Wake::Shutdown => break,
                Wake::Readable => driver.receive(now),
                Wake::Request(r) => driver.request(r),
                Wake::Timer => {}
            }
            // Whatever woke us, everything else that is due gets its turn too: under
            // a steady stream of packets the socket is always ready first.
            while let Ok(r) = requests.try_recv() {
                driver.request(r);
            }
            driver.fire_timers(now);
            if now >= next_sweep {
                driver.sweep(now);
                next_sweep = now + SWEEP_INTERVAL;
            }
            driver.settle(now);
        }
        driver.shut_down().await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

enum Wake {
    Shutdown,
    Readable,
    Request(Request),
    Timer,
}

/// Hello deadlines and refusals' closes are checked this often.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Largest datagram we take: our packets never exceed the 1,200-byte QUIC minimum
/// (MTU discovery is off); 1,472 is what fits a 1,500-byte Ethernet frame.
const MAX_DATAGRAM: usize = 1472;

/// The endpoint's socket, read and written through quinn-udp as quinn does: the
/// address a datagram arrived at is the one the answer leaves from (a group master
/// listening on every address of a multi-homed host), and ECN marks pass both ways.
struct Udp {
    socket: tokio::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
}

impl Udp {
    fn bind(bind: SocketAddr) -> std::io::Result<Udp> {
        let socket = udp_socket(bind)?;
        socket.set_nonblocking(true)?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        Ok(Udp {
            socket: tokio::net::UdpSocket::from_std(socket)?,
            state,
        })
    }

    /// One receive: a datagram, or several of the same size from one sender (GRO).
    fn try_recv(&self, buf: &mut [u8]) -> std::io::Result<quinn_udp::RecvMeta> {
        let mut meta = [quinn_udp::RecvMeta::default()];
        self.socket.try_io(tokio::io::Interest::READABLE, || {
            self.state.recv(
                (&self.socket).into(),
                &mut [std::io::IoSliceMut::new(buf)],
                &mut meta,
            )
        })?;
        Ok(meta[0])
    }

    fn transmit<'a>(t: &quinn_proto::Transmit, buf: &'a [u8]) -> quinn_udp::Transmit<'a> {
        quinn_udp::Transmit {
            destination: t.destination,
            ecn: t
                .ecn
                .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
            contents: &buf[..t.size],
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        }
    }

    /// Send now or drop: a full send buffer loses the packet and QUIC resends what
    /// mattered (quinn instead parks the connection until the socket is writable).
    fn send(&self, t: &quinn_proto::Transmit, buf: &[u8]) {
        let transmit = Udp::transmit(t, buf);
        let sent = self.socket.try_io(tokio::io::Interest::WRITABLE, || {
            self.state.try_send((&self.socket).into(), &transmit)
        });
        if let Err(e) = sent {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                debug!(error = %e, to = %t.destination, "send failed");
            }
        }
    }

    /// Send, waiting for room in the socket buffer (for closes, sent only once).
    async fn send_wait(&self, t: &quinn_proto::Transmit, buf: &[u8]) {
        let transmit = Udp::transmit(t, buf);
        let sent = self
            .socket
            .async_io(tokio::io::Interest::WRITABLE, || {
                self.state.try_send((&self.socket).into(), &transmit)
            })
            .await;
        if let Err(e) = sent {
            debug!(error = %e, to = %t.destination, "send failed");
        }
    }
}

enum Phase {
    /// TLS handshake under way.
    Handshake,
    /// Waiting for `Hello` until the deadline.
    Hello { deadline: Instant },
    /// Admitted: frames and datagrams go to the service.
    Open,
    /// The refusal is on its way; close once it is delivered or at `close_at`.
    Refusing { close_at: Instant, reason: Bytes },
    /// Closed here or by the peer; the connection drains, then is dropped.
    Closed,
}

struct Conn<T> {
    link: LinkId,
    conn: quinn_proto::Connection,
    control: Option<StreamId>,
    /// Control stream bytes not yet forming a whole frame.
    rx: Vec<u8>,
    /// Frame bytes the stream has not taken yet (flow control).
    tx: Vec<u8>,
    /// Finish the control stream once `tx` is written.
    finish: bool,
    phase: Phase,
    session: Option<T>,
    /// Deadline of this connection's live entry in the timer heap.
    armed: Option<Instant>,
    dirty: bool,
}

struct Driver<S: Service> {
    socket: Udp,
    endpoint: quinn_proto::Endpoint,
    service: S,
    settings: LeanSettings,
    remote: Remote,
    conns: Conns<S::Session>,
    links: HashMap<LinkId, ConnectionHandle>,
    /// Every connection's next timeout, as (deadline, handle): exactly one entry per
    /// armed connection, moved when its deadline moves (a heap with lazily skipped
    /// entries held ten stale ones per link and cost more to pop than the timers did).
    timers: BTreeSet<(Instant, usize)>,
    next_link: u64,
    out: Outbox,
    /// Connections with work since they were last driven.
    dirty: Vec<ConnectionHandle>,
    recv_buf: Vec<u8>,
    send_buf: Vec<u8>,
}

/// Connections by quinn-proto handle, a small index the endpoint reuses. Boxed: a
/// quinn-proto connection is kilobytes, and a hash map keeps its values in a table up
/// to half empty (measured: 13 KiB per link unboxed).
struct Conns<T>(Vec<Option<Box<Conn<T>>>>);

impl<T> Conns<T> {
    fn get_mut(&mut self, h: ConnectionHandle) -> Option<&mut Conn<T>> {
        self.0.get_mut(h.0)?.as_deref_mut()
    }

    fn insert(&mut self, h: ConnectionHandle, c: Box<Conn<T>>) -> &mut Conn<T> {
        if self.0.len() <= h.0 {
            self.0.resize_with(h.0 + 1, || None);
        }
        self.0[h.0].insert(c)
    }

    fn remove(&mut self, h: ConnectionHandle) -> Option<Box<Conn<T>>> {
        self.0.get_mut(h.0)?.take()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (ConnectionHandle, &mut Conn<T>)> {
        self.0
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| Some((ConnectionHandle(i), c.as_deref_mut()?)))
    }
}

/// Datagrams taken from the socket before timers and requests get a turn.
const RECV_BATCH: usize = 64;

fn mark<T>(dirty: &mut Vec<ConnectionHandle>, h: ConnectionHandle, c: &mut Conn<T>) {
    if !c.dirty {
        c.dirty = true;
        dirty.push(h);
    }
}

impl<S: Service> Driver<S> {
    fn receive(&mut self, now: Instant) {
        for _ in 0..RECV_BATCH {
            let meta = match self.socket.try_recv(&mut self.recv_buf) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(error = %e, "receive failed");
                    continue;
                }
            };
            let ecn = meta
                .ecn
                .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
            let stride = meta.stride.max(1);
            for at in (0..meta.len).step_by(stride) {
                let datagram = &self.recv_buf[at..(at + stride).min(meta.len)];
                self.send_buf.clear();
                let event = self.endpoint.handle(
                    now,
                    meta.addr,
                    meta.dst_ip,
                    ecn,
                    BytesMut::from(datagram),
                    &mut self.send_buf,
                );
                match event {
                    Some(DatagramEvent::ConnectionEvent(h, event)) => {
                        if let Some(c) = self.conns.get_mut(h) {
                            c.conn.handle_event(event);
                            mark(&mut self.dirty, h, c);
                        }
                    }
                    Some(DatagramEvent::NewConnection(incoming)) => self.accept(incoming, now),
                    Some(DatagramEvent::Response(t)) => self.socket.send(&t, &self.send_buf),
                    None => {}
                }
            }
        }
    }

    fn accept(&mut self, incoming: quinn_proto::Incoming, now: Instant) {
        self.send_buf.clear();
        match self
            .endpoint
            .accept(incoming, now, &mut self.send_buf, None)
        {
            Ok((h, conn)) => {
                let link = LinkId(self.next_link);
                self.next_link += 1;
                self.links.insert(link, h);
                let c = self.conns.insert(
                    h,
                    Box::new(Conn {
                        link,
                        conn,
                        control: None,
                        rx: Vec::new(),
                        tx: Vec::new(),
                        finish: false,
                        phase: Phase::Handshake,
                        session: None,
                        armed: None,
                        dirty: false,
                    }),
                );
                mark(&mut self.dirty, h, c);
            }
            Err(e) => {
                debug!(who = self.settings.who, error = %e.cause, "connection not accepted");
                if let Some(t) = e.response {
                    self.socket.send(&t, &self.send_buf);
                }
            }
        }
        self.send_buf.clear();
    }

    fn request(&mut self, request: Request) {
        match request {
            Request::Close { link, code, reason } => {
                self.out.actions.push(Action::Close(link, code, reason))
            }
            Request::Wake(link) => {
                let Some(h) = self.links.get(&link) else {
                    return;
                };
                let Some(c) = self.conns.get_mut(*h) else {
                    return;
                };
                if let (Phase::Open, Some(session)) = (&c.phase, c.session.as_mut()) {
                    self.service.wake(&mut self.out, link, session);
                }
            }
            Request::Broadcast(frame) => {
                for (h, c) in self.conns.iter_mut() {
                    if matches!(c.phase, Phase::Open) {
                        c.tx.extend_from_slice(&frame);
                        flush(c);
                        mark(&mut self.dirty, h, c);
                    }
                }
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&(at, h)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let h = ConnectionHandle(h);
            if let Some(c) = self.conns.get_mut(h) {
                c.armed = None;
                c.conn.handle_timeout(now);
                mark(&mut self.dirty, h, c);
            }
        }
    }

    /// Close links that sent no `Hello` in time, and refused links whose refusal was not
    /// acknowledged in time.
    fn sweep(&mut self, now: Instant) {
        for (h, c) in self.conns.iter_mut() {
            let expired = match &c.phase {
                Phase::Hello { deadline } if *deadline <= now => Some((
                    close::PROTOCOL_ERROR,
                    Bytes::from_static(b"no hello in time"),
                )),
                Phase::Refusing { close_at, reason } if *close_at <= now => {
                    Some((close::REFUSED, reason.clone()))
                }
                _ => None,
            };
            if let Some((code, reason)) = expired {
                close_conn(c, &mut self.service, code, reason, now, "closed here");
                mark(&mut self.dirty, h, c);
            }
        }
    }

    /// Carry out queued actions and drive every connection with work, until none is left.
    fn settle(&mut self, now: Instant) {
        loop {
            for action in std::mem::take(&mut self.out.actions) {
                let (Action::Send(link, _) | Action::Close(link, _, _)) = &action;
                let Some(&h) = self.links.get(link) else {
                    continue;
                };
                let Some(c) = self.conns.get_mut(h) else {
                    continue;
                };
                match action {
                    Action::Send(_, frame) => {
                        if matches!(c.phase, Phase::Open) {
                            c.tx.extend_from_slice(&frame);
                            flush(c);
                        }
                    }
                    Action::Close(_, code, reason) => {
                        if !matches!(c.phase, Phase::Closed) {
                            close_conn(c, &mut self.service, code, reason, now, "closed here");
                        }
                    }
                }
                mark(&mut self.dirty, h, c);
            }
            if self.dirty.is_empty() {
                return;
            }
            for h in std::mem::take(&mut self.dirty) {
                self.drive(h, now);
            }
        }
    }

    /// Let one connection process what it was given: events to the service, packets to
    /// the socket, its next timeout into the heap; drop it once drained.
    fn drive(&mut self, h: ConnectionHandle, now: Instant) {
        let Some(c) = self.conns.get_mut(h) else {
            return;
        };
        c.dirty = false;
        loop {
            let mut progressed = false;
            while let Some(event) = c.conn.poll_endpoint_events() {
                progressed = true;
                if let Some(event) = self.endpoint.handle_event(h, event) {
                    c.conn.handle_event(event);
                }
            }
            while let Some(event) = c.conn.poll() {
                progressed = true;
                on_event(
                    c,
                    event,
                    &mut self.service,
                    &mut self.out,
                    &self.settings,
                    &self.remote,
                    now,
                );
            }
            if !progressed {
                break;
            }
        }
        self.send_buf.clear();
        while let Some(t) = c.conn.poll_transmit(now, 1, &mut self.send_buf) {
            self.socket.send(&t, &self.send_buf);
            self.send_buf.clear();
        }
        self.send_buf.clear();
        // Sending can end the connection (e.g. at the AEAD limit): the endpoint must
        // hear of it before the connection is dropped below.
        while let Some(event) = c.conn.poll_endpoint_events() {
            if let Some(event) = self.endpoint.handle_event(h, event) {
                c.conn.handle_event(event);
            }
        }
        let next = c.conn.poll_timeout();
        if next != c.armed {
            if let Some(old) = c.armed {
                self.timers.remove(&(old, h.0));
            }
            if let Some(at) = next {
                self.timers.insert((at, h.0));
            }
            c.armed = next;
        }
        if c.conn.is_drained() {
            let link = c.link;
            if let Some(at) = c.armed {
                self.timers.remove(&(at, h.0));
            }
            if let Some(c) = self.conns.remove(h) {
                if let Some(session) = c.session {
                    self.service.closed(link, session, "connection ended");
                }
            }
            self.links.remove(&link);
        }
    }

    /// Close every link with `SHUTDOWN`, each close waiting for room in the socket
    /// buffer (sent once, so agents go to a standby at once instead of timing out),
    /// within half a second in all.
    async fn shut_down(&mut self) {
        let now = Instant::now();
        let reason = Bytes::from(format!("{} shutting down", self.settings.who));
        let mut closing = Vec::new();
        for (h, c) in self.conns.iter_mut() {
            if !matches!(c.phase, Phase::Closed) {
                close_conn(
                    c,
                    &mut self.service,
                    close::SHUTDOWN,
                    reason.clone(),
                    now,
                    "shutdown",
                );
            }
            closing.push(h);
        }
        let send_all = async {
            for h in closing {
                let Some(c) = self.conns.get_mut(h) else {
                    continue;
                };
                self.send_buf.clear();
                while let Some(t) = c.conn.poll_transmit(now, 1, &mut self.send_buf) {
                    self.socket.send_wait(&t, &self.send_buf).await;
                    self.send_buf.clear();
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), send_all).await;
    }
}

fn close_conn<S: Service>(
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
fn flush<T>(c: &mut Conn<T>) {
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

fn on_event<S: Service>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{RefusalCode, Role};
    use crate::test_identities::Identities;
    use crate::transport::{client_config, client_endpoint, client_hello, connect};
    use crate::ControlStream;
    use quinn::{Connection, ConnectionError};

    /// Admits every `Hello` except from "refuse-me"; answers frames and datagrams with a
    /// frame saying what it got; tells the test about closed sessions.
    struct Echo {
        closed: mpsc::UnboundedSender<String>,
        handles: mpsc::UnboundedSender<LinkHandle>,
    }

    impl Service for Echo {
        type Session = String;

        fn server_id(&self) -> String {
            "echo".into()
        }

        fn admit(
            &mut self,
            hello: &Hello,
            peer: Option<PeerCert>,
            _remote: SocketAddr,
        ) -> Result<String, Refusal> {
            let peer = peer.expect("the client certificate reaches the service");
            if hello.id == "refuse-me" {
                return Err(Refusal::new(RefusalCode::BadIdentity, "you asked for it"));
            }
            Ok(format!("{}/{}", hello.id, peer.id))
        }

        fn opened(&mut self, out: &mut Outbox, link: LinkHandle, session: &mut String) {
            out.send(link.id, &format!("hello {session}"));
            let _ = self.handles.send(link);
        }

        fn frame(&mut self, out: &mut Outbox, link: LinkId, _: &mut String, body: &[u8]) {
            match decode_body::<String>(body) {
                Ok(text) => out.send(link, &format!("frame {text}")),
                Err(_) => out.close(link, close::PROTOCOL_ERROR, &b"bad frame"[..]),
            }
        }

        fn datagram(&mut self, out: &mut Outbox, link: LinkId, _: &mut String, body: &[u8]) {
            out.send(link, &format!("datagram {}", String::from_utf8_lossy(body)));
        }

        fn wake(&mut self, out: &mut Outbox, link: LinkId, _: &mut String) {
            out.send(link, &"woken".to_string());
        }

        fn closed(&mut self, _: LinkId, session: String, _why: &str) {
            let _ = self.closed.send(session);
        }
    }

    struct Rig {
        ids: Identities,
        client: quinn::Endpoint,
        addr: SocketAddr,
        remote: Remote,
        closed: mpsc::UnboundedReceiver<String>,
        handles: mpsc::UnboundedReceiver<LinkHandle>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    const WAIT: Duration = Duration::from_secs(5);

    impl Rig {
        fn start() -> Rig {
            let ids = Identities::new();
            let settings = LeanSettings {
                who: "test",
                max_frame: 1024,
                hello_timeout: Duration::from_millis(500),
            };
            let endpoint = LeanEndpoint::bind(
                "127.0.0.1:0".parse().unwrap(),
                &ids.server,
                ClientAuth::Required,
                ids.timing,
                settings,
            )
            .unwrap();
            let (closed_tx, closed) = mpsc::unbounded_channel();
            let (handles_tx, handles) = mpsc::unbounded_channel();
            let shutdown = CancellationToken::new();
            let addr = endpoint.local_addr();
            let remote = endpoint.remote();
            let service = Echo {
                closed: closed_tx,
                handles: handles_tx,
            };
            let task = tokio::spawn(endpoint.serve(service, shutdown.clone()));
            Rig {
                ids,
                client: client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap(),
                addr,
                remote,
                closed,
                handles,
                shutdown,
                task,
            }
        }

        async fn connect(&self) -> Connection {
            let config =
                client_config(self.ids.client.client_tls().unwrap(), self.ids.timing).unwrap();
            connect(&self.client, config, self.addr, self.ids.server_name, WAIT)
                .await
                .expect("handshake")
        }

        async fn link(&self, id: &str) -> (Connection, Result<ControlStream, LinkError>) {
            let conn = self.connect().await;
            let hello = client_hello(&conn, &Hello::new(Role::Agent, id), 1024, WAIT).await;
            (conn, hello)
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.unwrap();
        }
    }

    async fn next(control: &mut ControlStream) -> String {
        tokio::time::timeout(WAIT, control.recv::<String>())
            .await
            .expect("a frame in time")
            .expect("a decodable frame")
            .expect("the stream is open")
    }

    async fn close_code(conn: &Connection) -> Option<u64> {
        match tokio::time::timeout(WAIT, conn.closed())
            .await
            .expect("closed in time")
        {
            ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn an_admitted_link_carries_frames_datagrams_and_wakes_both_ways() {
        let mut rig = Rig::start();
        let (conn, control) = rig.link("n1").await;
        let mut control = control.expect("welcomed");
        assert_eq!(
            next(&mut control).await,
            "hello n1/n1",
            "session from hello and cert"
        );
        control.send(&"one".to_string()).await.unwrap();
        assert_eq!(next(&mut control).await, "frame one");
        conn.send_datagram(Bytes::from_static(b"beat")).unwrap();
        assert_eq!(next(&mut control).await, "datagram beat");
        let handle = rig.handles.recv().await.unwrap();
        handle.wake();
        assert_eq!(next(&mut control).await, "woken");
        rig.remote.broadcast(&"to all".to_string());
        assert_eq!(next(&mut control).await, "to all");
        conn.close(0u32.into(), b"done");
        let closed = tokio::time::timeout(WAIT, rig.closed.recv()).await.unwrap();
        assert_eq!(
            closed.as_deref(),
            Some("n1/n1"),
            "the service hears the end"
        );
        rig.stop().await;
    }

    #[tokio::test]
    async fn a_refused_hello_gets_its_reason_then_the_link_closes_as_refused() {
        let rig = Rig::start();
        let (conn, control) = rig.link("refuse-me").await;
        let refusal = control
            .err()
            .and_then(|e| e.refusal().cloned())
            .expect("refused");
        assert_eq!(refusal.code, RefusalCode::BadIdentity);
        assert_eq!(refusal.message, "you asked for it");
        assert_eq!(close_code(&conn).await, Some(close::REFUSED as u64));
        rig.stop().await;
    }

    #[tokio::test]
    async fn a_link_is_closed_from_another_task_with_its_code() {
        let mut rig = Rig::start();
        let (conn, control) = rig.link("n1").await;
        let _control = control.expect("welcomed");
        let handle = rig.handles.recv().await.unwrap();
        handle.close(close::REMOVED.into(), b"removed");
        assert_eq!(close_code(&conn).await, Some(close::REMOVED as u64));
        assert!(
            rig.closed.recv().await.is_some(),
            "the service hears the end"
        );
        rig.stop().await;
    }

    #[tokio::test]
    async fn a_bad_frame_or_silence_closes_that_link_only_and_others_go_on() {
        let rig = Rig::start();
        let (good, control) = rig.link("good").await;
        let mut good_control = control.expect("welcomed");
        let _ = next(&mut good_control).await;

        // A length over the limit.
        let (bad, control) = rig.link("bad").await;
        let mut bad_control = control.expect("welcomed");
        bad_control
            .send
            .write_all(&(1u32 << 20).to_be_bytes())
            .await
            .unwrap();
        assert_eq!(close_code(&bad).await, Some(close::PROTOCOL_ERROR as u64));

        // No hello at all within the hello timeout.
        let silent = rig.connect().await;
        assert_eq!(
            close_code(&silent).await,
            Some(close::PROTOCOL_ERROR as u64)
        );

        good_control.send(&"still here".to_string()).await.unwrap();
        assert_eq!(next(&mut good_control).await, "frame still here");
        good.close(0u32.into(), b"done");
        rig.stop().await;
    }

    #[tokio::test]
    async fn shutdown_closes_every_link_as_shutdown() {
        let rig = Rig::start();
        let (a, ca) = rig.link("a").await;
        let (b, cb) = rig.link("b").await;
        let (_ca, _cb) = (ca.expect("welcomed"), cb.expect("welcomed"));
        rig.stop().await;
        assert_eq!(close_code(&a).await, Some(close::SHUTDOWN as u64));
        assert_eq!(close_code(&b).await, Some(close::SHUTDOWN as u64));
    }
}
