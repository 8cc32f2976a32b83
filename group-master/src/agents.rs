//! Agent sessions: verify who connected, then feed its heartbeats and control messages
//! into the shared state. A misbehaving agent loses its own stream or connection only.
//!
//! Sessions run on the group master's [`LeanEndpoint`] driver (one task for all of the
//! group's agents), so every callback here is quick and never waits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use glory_protocol::lean::{LinkHandle, LinkId, Outbox, Service};
use glory_protocol::{
    close, frame, AgentToGroup, CertRole, GroupToAgent, Heartbeat, Hello, PeerCert, Refusal,
    RefusalCode, Role,
};
use tracing::{debug, info, warn};

use crate::monitoring::Input;
use crate::state::Shared;

pub(crate) struct Agents {
    pub shared: Arc<Shared>,
    pub advertise: SocketAddr,
}

pub(crate) struct AgentSession {
    node: String,
    serial: String,
    /// Session id in the shared state (a newer connection of the same node replaces it).
    id: u64,
    /// Undecodable heartbeats so far (logged at the first and every hundredth).
    garbage: u32,
    /// The IP address the agent connected from, passed up with its process snapshot:
    /// the node's address as other machines reach it.
    remote: IpAddr,
}

fn refusal(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal::new(code, message)
}

impl Agents {
    /// TLS already verified the chain; here the certificate must also say who it is.
    fn check(&self, hello: &Hello, peer: Option<PeerCert>) -> Result<PeerCert, Refusal> {
        let shared = &self.shared;
        match peer {
            None => Err(refusal(
                RefusalCode::BadIdentity,
                "a node certificate is required",
            )),
            Some(peer) if hello.role != Role::Agent || peer.role != CertRole::Node => Err(refusal(
                RefusalCode::BadIdentity,
                "group masters serve node agents only",
            )),
            Some(peer) if peer.id != hello.id => Err(refusal(
                RefusalCode::BadIdentity,
                format!("certificate is for {}, hello says {}", peer.id, hello.id),
            )),
            Some(peer) if peer.group.as_deref() != Some(shared.group.as_str()) => Err(refusal(
                RefusalCode::BadIdentity,
                format!(
                    "node belongs to group {:?}, this is {}",
                    peer.group, shared.group
                ),
            )),
            Some(_) if !shared.is_active() => {
                let masters = shared.masters();
                Err(
                    refusal(RefusalCode::Unavailable, "this group master is a standby")
                        .redirect_to(masters.first().copied().filter(|m| *m != self.advertise)),
                )
            }
            Some(peer) => {
                let inner = shared.lock();
                if inner.revoked.contains(&peer.serial) {
                    Err(refusal(
                        RefusalCode::Removed,
                        "this node was removed from the cluster",
                    ))
                } else if inner
                    .members
                    .get(&peer.id)
                    .is_some_and(|serial| serial != &peer.serial)
                    && inner.previous.get(&peer.id) != Some(&peer.serial)
                {
                    Err(refusal(
                        RefusalCode::BadIdentity,
                        "certificate was superseded by a newer enrollment",
                    ))
                } else {
                    Ok(peer)
                }
            }
        }
    }
}

impl Service for Agents {
    type Session = AgentSession;

    fn server_id(&self) -> String {
        self.shared.group.clone()
    }

    fn admit(
        &mut self,
        hello: &Hello,
        peer: Option<PeerCert>,
        remote: SocketAddr,
    ) -> Result<AgentSession, Refusal> {
        match self.check(hello, peer) {
            Ok(peer) => Ok(AgentSession {
                node: peer.id,
                serial: peer.serial,
                id: 0,
                garbage: 0,
                // A dual-stack socket shows IPv4 peers as `::ffff:a.b.c.d`.
                remote: remote.ip().to_canonical(),
            }),
            Err(r) => {
                info!(%remote, node_id = %hello.id, code = ?r.code, reason = %r.message, "agent refused");
                Err(r)
            }
        }
    }

    fn opened(&mut self, out: &mut Outbox, link: LinkHandle, session: &mut AgentSession) {
        // Where to go if this master disappears; later changes are broadcast.
        out.send(link.id, &GroupToAgent::GroupMasters(self.shared.masters()));
        let id = link.id;
        let (session_id, replaced) = self
            .shared
            .open_session(&session.node, &session.serial, link);
        session.id = session_id;
        if let Some(old) = replaced {
            out.close(
                old.id,
                close::REPLACED,
                &b"replaced by a newer connection"[..],
            );
        }
        // Messages queued for the node while it had no session, or whose wake went to
        // the connection this one replaces.
        for msg in self.shared.take_commands(&session.node) {
            out.send(id, &msg);
        }
        // The monitoring task tells the agent which samples it holds and which probes
        // to run.
        self.shared.monitor(Input::Opened {
            node: session.node.clone(),
        });
        debug!(node_id = %session.node, ?id, "agent connected");
    }

    fn frame(&mut self, out: &mut Outbox, link: LinkId, session: &mut AgentSession, body: &[u8]) {
        let node = &session.node;
        match frame::decode_body::<AgentToGroup>(body) {
            Ok(AgentToGroup::Inventory(inventory)) => self.shared.inventory(node, *inventory),
            Ok(AgentToGroup::Process(report)) => self.shared.process_report(node, report),
            Ok(AgentToGroup::Processes(all)) => {
                self.shared
                    .process_snapshot(node, all, Some(session.remote))
            }
            Ok(AgentToGroup::Samples(batch)) => self.shared.monitor(Input::Batch {
                node: node.clone(),
                session: session.id,
                batch,
                live: true,
            }),
            Ok(AgentToGroup::Backfill(batch)) => self.shared.monitor(Input::Batch {
                node: node.clone(),
                session: session.id,
                batch,
                live: false,
            }),
            Ok(AgentToGroup::Setup(report)) => self.shared.setup_report(node, report),
            Ok(AgentToGroup::Renew { csr_pem }) => {
                debug!(node_id = %node, "agent asks for its next certificate");
                self.shared.renewal(node, csr_pem, session.serial.clone());
            }
            Ok(AgentToGroup::Alive) => self.shared.alive(node, out.now()),
            Ok(AgentToGroup::Leaving) => {
                info!(node_id = %node, "agent leaving");
                self.shared.left(node);
            }
            Err(e) if e.is_skippable() => {
                debug!(node_id = %node, error = %e, "message from a newer agent skipped");
            }
            Err(e) => {
                warn!(node_id = %node, error = %e, "bad frame from agent; closing its connection");
                out.close(link, close::PROTOCOL_ERROR, &b"bad frame"[..]);
            }
        }
    }

    fn datagram(
        &mut self,
        out: &mut Outbox,
        _link: LinkId,
        session: &mut AgentSession,
        body: &[u8],
    ) {
        match frame::decode_body::<Heartbeat>(body) {
            Ok(hb) => self
                .shared
                .heartbeat(&session.node, hb.seq, hb.load, out.now()),
            Err(e) => {
                session.garbage += 1;
                let garbage = session.garbage;
                if garbage == 1 || garbage.is_multiple_of(100) {
                    warn!(node_id = %session.node, error = %e, garbage, "undecodable heartbeat datagram dropped");
                }
            }
        }
    }

    fn wake(&mut self, out: &mut Outbox, link: LinkId, session: &mut AgentSession) {
        for msg in self.shared.take_commands(&session.node) {
            out.send(link, &msg);
        }
    }

    fn closed(&mut self, _link: LinkId, session: AgentSession, why: &str) {
        debug!(node_id = %session.node, why, "agent connection ended");
        self.shared.close_session(&session.node, session.id);
    }
}
