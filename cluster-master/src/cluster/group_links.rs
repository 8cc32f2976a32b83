//! Links to group masters: the first of a group to register leads and gets the
//! group's members, later ones stand by; a lost active master makes its live nodes
//! `unreachable` and the first standby is promoted. Agents that lost their group
//! master ask where it is led now.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use glory_keymaster::schema::{self, GroupRecord};
use glory_keymaster::{KeyMasterError, Txn, TxnOp};
use glory_protocol::{ClusterToGroup, NodeState};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Cluster;
use crate::group_roles::{
    on_link_lost, registers_as_active, takeover_grace, unreachable_when_master_lost, LinkLoss,
};
use crate::registry::{GroupLink, NodeEntry, Registry};

impl Cluster {
    /// A group master registered. The first of a group leads; later ones stand by
    /// (a re-registration from the active master's own address replaces its old link).
    /// Returns the session id and the messages to send it first.
    pub(crate) async fn group_connected(
        &self,
        group: &str,
        listen: SocketAddr,
        conn: glory_protocol::Link,
        tx: mpsc::Sender<ClusterToGroup>,
    ) -> Result<(u64, Vec<ClusterToGroup>), KeyMasterError> {
        let in_grace = self.took_over.elapsed() < takeover_grace(self.settings.group_idle_timeout);
        let becomes_active = {
            let reg = self.read();
            let g = reg.groups.get(group);
            registers_as_active(
                g.and_then(|g| g.link.as_ref().map(|l| l.listen)),
                listen,
                g.and_then(|g| g.record.master_addr),
                in_grace,
            )
        };
        let recorded = self
            .ensure_group(group, becomes_active.then_some(listen))
            .await;
        if let Err(e) = recorded {
            // Without the key master a known group keeps working from memory.
            if !self.read().groups.contains_key(group) {
                return Err(e);
            }
            warn!(group = %group, error = %e, "group master address not recorded; serving from memory");
        }
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        {
            let mut remotes = self
                .group_master_remotes
                .write()
                .unwrap_or_else(|p| p.into_inner());
            // Bounded: a few per group is normal; a flood of registrations is not.
            if remotes.len() < 4096 {
                remotes.insert(conn.remote_address());
            }
        }
        let link = GroupLink {
            session,
            listen,
            tx,
            conn,
            since_ms: glory_protocol::now_ms(),
        };
        let mut reg = self.write();
        let Some(entry) = reg.groups.get_mut(group) else {
            return Err(KeyMasterError::Internal(format!("group {group} vanished")));
        };
        // A master that comes back replaces its own stale links.
        entry.standbys.retain(|s| s.listen != listen);
        let active = registers_as_active(
            entry.link.as_ref().map(|l| l.listen),
            listen,
            entry.record.master_addr,
            in_grace,
        );
        if active {
            if let Some(old) = entry.link.replace(link) {
                old.conn.close(
                    glory_protocol::close::REPLACED,
                    "replaced by a newer connection",
                );
            }
        } else {
            entry.standbys.push(link);
        }
        let masters = reg.group_master_addrs(group);
        let mut first = vec![ClusterToGroup::Role {
            active,
            masters: masters.clone(),
        }];
        if active {
            first.push(self.members_message(&reg, group));
        }
        drop(reg);
        if active {
            first.push(self.monitors_for_new_link(group));
        }
        let reg = self.read();
        if let Some(entry) = reg.groups.get(group) {
            // Everyone else of the group learns the new list of masters.
            for other in entry
                .link
                .iter()
                .chain(entry.standbys.iter())
                .filter(|l| l.session != session)
            {
                let is_active = entry
                    .link
                    .as_ref()
                    .is_some_and(|l| l.session == other.session);
                let _ = other.tx.try_send(ClusterToGroup::Role {
                    active: is_active,
                    masters: masters.clone(),
                });
            }
        }
        info!(group = %group, %listen, active, "group master connected");
        Ok((session, first))
    }

    fn members_message(&self, reg: &Registry, group: &str) -> ClusterToGroup {
        let members: Vec<_> = reg
            .groups
            .get(group)
            .map(|g| {
                g.members
                    .iter()
                    .filter_map(|id| reg.nodes.get(id))
                    .map(NodeEntry::member)
                    .collect()
            })
            .unwrap_or_default();
        let revoked: Vec<String> = reg.revoked.keys().cloned().collect();
        ClusterToGroup::Members { members, revoked }
    }

    /// Whether link `session` is its group's active one: only the active group master
    /// speaks for the group's nodes. A master that was cut off and stood down may come
    /// back (as a standby) with the judgements of a detector that no longer hears the
    /// nodes, queued while it was away.
    pub(crate) fn is_active_link(&self, group: &str, session: u64) -> bool {
        self.read()
            .groups
            .get(group)
            .and_then(|entry| entry.link.as_ref())
            .is_some_and(|link| link.session == session)
    }

