//! Node state changes as the pools see them: an event for watchers, and a wake-up for
//! the master reconciler when the node belongs to a pool.

use glory_protocol::NodeState;

use crate::cluster::Cluster;
use crate::events::EventData;

impl Cluster {
    /// A node changed state: tell its pool's watchers, and wake the master reconciler.
    pub(crate) fn node_transitioned(&self, node: &str, from: NodeState, to: NodeState) {
        self.events.emit(
            None,
            EventData::NodeState {
                node: node.to_string(),
                from,
                to,
            },
        );
        let pool_event: fn(String, NodeState) -> EventData = match to {
            NodeState::Up => |node, state| EventData::NodeUp { node, state },
            NodeState::Down | NodeState::Left => |node, state| EventData::NodeDown { node, state },
            NodeState::Unreachable => |node, state| EventData::NodeUnreachable { node, state },
            NodeState::Suspect | NodeState::Joining => return,
        };
        let book = self.pools.book();
        if let Some(pool) = book.owner(node).and_then(|p| book.get(p)) {
            self.events.emit(
                Some((&pool.name, &pool.tenant)),
                pool_event(node.to_string(), to),
            );
            self.pool_changed.notify_one();
            self.services.changed.notify_one();
        }
    }
}
