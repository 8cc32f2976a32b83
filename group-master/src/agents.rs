//! Agent sessions: verify who connected, then feed its heartbeats and control messages
//! into the shared state. A misbehaving agent loses its own stream or connection only.

use std::sync::Arc;
use std::time::Instant;

use glory_protocol::transport::{refuse, server_hello, welcome};
use glory_protocol::{
    close, frame, tls::peer_cert, AgentToGroup, CertRole, GroupToAgent, Heartbeat, Refusal,
    RefusalCode, Role,
};
use quinn::VarInt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::state::Shared;
use crate::GroupMasterSettings;

pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    settings: Arc<GroupMasterSettings>,
    advertise: std::net::SocketAddr,
    shutdown: CancellationToken,
) {
    glory_protocol::transport::accept_loop(endpoint, shutdown, "group master", move |conn| {
        serve_agent(conn, shared.clone(), settings.clone(), advertise)
    })
    .await;
}

fn refusal(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal::new(code, message)
}

async fn serve_agent(
    conn: quinn::Connection,
    shared: Arc<Shared>,
    settings: Arc<GroupMasterSettings>,
    advertise: std::net::SocketAddr,
) {
    let remote = conn.remote_address();
    let (hello, mut control) =
        match server_hello(&conn, settings.max_frame, settings.request_timeout).await {
            Ok(x) => x,
            Err(e) => {
                debug!(%remote, error = %e, "agent hello failed");
                conn.close(VarInt::from_u32(close::PROTOCOL_ERROR), b"bad hello");
                return;
            }
        };
    // TLS already verified the chain; here the certificate must also say who it is.
    let check = match peer_cert(&conn) {
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
                    .redirect_to(masters.first().copied().filter(|m| *m != advertise)),
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
            {
                Err(refusal(
                    RefusalCode::BadIdentity,
                    "certificate was superseded by a newer enrollment",
                ))
            } else {
                Ok(peer)
            }
        }
    };
    let peer = match check {
        Ok(peer) => peer,
        Err(r) => {
            info!(%remote, node_id = %hello.id, code = ?r.code, reason = %r.message, "agent refused");
            refuse(&mut control, &conn, r).await;
            return;
        }
    };
    let (node, serial) = (peer.id, peer.serial);
    if welcome(&mut control, &shared.group).await.is_err() {
        return;
    }
    let _ = control
        .send(&GroupToAgent::GroupMasters(shared.masters()))
        .await;
    let commands = std::sync::Arc::new(tokio::sync::Notify::new());
    let (session_id, replaced) =
        shared.open_session(&node, &serial, conn.clone(), commands.clone());
    if let Some(old) = replaced {
        old.close(
            VarInt::from_u32(close::REPLACED),
            b"replaced by a newer connection",
        );
    }
    debug!(node_id = %node, %remote, "agent connected");

    // Control frames on their own task; datagrams here.
    let control_task = {
        let shared = shared.clone();
        let node = node.clone();
        let conn = conn.clone();
        let max_frame = settings.max_frame;
        tokio::spawn(async move {
            let mut recv = control.recv;
            let mut send = control.send;
            // Pass changes of the group's masters (a standby registered, a promotion) on
            // to the agent, so it knows where to go if this master disappears.
            let mut masters = shared.watch_masters();
            masters.mark_unchanged();
            let forward_shared = shared.clone();
            let forward_node = node.clone();
            let forward = tokio::spawn(async move {
                'session: loop {
                    let msgs = tokio::select! {
                        changed = masters.changed() => match changed {
                            Ok(()) => vec![GroupToAgent::GroupMasters(masters.borrow_and_update().clone())],
                            Err(_) => break,
                        },
                        _ = commands.notified() => forward_shared.take_commands(&forward_node),
                    };
                    for msg in msgs {
                        if frame::write_frame(&mut send, &msg, max_frame)
                            .await
                            .is_err()
                        {
                            break 'session;
                        }
                    }
                }
            });
            let _forward = AbortOnDrop(forward);
            loop {
                match frame::read_frame::<_, AgentToGroup>(&mut recv, max_frame).await {
                    Ok(Some(AgentToGroup::Inventory(inventory))) => {
                        shared.inventory(&node, *inventory)
                    }
                    Ok(Some(AgentToGroup::Process(report))) => shared.process_report(&node, report),
                    Ok(Some(AgentToGroup::Processes(all))) => shared.process_snapshot(&node, all),
                    Ok(Some(AgentToGroup::Leaving)) => {
                        info!(node_id = %node, "agent leaving");
                        shared.left(&node);
                    }
                    Ok(None) => break,
                    Err(glory_protocol::FrameError::Io(e)) => {
                        debug!(node_id = %node, error = %e, "agent control stream ended");
                        break;
                    }
                    Err(e) => {
                        warn!(node_id = %node, error = %e, "bad frame from agent; closing its connection");
                        conn.close(VarInt::from_u32(close::PROTOCOL_ERROR), b"bad frame");
                        break;
                    }
                }
            }
        })
    };
    let mut garbage = 0u32;
    loop {
        match conn.read_datagram().await {
            Ok(bytes) => match frame::decode_body::<Heartbeat>(&bytes) {
                Ok(hb) => shared.heartbeat(&node, hb.seq, hb.load, Instant::now()),
                Err(e) => {
                    garbage += 1;
                    if garbage == 1 || garbage.is_multiple_of(100) {
                        warn!(node_id = %node, error = %e, garbage, "undecodable heartbeat datagram dropped");
                    }
                }
            },
            Err(e) => {
                debug!(node_id = %node, error = %e, "agent connection ended");
                break;
            }
        }
    }
    control_task.abort();
    shared.close_session(&node, session_id);
}

/// Aborts a task when dropped (so a session's helper tasks end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