    /// A group master link ended. A lost standby is just forgotten. A lost active
    /// master makes its live nodes `unreachable` and promotes the first standby;
    /// returns the promoted master's address, to be recorded.
    pub(crate) fn group_disconnected(&self, group: &str, session: u64) -> Option<SocketAddr> {
        let now = glory_protocol::now_ms();
        let mut reg = self.write();
        let entry = reg.groups.get_mut(group)?;
        let standbys: Vec<u64> = entry.standbys.iter().map(|s| s.session).collect();
        let promote = match on_link_lost(entry.link.as_ref().map(|l| l.session), &standbys, session)
        {
            LinkLoss::Stale => return None, // an older link; a newer one is in place
            LinkLoss::Active { promote } => promote,
            LinkLoss::Standby => {
                entry.standbys.retain(|s| s.session != session);
                info!(group = %group, "standby group master disconnected");
                let masters = reg.group_master_addrs(group);
                if let Some(entry) = reg.groups.get(group) {
                    entry.announce_roles(&masters);
                }
                return None;
            }
        };
        entry.link = None;
        let promoted = promote.map(|i| entry.standbys.remove(i));
        let members: Vec<String> = entry.members.iter().cloned().collect();
        let mut changed = 0;
        let mut happened = Vec::new();
        for id in members {
            if let Some(node) = reg.nodes.get_mut(&id) {
                if unreachable_when_master_lost(node.status.state)
                    && node.status.transition(
                        NodeState::Unreachable,
                        now,
                        "group master unreachable",
                    )
                {
                    changed += 1;
                    if let Some(prev) = node.status.history.iter().rev().nth(1) {
                        happened.push((id.clone(), prev.state));
                    }
                    self.count_transition(NodeState::Unreachable);
                    let _ = self.status_tx.send((id, node.status.clone()));
                }
            }
        }
        let notify_pools = |happened: Vec<(String, NodeState)>| {
            for (node, from) in happened {
                self.node_transitioned(&node, from, NodeState::Unreachable);
            }
        };
        let Some(promoted) = promoted else {
            drop(reg);
            notify_pools(happened);
            warn!(group = %group, nodes_unreachable = changed, "group master disconnected; no standby");
            return None;
        };
        let addr = promoted.listen;
        let members = self.members_message(&reg, group);
        if let Some(entry) = reg.groups.get_mut(group) {
            entry.record.master_addr = Some(addr);
            entry.link = Some(promoted);
        }
        let masters = reg.group_master_addrs(group);
        if let Some(entry) = reg.groups.get(group) {
            entry.announce_roles(&masters);
            entry.notify(members);
        }
        drop(reg);
        notify_pools(happened);
        warn!(group = %group, nodes_unreachable = changed, promoted = %addr, "group master lost; standby promoted");
        Some(addr)
    }

    /// The takeover's grace is over: a group whose recorded master did not come back
    /// is led by its first standby. The promoted masters, to be recorded.
    pub(crate) fn promote_after_grace(&self) -> Vec<(String, SocketAddr)> {
        let mut reg = self.write();
        let waiting: Vec<String> = reg
            .groups
            .iter()
            .filter(|(_, g)| g.link.is_none() && !g.standbys.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        let mut promoted = Vec::new();
        for group in waiting {
            let Some(entry) = reg.groups.get_mut(&group) else {
                continue;
            };
            let link = entry.standbys.remove(0);
            let addr = link.listen;
            entry.record.master_addr = Some(addr);
            entry.link = Some(link);
            let members = self.members_message(&reg, &group);
            let masters = reg.group_master_addrs(&group);
            if let Some(entry) = reg.groups.get(&group) {
                entry.announce_roles(&masters);
                entry.notify(members);
            }
            warn!(group = %group, promoted = %addr, "the recorded group master did not come back after the takeover; standby promoted");
            promoted.push((group, addr));
        }
        promoted
    }

    /// Record a promoted standby as the group's master (after `group_disconnected`).
    pub(crate) async fn record_promotion(&self, group: &str, addr: SocketAddr) {
        let record = self.read().groups.get(group).map(|g| GroupRecord {
            master_addr: Some(addr),
            ..g.record.clone()
        });
        if let Some(record) = record {
            let txn = Txn {
                success: vec![TxnOp::put(
                    schema::group_key(group),
                    schema::encode(&record),
                )],
                ..Default::default()
            };
            if let Err(e) = self.km_txn(txn).await {
                warn!(group = %group, error = %e, "could not record the promoted group master; kept in memory");
            }
        }
    }

    /// Where a node's group is led now (agents that lost their group master ask).
    pub(crate) fn locate(&self, node: &str) -> Option<glory_protocol::GroupLocation> {
        let reg = self.read();
        let group = reg.nodes.get(node)?.record.group.clone();
        let masters = reg.group_master_addrs(&group);
        Some(glory_protocol::GroupLocation { group, masters })
    }

    /// Forget every group master link (shutdown): their connection handles would keep
    /// the endpoint, and its address, alive.
    pub(crate) fn drop_links(&self) {
        for group in self.write().groups.values_mut() {
            group.link = None;
        }
    }

    /// How many group masters (active and standby) of `group` are connected now.
    pub fn group_master_count(&self, group: &str) -> usize {
        self.read()
            .groups
            .get(group)
            .map(|g| g.link.iter().count() + g.standbys.len())
            .unwrap_or(0)
    }

    /// Whether `remote` is where a group master's link (active, standby, or one seen
    /// since this master started) comes from.
    pub(crate) fn is_group_master_address(&self, remote: SocketAddr) -> bool {
        self.group_master_remotes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&remote)
    }

    /// How many group masters are connected now.
    pub fn connected_groups(&self) -> usize {
        self.read()
            .groups
            .values()
            .filter(|g| g.link.is_some())
            .count()
    }
}
