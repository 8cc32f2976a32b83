//! Node state changes as the pools see them: an event for watchers, and a wake-up for
//! the master reconciler when the node belongs to a pool.

use glory_protocol::NodeState;
use serde_json::json;

use crate::cluster::Cluster;

impl Cluster {
    /// A node changed state: tell its pool's watchers, and wake the master reconciler.
    pub(crate) fn node_transitioned(&self, node: &str, from: NodeState, to: NodeState) {
        self.events.emit(
            "node_state",
            None,
            json!({"node": node, "from": from, "to": to}),
        );
        let kind = match to {
            NodeState::Up => "node_up",
            NodeState::Down | NodeState::Left => "node_down",
            NodeState::Unreachable => "node_unreachable",
            NodeState::Suspect | NodeState::Joining => return,
        };
        let book = self.pools.book();
        if let Some(pool) = book.owner(node).and_then(|p| book.get(p)) {
            self.events.emit(
                kind,
                Some((&pool.name, &pool.tenant)),
                json!({"node": node, "state": to}),
            );
            self.pool_changed.notify_one();
        }
    }
}
