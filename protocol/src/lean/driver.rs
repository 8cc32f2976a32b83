//! The driver: one task owning the socket, the quinn-proto endpoint and every connection.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{ConnectionHandle, DatagramEvent, StreamId};
use tracing::debug;

use crate::transport::close;

use super::events::{close_conn, flush, on_event};
use super::udp::Udp;
use super::{Action, LeanSettings, LinkId, Outbox, Remote, Request, Service};

pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

pub(super) enum Wake {
    Shutdown,
    Readable,
    Request(Request),
    Timer,
}

/// Hello deadlines and refusals' closes are checked this often.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

pub(super) enum Phase {
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

pub(super) struct Conn<T> {
    pub(super) link: LinkId,
    pub(super) conn: quinn_proto::Connection,
    pub(super) control: Option<StreamId>,
    /// Control stream bytes not yet forming a whole frame.
    pub(super) rx: Vec<u8>,
    /// Frame bytes the stream has not taken yet (flow control).
    pub(super) tx: Vec<u8>,
    /// Finish the control stream once `tx` is written.
    pub(super) finish: bool,
    pub(super) phase: Phase,
    pub(super) session: Option<T>,
    /// Deadline of this connection's live entry in the timer heap.
    pub(super) armed: Option<Instant>,
    pub(super) dirty: bool,
}

pub(super) struct Driver<S: Service> {
    pub(super) socket: Udp,
    pub(super) endpoint: quinn_proto::Endpoint,
    pub(super) service: S,
    pub(super) settings: LeanSettings,
    pub(super) remote: Remote,
    pub(super) conns: Conns<S::Session>,
    pub(super) links: HashMap<LinkId, ConnectionHandle>,
    /// Every connection's next timeout, as (deadline, handle): exactly one entry per
    /// armed connection, moved when its deadline moves (a heap with lazily skipped
    /// entries held ten stale ones per link and cost more to pop than the timers did).
    pub(super) timers: BTreeSet<(Instant, usize)>,
    pub(super) next_link: u64,
    pub(super) out: Outbox,
    /// Connections with work since they were last driven.
    pub(super) dirty: Vec<ConnectionHandle>,
    pub(super) recv_buf: Vec<u8>,
    pub(super) send_buf: Vec<u8>,
}

/// Connections by quinn-proto handle, a small index the endpoint reuses. Boxed: a
/// quinn-proto connection is kilobytes, and a hash map keeps its values in a table up
/// to half empty (measured: 13 KiB per link unboxed).
pub(super) struct Conns<T>(pub(super) Vec<Option<Box<Conn<T>>>>);

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
    pub(super) fn receive(&mut self, now: Instant) {
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

    pub(super) fn request(&mut self, request: Request) {
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

    pub(super) fn fire_timers(&mut self, now: Instant) {
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
    pub(super) fn sweep(&mut self, now: Instant) {
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
    pub(super) fn settle(&mut self, now: Instant) {
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
    pub(super) async fn shut_down(&mut self) {
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
