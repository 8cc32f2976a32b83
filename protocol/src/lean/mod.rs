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

mod driver;
mod events;
#[cfg(test)]
mod tests;
mod udp;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::frame::encode_frame;
use crate::messages::{Hello, Refusal};
use crate::tls::{ClientAuth, PeerCert};
use crate::transport::{endpoint_config, quinn_server_config, LinkError, LinkTiming};

use driver::{sleep_until, Conns, Driver, Wake, SWEEP_INTERVAL};
use udp::{Udp, MAX_DATAGRAM};

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
    /// Close the connection with an application error code ([`crate::close`]) and
    /// reason (like [`crate::Link::close`]).
    pub fn close(&self, code: u32, reason: &str) {
        let _ = self.remote.tx.send(Request::Close {
            link: self.id,
            code,
            reason: Bytes::copy_from_slice(reason.as_bytes()),
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
        identity: &crate::LiveIdentity,
        client_auth: ClientAuth,
        timing: LinkTiming,
        settings: LeanSettings,
    ) -> Result<Self, LinkError> {
        let mut server = quinn_server_config(identity, client_auth, timing)?;
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
