//! The cluster master's in-memory view: every node with its record, status and last
//! load, and every group with its live link. The key master holds the durable part;
//! this is rebuilt from it at start and kept in step as changes are written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use glory_keymaster::schema::{GroupRecord, NodeRecord, NodeStatus, RemovedRecord};
use glory_protocol::{ClusterToGroup, Load, Member, NodeState};
use tokio::sync::mpsc;

use crate::assign::{node_subnets, GroupLoad};

pub(crate) struct NodeEntry {
    pub record: NodeRecord,
    pub status: NodeStatus,
    pub load: Option<Load>,
    pub load_ms: u64,
}

impl NodeEntry {
    pub fn member(&self) -> Member {
        Member {
            node: self.record.id.clone(),
            serial: self.record.serial.clone(),
            previous_serial: Some(self.record.previous_serial.clone()).filter(|s| !s.is_empty()),
            state: self.status.state,
        }
    }
}

/// A connected group master.
pub(crate) struct GroupLink {
    pub session: u64,
    /// Where this group master serves agents.
    pub listen: SocketAddr,
    pub tx: mpsc::Sender<ClusterToGroup>,
    pub conn: glory_protocol::Link,
    pub since_ms: u64,
}

pub(crate) struct GroupEntry {
    pub record: GroupRecord,
    /// The active group master.
    pub link: Option<GroupLink>,
    /// Standby group masters, promoted in order when the active one is lost.
    pub standbys: Vec<GroupLink>,
    pub members: BTreeSet<String>,
    pub subnets: HashMap<String, usize>,
    pub heartbeats_received: u64,
    pub heartbeats_lost: u64,
    /// Monitoring samples the group master stored, and batches it dropped.
    pub samples_ingested: u64,
    pub samples_dropped: u64,
    /// Bytes its statistics store holds.
    pub stats_store_bytes: u64,
    pub last_report_ms: u64,
}

impl GroupEntry {
    pub fn new(record: GroupRecord) -> Self {
        GroupEntry {
            record,
            link: None,
            standbys: Vec::new(),
            members: BTreeSet::new(),
            subnets: HashMap::new(),
            heartbeats_received: 0,
            heartbeats_lost: 0,
            samples_ingested: 0,
            samples_dropped: 0,
            stats_store_bytes: 0,
            last_report_ms: 0,
        }
    }

    /// Tell the group master something; a full queue means the link is stuck, and the
    /// resync on its reconnect will carry the news instead.
    /// Tell every group master of this group (active and standbys) where the masters are.
    pub fn announce_roles(&self, masters: &[SocketAddr]) {
        let links = self
            .link
            .iter()
            .map(|l| (l, true))
            .chain(self.standbys.iter().map(|l| (l, false)));
        for (link, active) in links {
            let _ = link.tx.try_send(ClusterToGroup::Role {
                active,
                masters: masters.to_vec(),
            });
        }
    }

    pub fn notify(&self, msg: ClusterToGroup) {
        if let Some(link) = &self.link {
            if link.tx.try_send(msg).is_err() {
                tracing::warn!(group = %self.record.id, "group master queue full; it will resync on reconnect");
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    pub nodes: BTreeMap<String, NodeEntry>,
    pub groups: BTreeMap<String, GroupEntry>,
    /// Server identity -> node id.
    pub identities: HashMap<String, String>,
    /// serial -> node of removed nodes.
    pub revoked: BTreeMap<String, String>,
    /// Identities of removed nodes, refused at enrollment until re-admitted.
    pub removed: BTreeMap<String, RemovedRecord>,
}

impl Registry {
    pub fn insert_node(&mut self, entry: NodeEntry) {
        let id = entry.record.id.clone();
        self.identities.insert(entry.record.identity(), id.clone());
        if let Some(group) = self.groups.get_mut(&entry.record.group) {
            group.members.insert(id.clone());
            for subnet in node_subnets(&entry.record.inventory) {
                *group.subnets.entry(subnet).or_insert(0) += 1;
            }
        }
        self.nodes.insert(id, entry);
    }

    pub fn remove_node(&mut self, id: &str) -> Option<NodeEntry> {
        let entry = self.nodes.remove(id)?;
        let identity = entry.record.identity();
        if self.identities.get(&identity).is_some_and(|n| n == id) {
            self.identities.remove(&identity);
        }
        if let Some(group) = self.groups.get_mut(&entry.record.group) {
            group.members.remove(id);
            for subnet in node_subnets(&entry.record.inventory) {
                if let Some(n) = group.subnets.get_mut(&subnet) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        Some(entry)
    }

    pub fn group_loads(&self) -> Vec<GroupLoad> {
        self.groups
            .values()
            .map(|g| GroupLoad {
                id: g.record.id.clone(),
                members: g.members.len(),
                subnets: g.subnets.clone(),
                connected: g.link.is_some(),
            })
            .collect()
    }

    pub fn counts(&self) -> BTreeMap<NodeState, usize> {
        let mut counts = BTreeMap::new();
        for node in self.nodes.values() {
            *counts.entry(node.status.state).or_insert(0) += 1;
        }
        counts
    }

    pub fn group_counts(&self, group: &GroupEntry) -> BTreeMap<NodeState, usize> {
        let mut counts = BTreeMap::new();
        for id in &group.members {
            if let Some(node) = self.nodes.get(id) {
                *counts.entry(node.status.state).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Where a group's masters serve agents, active first: the live links, or the last
    /// recorded master while none is connected.
    pub fn group_master_addrs(&self, group: &str) -> Vec<SocketAddr> {
        let Some(g) = self.groups.get(group) else {
            return Vec::new();
        };
        let mut out: Vec<SocketAddr> = Vec::new();
        let live = g.link.iter().chain(g.standbys.iter()).map(|l| l.listen);
        for addr in live.chain(g.record.master_addr) {
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        out
    }
}
