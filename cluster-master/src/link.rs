//! The cluster master's QUIC side: enrollment conversations with machines that have no
//! certificate yet, and long-lived links with group masters.

use std::sync::Arc;

use glory_protocol::transport::{refuse, server_hello, welcome};
use glory_protocol::{
    close, CertRole, ClusterToGroup, EnrollKind, EnrollReply, EnrollRequest, GroupToCluster, Link,
    Refusal, RefusalCode, Role,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::Cluster;
use crate::role::Node;

pub(crate) async fn accept_loop(
    endpoint: glory_protocol::LinkEndpoint,
    ordinary: glory_protocol::ServerLinkConfig,
    node: Arc<Node>,
    shutdown: CancellationToken,
) {
    let privileged = {
        let node = node.clone();
        // Group masters reconnect from the address of their last link: never held back
        // by servers enrolling.
        move |remote: std::net::SocketAddr| {
            node.active()
                .is_some_and(|cluster| cluster.is_group_master_address(remote))
        }
    };
    glory_protocol::admission::accept_loop_admitting(
        endpoint,
        shutdown,
        "cluster master",
        ADMISSION,
        Some(ordinary),
        privileged,
        move |conn| serve_connection(conn, node.clone()),
    )
    .await;
}

/// Connections from unknown addresses (enrollments, agents asking where their group
/// is) served at once, and how many more wait for a slot and for how long. An
/// enrollment storm of thousands of servers then costs bounded CPU, and the group
/// masters' links, which share this endpoint, keep getting through instead of timing
/// out and flapping whole groups.
///
/// Waiting is what an attempt should do: it costs only a few resends of its first
/// packet (spaced out exponentially, and quinn buffers them without decrypting),
/// where a refused attempt comes back with a new key share, a new ClientHello and new
/// initial keys on both sides, and a full queue turned 10,000 servers' storm into
/// 20,000-50,000 refusals. So the queue holds a whole storm: at about 500 enrollments
/// a second on two cores, 16 s of waiting covers an 8,000-server backlog. Enrollees
/// wait 20 s for their handshake (`ENROLL_CONNECT_PATIENCE`); past 16 s, or with the
/// queue full, an attempt is refused and the enrollee backs off for a few seconds.
///
/// Attempts are accepted with an idle timeout of that patience, not the group links'
/// 3 s: quinn silently drops an attempt that waited longer than the idle timeout it
/// is accepted with. Before that was fixed, thousands of a 10,000-server storm's
/// attempts waited 3-8 s, were dropped, and were made again after the enrollee's
/// timeout (10,428-17,873 attempts for 10,000 enrollments).
///
/// 256 served at once measured best for a 10,000-server storm on two cores (all up in
/// 18-22 s, against 29-34 s with 128); from 384 on, so many handshakes ran at once that
/// some took long enough to time out (docs/BENCHMARKS.md, fifth session).
const ADMISSION: glory_protocol::admission::Limits = glory_protocol::admission::Limits {
    in_flight: 256,
    queue: 16384,
    // Refused with time to spare before the enrollee gives up on its own.
    max_wait: glory_protocol::enroll::ENROLL_CONNECT_PATIENCE
        .saturating_sub(std::time::Duration::from_secs(4)),
};

fn refusal(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal::new(code, message)
}

async fn serve_connection(conn: Link, node: Arc<Node>) {
    let remote = conn.remote_address();
    let settings = &node.settings;
    let (hello, mut control) =
        match server_hello(&conn, settings.max_frame, settings.request_timeout).await {
            Ok(x) => x,
            Err(e) => {
                debug!(%remote, error = %e, "hello failed");
                conn.close(close::PROTOCOL_ERROR, "bad hello");
                return;
            }
        };
    let Some(cluster) = node.active().cloned() else {
        let refusal = Refusal::new(RefusalCode::Unavailable, node.standby_message())
            .redirect_to(node.leader().map(|l| l.quic));
        refuse(&mut control, &conn, refusal).await;
        return;
    };
    let peer = conn.peer_cert();
    match (hello.role, peer) {
        (Role::Agent, Some(peer)) if peer.role == CertRole::Node && peer.id == hello.id => {
            // An agent that lost every group master it knew asks where its group is led.
            if cluster.is_revoked(&peer.serial) {
                refuse(
                    &mut control,
                    &conn,
                    refusal(
                        RefusalCode::Removed,
                        "this node was removed from the cluster",
                    ),
                )
                .await;
                return;
            }
            match cluster.locate(&peer.id) {
                Some(location) => {
                    if welcome(&mut control, &settings.cluster_name).await.is_ok() {
                        let _ = control.send(&location).await;
                        control.finish();
                        let _ = tokio::time::timeout(settings.request_timeout, conn.closed()).await;
                    }
                }
                None => {
                    refuse(
                        &mut control,
                        &conn,
                        refusal(RefusalCode::Removed, "unknown node"),
                    )
                    .await
                }
            }
        }
        (Role::Enrollee, _) => {
            if welcome(&mut control, &settings.cluster_name).await.is_err() {
                return;
            }
            let request = match tokio::time::timeout(
                settings.request_timeout,
                control.recv::<EnrollRequest>(),
            )
            .await
            {
                Ok(Ok(Some(request))) => request,
                Ok(Err(glory_protocol::FrameError::Io(e))) => {
                    // The enrollee gave up (its timeout) or went away: not our problem.
                    tracing::debug!(%remote, error = %e, "enrollment connection lost");
                    return;
                }
                Ok(Err(e)) => {
                    warn!(%remote, error = %e, "bad enrollment frame; closing");
                    conn.close(close::PROTOCOL_ERROR, "bad frame");
                    return;
                }
                _ => return,
            };
            let reply = match request.kind {
                EnrollKind::Node { inventory } => {
                    cluster
                        .enroll_node(&request.token, *inventory, &request.csr_pem, remote)
                        .await
                }
                EnrollKind::GroupMaster { group, listen } => {
                    cluster
                        .enroll_group_master(&request.token, &group, listen, &request.csr_pem)
                        .await
                }
                EnrollKind::Provisioner { name, http } => {
                    cluster
                        .enroll_provisioner(&request.token, &name, &http, &request.csr_pem)
                        .await
                }
            };
            let reply = match reply {
                Ok(enrolled) => EnrollReply::Accepted(enrolled),
                Err(r) => {
                    info!(%remote, machine_id = %hello.id, code = ?r.code, reason = %r.message, "enrollment refused");
                    EnrollReply::Refused(r)
                }
            };
            let _ = control.send(&reply).await;
            control.finish();
            // The enrollee closes the connection once it has the answer.
            let _ = tokio::time::timeout(settings.request_timeout, conn.closed()).await;
        }
        (Role::GroupMaster, Some(peer))
            if peer.role == CertRole::GroupMaster && peer.id == hello.id =>
        {
            if admit_link(
                &cluster,
                &peer.serial,
                &mut control,
                &conn,
                &settings.cluster_name,
            )
            .await
            {
                group_link(conn, control, cluster, peer.id).await;
            }
        }
        (Role::Provisioner, Some(peer))
            if peer.role == CertRole::Provisioner && peer.id == hello.id =>
        {
            if admit_link(
                &cluster,
                &peer.serial,
                &mut control,
                &conn,
                &settings.cluster_name,
            )
            .await
            {
                crate::provisioning::link::provisioner_link(conn, control, cluster, peer.id).await;
            }
        }
        (role, peer) => {
            let why = match peer {
                None => format!("role {role:?} needs a client certificate from the cluster CA"),
                Some(p) => format!(
                    "certificate for {} ({}) cannot act as {role:?} {}",
                    p.id,
                    p.role.as_str(),
                    hello.id
                ),
            };
            info!(%remote, reason = %why, "connection refused");
            refuse(&mut control, &conn, refusal(RefusalCode::BadIdentity, why)).await;
        }
    }
}

/// A certified peer's link: refused when its certificate was revoked, else welcomed.
/// Whether to go on.
async fn admit_link(
    cluster: &Cluster,
    serial: &str,
    control: &mut glory_protocol::ControlStream,
    conn: &Link,
    cluster_name: &str,
) -> bool {
    if cluster.is_revoked(serial) {
        refuse(
            control,
            conn,
            refusal(RefusalCode::Removed, "certificate revoked"),
        )
        .await;
        return false;
    }
    welcome(control, cluster_name).await.is_ok()
}

async fn group_link(
    conn: Link,
    control: glory_protocol::ControlStream,
    cluster: Arc<Cluster>,
    group: String,
) {
    let (mut send, mut recv) = control.split();
    let listen = match tokio::time::timeout(
        cluster.settings.request_timeout,
        recv.recv::<GroupToCluster>(),
    )
    .await
    {
        Ok(Ok(Some(GroupToCluster::Register { listen }))) => listen,
        other => {
            warn!(group = %group, result = ?other.map(|r| r.map(|_| ())), "group master did not register; closing");
            conn.close(close::PROTOCOL_ERROR, "expected Register");
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<ClusterToGroup>(4096);
    let renewals = tx.clone();
    let (session, first) = match cluster
        .group_connected(&group, listen, conn.clone(), tx)
        .await
    {
        Ok(x) => x,
        Err(e) => {
            warn!(group = %group, error = %e, "cannot record group master; closing");
            conn.close(close::REFUSED, "key master unavailable");
            return;
        }
    };
    // Outbound messages on their own task so a slow write never blocks reading.
    let writer = tokio::spawn(async move {
        for msg in &first {
            if send.send(msg).await.is_err() {
                return;
            }
        }
        while let Some(msg) = rx.recv().await {
            if send.send(&msg).await.is_err() {
                return;
            }
        }
    });
    let mut unheard = 0u64;
    loop {
        match recv.recv::<GroupToCluster>().await {
            Ok(Some(msg)) if speaks_for_nodes(&msg) && !cluster.is_active_link(&group, session) => {
                unheard += 1;
                if unheard == 1 {
                    warn!(group = %group, %listen, "a group master that is not the group's active one reports on its nodes; ignored");
                }
            }
            Ok(Some(GroupToCluster::StateChanges(changes))) => {
                cluster.apply_changes(&group, changes)
            }
            Ok(Some(GroupToCluster::Report(report))) => cluster.apply_report(&group, report).await,
            Ok(Some(GroupToCluster::Register { .. })) => {}
            Ok(Some(GroupToCluster::Processes(reports))) => cluster.process_reports(reports),
            Ok(Some(GroupToCluster::Alerts(changes))) => cluster.alerts_changed(&group, changes),
            Ok(Some(GroupToCluster::AlertSnapshot(all))) => cluster.alert_snapshot(&group, all),
            Ok(Some(GroupToCluster::MetricsAnswer(answer))) => cluster.metrics_answered(answer),
            Ok(Some(GroupToCluster::Setup(reports))) => cluster.setup_reports(reports),
            Ok(Some(GroupToCluster::RenewNode {
                node,
                csr_pem,
                serial,
            })) => {
                // It writes to the key master: on its own task, so the link reads on.
                let (cluster, group, tx) = (cluster.clone(), group.clone(), renewals.clone());
                tokio::spawn(async move {
                    if let Err(e) = cluster
                        .renew_node(&group, &node, &csr_pem, &serial, &tx)
                        .await
                    {
                        crate::cluster::renewal::log_refused(&node, &e);
                    }
                });
            }
            Ok(Some(GroupToCluster::Renew { csr_pem })) => {
                match cluster.renew_group_master(&group, &csr_pem) {
                    Ok(cert_pem) => {
                        info!(group = %group, "group master certificate renewed");
                        let _ = renewals
                            .send(ClusterToGroup::Certificate { cert_pem })
                            .await;
                    }
                    Err(e) => crate::cluster::renewal::log_refused(&group, &e),
                }
            }
            Ok(Some(GroupToCluster::ProcessSnapshot {
                node,
                processes,
                address,
            })) => {
                cluster
                    .process_snapshot(&group, &node, processes, address)
                    .await
            }
            Ok(None) => break,
            Err(e) if e.is_skippable() => {
                debug!(group = %group, error = %e, "message from a newer group master skipped");
            }
            Err(e) => {
                if !matches!(e, glory_protocol::FrameError::Io(_)) {
                    warn!(group = %group, error = %e, "bad frame from group master; closing its link");
                    conn.close(close::PROTOCOL_ERROR, "bad frame");
                }
                break;
            }
        }
    }
    writer.abort();
    if let Some(promoted) = cluster.group_disconnected(&group, session) {
        cluster.record_promotion(&group, promoted).await;
    }
}

/// Whether a group master's message says something about the group's nodes, which
/// only the group's active master may.
fn speaks_for_nodes(msg: &GroupToCluster) -> bool {
    matches!(
        msg,
        GroupToCluster::StateChanges(_)
            | GroupToCluster::Report(_)
            | GroupToCluster::Processes(_)
            | GroupToCluster::Alerts(_)
            | GroupToCluster::AlertSnapshot(_)
            | GroupToCluster::Setup(_)
            | GroupToCluster::ProcessSnapshot { .. }
            | GroupToCluster::RenewNode { .. }
    )
}
