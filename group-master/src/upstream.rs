//! The link to the cluster master: register, receive the member list, send state
//! changes the moment they happen and a report every interval. Reconnects forever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glory_protocol::renewal::Renewer;
use glory_protocol::targets::Targets;
use glory_protocol::tls::CLUSTER_MASTER_NAME;
use glory_protocol::transport::{client_config, client_hello, connect};
use glory_protocol::{
    close, ClusterToGroup, GroupToCluster, Hello, LinkError, LinkTiming, LiveIdentity, Role,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::monitoring::Input;
use crate::state::Shared;
use crate::GroupMasterSettings;

/// How much later than the active group master a standby retries the cluster master.
const STANDBY_YIELD: Duration = Duration::from_millis(500);

pub(crate) async fn upstream_loop(
    endpoint: glory_protocol::LinkEndpoint,
    identity: LiveIdentity,
    shared: Arc<Shared>,
    settings: Arc<GroupMasterSettings>,
    advertise: SocketAddr,
    shutdown: CancellationToken,
) {
    let Some(mut targets) = Targets::new(&settings.cluster_masters) else {
        warn!(group = %shared.group, "no cluster master address configured");
        return;
    };
    let mut renewer = match Renewer::new(&identity.current().cert_pem) {
        Ok(renewer) => renewer,
        Err(e) => {
            warn!(group = %shared.group, error = %e, "our certificate does not parse; it will not be renewed");
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    // When a cluster master last answered us (a link, or a standby's refusal).
    let mut last_answer = Instant::now();
    while !shutdown.is_cancelled() {
        let target = targets.current();
        let mut established = false;
        // Its errors name `target`.
        let result = link_session(
            &endpoint,
            &identity,
            &mut renewer,
            &shared,
            &settings,
            advertise,
            target,
            &shutdown,
            &mut established,
        )
        .await
        .map_err(|e| e.at("link to cluster master", target));
        if established {
            // The link was up until just now: that counts as an answer.
            last_answer = Instant::now();
        }
        match result {
            Ok(()) => return,
            Err(LinkError::Refused(r)) if targets.redirect(r.redirect) => {
                // A standby named the leader: go there at once. A standby answering
                // means the cluster is still there.
                last_answer = Instant::now();
                debug!(group = %shared.group, from = %target, to = ?r.redirect, "redirected to the leading cluster master");
                continue;
            }
            Err(e) => {
                failures += 1;
                if worth_logging(failures) {
                    warn!(group = %shared.group, failures, error = %e, "cluster master link down; retrying");
                } else {
                    debug!(group = %shared.group, failures, error = %e, "cluster master link down; retrying");
                }
                let refusal = e.refusal().map(|r| r.redirect);
                if refusal.is_some() {
                    last_answer = Instant::now();
                }
                // Cut off from every cluster master (not one answered, not even a
                // standby) while a standby group master exists: the cluster master
                // promotes the standby, so step down and send our agents there rather
                // than keep them where nobody hears their state changes.
                let masters = shared.masters();
                let cut_off = last_answer.elapsed() > settings.cluster_idle_timeout * 2;
                if cut_off && shared.is_active() && masters.len() > 1 {
                    warn!(group = %shared.group, "lost the cluster master with a standby in place; standing down");
                    let others: Vec<SocketAddr> = masters
                        .iter()
                        .copied()
                        .filter(|m| *m != advertise)
                        .collect();
                    for conn in shared.set_role(false, others) {
                        conn.close(
                            close::REPLACED,
                            "group master lost the cluster master; use the standby",
                        );
                    }
                }
                match refusal {
                    // A standby naming a leader that just failed to answer (its lease
                    // has not run out): ask again rather than go back to the dead one.
                    Some(leader) => {
                        targets.refused(leader);
                    }
                    None => targets.failed(),
                }
            }
        }
        // After a cluster master failover the new one makes whichever group master
        // registers first active: a standby lets the active one go first, so the
        // group keeps its master and its agents stay where they are.
        let wait = if shared.is_active() {
            backoff
        } else {
            backoff + STANDBY_YIELD
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Whether the `failures`th failure in a row to reach the cluster master is logged at
/// `warn`: the first ones, then at growing intervals (1, 2, 4, ... 64, then every 64th),
/// so a wrong address is reported at once and a long outage does not flood the log.
pub(crate) fn worth_logging(failures: u32) -> bool {
    const EVERY: u32 = 64;
    failures.is_power_of_two() && failures <= EVERY || failures.is_multiple_of(EVERY)
}

/// One connection's life. `Ok` only on shutdown.
#[allow(clippy::too_many_arguments)]
async fn link_session(
    endpoint: &glory_protocol::LinkEndpoint,
    identity: &LiveIdentity,
    renewer: &mut Renewer,
    shared: &Arc<Shared>,
    settings: &GroupMasterSettings,
    advertise: SocketAddr,
    target: SocketAddr,
    shutdown: &CancellationToken,
    established: &mut bool,
) -> Result<(), LinkError> {
    let timing = LinkTiming {
        idle_timeout: settings.cluster_idle_timeout,
        keep_alive: Some(settings.cluster_idle_timeout / 3),
        initial_rtt: glory_protocol::transport::CONTROL_INITIAL_RTT,
    };
    let config = client_config(identity.current().client_tls()?, timing)?;
    let conn = connect(
        endpoint,
        config,
        target,
        CLUSTER_MASTER_NAME,
        settings.request_timeout.min(settings.cluster_idle_timeout),
    )
    .await?;
    let hello = Hello::new(Role::GroupMaster, shared.group.clone());
    let control = client_hello(&conn, &hello, settings.max_frame, settings.request_timeout).await?;
    *established = true;
    let (mut send, recv) = control.split();
    send.send(&GroupToCluster::Register { listen: advertise })
        .await?;
    // A cluster master that (re)connects learns every active alert, not only changes.
    shared.monitor(Input::Resync);
    info!(group = %shared.group, cluster_master = %target, "connected to cluster master");

    let mut reader = recv.spawn_reader::<ClusterToGroup>();
    let mut report = tokio::time::interval(settings.report_interval);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = 'link: loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                send.finish();
                conn.close(close::SHUTDOWN, "group master shutting down");
                break Ok(());
            }
            _ = shared.changed.notified() => {
                let changes = shared.take_changes();
                if !changes.is_empty() {
                    debug!(group = %shared.group, count = changes.len(), "sending state changes");
                    if let Err(e) = send.send(&GroupToCluster::StateChanges(changes)).await {
                        break Err(e.into());
                    }
                }
                let (snapshots, processes) = shared.take_process_reports();
                for snap in snapshots {
                    let msg = GroupToCluster::ProcessSnapshot { node: snap.node, processes: snap.processes, address: snap.address };
                    if let Err(e) = send.send(&msg).await {
                        break 'link Err(e.into());
                    }
                }
                let out = shared.take_monitoring();
                if let Some(all) = out.snapshot {
                    if let Err(e) = send.send(&GroupToCluster::AlertSnapshot(all)).await {
                        break 'link Err(e.into());
                    }
                }
                if !out.alerts.is_empty() {
                    if let Err(e) = send.send(&GroupToCluster::Alerts(out.alerts)).await {
                        break 'link Err(e.into());
                    }
                }
                for answer in out.answers {
                    if let Err(e) = send.send(&GroupToCluster::MetricsAnswer(answer)).await {
                        break 'link Err(e.into());
                    }
                }
                if !processes.is_empty() {
                    if let Err(e) = send.send(&GroupToCluster::Processes(processes)).await {
                        break Err(e.into());
                    }
                }
                let setups = shared.take_setup_reports();
                if !setups.is_empty() {
                    if let Err(e) = send.send(&GroupToCluster::Setup(setups)).await {
                        break Err(e.into());
                    }
                }
                for (node, (csr_pem, serial)) in shared.take_renewals() {
                    if let Err(e) = send.send(&GroupToCluster::RenewNode { node, csr_pem, serial }).await {
                        break 'link Err(e.into());
                    }
                }
            }
            _ = tokio::time::sleep_until(renewer.due().into()) => {
                match renewer.request() {
                    Ok(csr_pem) => {
                        info!(group = %shared.group, "asking for our next certificate");
                        if let Err(e) = send.send(&GroupToCluster::Renew { csr_pem }).await {
                            break Err(e.into());
                        }
                    }
                    Err(e) => warn!(group = %shared.group, error = %e, "cannot make a certificate request"),
                }
            }
            _ = report.tick() => {
                if let Err(e) = send.send(&GroupToCluster::Report(shared.report())).await {
                    break Err(e.into());
                }
            }
            msg = reader.recv() => match msg {
                Some(Ok(Some(ClusterToGroup::Certificate { cert_pem }))) => {
                    renewed(identity, renewer, shared, settings, &cert_pem);
                }
                Some(Ok(Some(msg))) => handle(shared, msg),
                Some(Ok(None)) | None => break Err(LinkError::Closed),
                Some(Err(e)) => {
                    conn.close(close::PROTOCOL_ERROR, "bad frame");
                    break Err(LinkError::Frame(glory_protocol::FrameError::Decode(e)));
                }
            },
            e = conn.closed() => break Err(e.into()),
        }
    };
    drop(reader);
    result
}

/// Our next certificate arrived: present it from the next handshake on (agents and
/// the cluster master) and keep it where a restart finds it.
fn renewed(
    identity: &LiveIdentity,
    renewer: &mut Renewer,
    shared: &Shared,
    settings: &GroupMasterSettings,
    cert_pem: &str,
) {
    let next = match renewer.accept(&identity.current(), cert_pem) {
        Ok(next) => next,
        Err(e) => {
            warn!(group = %shared.group, error = %e, "certificate from the cluster master not taken");
            return;
        }
    };
    if let Some(path) = &settings.identity_file {
        if let Err(e) = crate::save_identity(path, &next) {
            // Serving goes on with the new certificate; a restart would find the old
            // one, still good until it expires.
            warn!(group = %shared.group, error = %e, "cannot save the renewed identity");
        }
    }
    match identity.replace(next) {
        Ok(()) => {
            info!(group = %shared.group, expires_ms = renewer.period().expires_ms(), "certificate renewed")
        }
        Err(e) => warn!(group = %shared.group, error = %e, "renewed certificate not usable"),
    }
}

fn handle(shared: &Shared, msg: ClusterToGroup) {
    let now = Instant::now();
    match msg {
        ClusterToGroup::Role { active, masters } => {
            let was = shared.is_active();
            let dropped = shared.set_role(active, masters);
            if was != active {
                info!(group = %shared.group, active, "group master role changed");
            }
            for conn in dropped {
                conn.close(
                    close::REPLACED,
                    "this group master stands by; use the active one",
                );
            }
        }
        ClusterToGroup::Members { members, revoked } => {
            info!(group = %shared.group, members = members.len(), "member list received");
            for conn in shared.sync_members(members, revoked, now) {
                conn.close(close::REMOVED, "node is no longer a member of this group");
            }
        }
        ClusterToGroup::MemberAdded(member) => shared.member_added(member, now),
        ClusterToGroup::Monitors(monitors) => shared.monitor(Input::Monitors(monitors)),
        ClusterToGroup::Metrics(query) => shared.monitor(Input::Query(query)),
        ClusterToGroup::ToAgent { node, mut msg } => {
            shared.through_proxy(&mut msg);
            if !shared.to_agent(&node, msg) {
                debug!(group = %shared.group, node_id = %node, "agent not connected; message dropped");
            }
        }
        ClusterToGroup::Certificate { .. } => {}
        ClusterToGroup::MemberRemoved { node, serial } => {
            info!(group = %shared.group, node_id = %node, "node removed");
            if let Some(conn) = shared.member_removed(&node, serial) {
                conn.close(close::REMOVED, "node was removed from the cluster");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn retries_are_logged_at_growing_intervals() {
        let logged: Vec<u32> = (1..=300).filter(|&n| super::worth_logging(n)).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64, 128, 192, 256]);
    }
}
