//! Node states: the transitions group masters report, applied in memory at once and
//! queued to the status writer, which coalesces them per node and writes them in
//! batches; group reports (loads, heartbeat counts, inventories); transition counts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use glory_keymaster::schema::{self, NodeRecord, NodeStatus};
use glory_keymaster::{Txn, TxnOp};
use glory_protocol::{GroupReport, NodeState, StateChange};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{Cluster, TXN_CHUNK};

impl Cluster {
    /// Apply a group master's state transitions.
    pub(crate) fn apply_changes(&self, group: &str, changes: Vec<StateChange>) {
        let mut happened = Vec::new();
        let mut reg = self.write();
        for change in changes {
            let Some(node) = reg.nodes.get_mut(&change.node) else {
                continue;
            };
            if node.record.group != group {
                warn!(node_id = %change.node, group = %group, "state change for a node of another group ignored");
                continue;
            }
            if node
                .status
                .transition(change.to, change.at_ms, &change.reason)
            {
                self.count_transition(change.to);
                if change.to == NodeState::Down {
                    warn!(node_id = %change.node, group = %group, "node down");
                } else if change.from == NodeState::Joining && change.to == NodeState::Up {
                    debug!(node_id = %change.node, group = %group, "node joined");
                } else {
                    info!(node_id = %change.node, group = %group, from = %change.from, to = %change.to, "node state changed");
                }
                let _ = self
                    .status_tx
                    .send((change.node.clone(), node.status.clone()));
                happened.push((change.node, change.from, change.to));
            }
        }
        drop(reg);
        for (node, from, to) in happened {
            self.node_transitioned(&node, from, to);
        }
    }

    /// Apply a group report: loads and heartbeat statistics (memory only), inventory
    /// changes (written).
    pub(crate) async fn apply_report(&self, group: &str, report: GroupReport) {
        let now = glory_protocol::now_ms();
        let mut changed_records = Vec::new();
        {
            let mut reg = self.write();
            if let Some(entry) = reg.groups.get_mut(group) {
                entry.heartbeats_received = report.heartbeats_received;
                entry.heartbeats_lost = report.heartbeats_lost;
                entry.samples_ingested = report.samples_ingested;
                entry.samples_dropped = report.samples_dropped;
                entry.stats_store_bytes = report.stats_store_bytes;
                entry.last_report_ms = now;
            }
            for load in report.loads {
                if let Some(node) = reg.nodes.get_mut(&load.node) {
                    if node.record.group == group {
                        node.load = Some(load.load);
                        node.load_ms = now;
                    }
                }
            }
            for (id, inventory) in report.inventories {
                if let Some(node) = reg.nodes.get_mut(&id) {
                    if node.record.group == group && node.record.inventory != inventory {
                        node.record.hostname = inventory.hostname.clone();
                        node.record.inventory = inventory;
                        // One put per node: a key twice in one transaction is refused.
                        changed_records.retain(|r: &NodeRecord| r.id != id);
                        changed_records.push(node.record.clone());
                    }
                }
            }
        }
        for chunk in changed_records.chunks(TXN_CHUNK) {
            let txn = Txn {
                success: chunk
                    .iter()
                    .map(|r| TxnOp::put(schema::node_key(&r.id), schema::encode(r)))
                    .collect(),
                ..Default::default()
            };
            if let Err(e) = self.km_txn(txn).await {
                warn!(group = %group, error = %e, "could not store changed inventories");
            }
        }
    }

    /// Count a transition into `to` (see `transition_counts`).
    pub(super) fn count_transition(&self, to: NodeState) {
        if let Some(i) = NodeState::ALL.iter().position(|s| *s == to) {
            self.transitions[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Transitions into each state since this master started.
    pub fn transition_counts(&self) -> Vec<(NodeState, u64)> {
        NodeState::ALL
            .iter()
            .zip(&self.transitions)
            .map(|(s, n)| (*s, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// A node's current state, if it exists.
    pub fn node_state(&self, id: &str) -> Option<NodeState> {
        self.read().nodes.get(id).map(|n| n.status.state)
    }
}

/// Write queued status changes, coalesced per node and batched per transaction, until
/// the channel closes. Failed writes are retried with backoff (the key master may be
/// briefly away); memory already has the new state.
pub(crate) async fn status_writer(
    cluster: Arc<Cluster>,
    mut rx: mpsc::UnboundedReceiver<(String, NodeStatus)>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut pending: HashMap<String, NodeStatus> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    let mut stopping = false;
    loop {
        if pending.is_empty() {
            if stopping {
                return;
            }
            tokio::select! {
                item = rx.recv() => match item {
                    Some((id, status)) => {
                        pending.insert(id, status);
                    }
                    None => return,
                },
                _ = shutdown.cancelled() => {
                    // Flush what is queued, once, then stop.
                    stopping = true;
                }
            }
        }
        while let Ok((id, status)) = rx.try_recv() {
            pending.insert(id, status);
        }
        let ids: Vec<String> = pending.keys().take(TXN_CHUNK).cloned().collect();
        // Nodes removed meanwhile must not be resurrected by a late status write.
        let live: HashSet<String> = {
            let reg = cluster.read();
            ids.iter()
                .filter(|id| reg.nodes.contains_key(*id))
                .cloned()
                .collect()
        };
        let ops: Vec<TxnOp> = ids
            .iter()
            .filter(|id| live.contains(*id))
            .filter_map(|id| {
                pending
                    .get(id)
                    .map(|s| TxnOp::put(schema::node_status_key(id), schema::encode(s)))
            })
            .collect();
        let result = if ops.is_empty() {
            Ok(())
        } else {
            cluster
                .km_txn(Txn {
                    success: ops,
                    ..Default::default()
                })
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => {
                for id in &ids {
                    pending.remove(id);
                }
                backoff = Duration::from_millis(100);
            }
            Err(e) if stopping => {
                warn!(error = %e, pending = pending.len(), "node states not written before shutdown");
                return;
            }
            Err(e) => {
                warn!(error = %e, pending = pending.len(), "cannot write node states; retrying");
                // A shutdown meanwhile gets one last attempt, not a wait for the key
                // master (or for a leadership this master lost).
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => stopping = true,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
