//! Which group master of a group leads: pure decisions over the group's links, so the
//! rules are unit-tested without connections. The first to register leads; a master
//! that registers again from the active master's address replaces it (a reconnect);
//! the others stand by, in the order they came. When the active link is lost, the
//! first standby is promoted and the group's live nodes become `unreachable` (never
//! `down`: nobody can hear them until an agent reaches the new master).

use std::net::SocketAddr;

use glory_protocol::NodeState;

/// Whether a group master registering at `listen` becomes the active one, given the
/// active link's address (None: the group has no active master).
pub(crate) fn registers_as_active(active: Option<SocketAddr>, listen: SocketAddr) -> bool {
    active.is_none_or(|a| a == listen)
}

/// What the loss of link `session` means for its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkLoss {
    /// A standby went away: forget it.
    Standby,
    /// An older link of a master that has a newer one in place: nothing changes.
    Stale,
    /// The active master is lost: promote the standby at this index, if there is one.
    Active { promote: Option<usize> },
}

/// Judge the loss of link `session`, given the active link's session and the
/// standbys' sessions in the order they registered.
pub(crate) fn on_link_lost(active: Option<u64>, standbys: &[u64], session: u64) -> LinkLoss {
    if standbys.contains(&session) {
        LinkLoss::Standby
    } else if active != Some(session) {
        LinkLoss::Stale
    } else {
        LinkLoss::Active {
            promote: (!standbys.is_empty()).then_some(0),
        }
    }
}

/// Whether a node in `state` becomes `unreachable` when its group master is lost: the
/// states that said the node was heard from (or about to be).
pub(crate) fn unreachable_when_master_lost(state: NodeState) -> bool {
    matches!(
        state,
        NodeState::Up | NodeState::Suspect | NodeState::Joining
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn the_first_leads_and_a_reconnect_replaces_itself() {
        assert!(registers_as_active(None, a(1)), "first of the group");
        assert!(
            registers_as_active(Some(a(1)), a(1)),
            "the active one again"
        );
        assert!(
            !registers_as_active(Some(a(1)), a(2)),
            "a second one stands by"
        );
    }

    #[test]
    fn losses_are_told_apart() {
        let cases = [
            ("a standby", Some(1), vec![2, 3], 3, LinkLoss::Standby),
            ("an old link", Some(4), vec![2], 1, LinkLoss::Stale),
            ("no active at all", None, vec![2], 1, LinkLoss::Stale),
            (
                "active, standbys",
                Some(1),
                vec![2, 3],
                1,
                LinkLoss::Active { promote: Some(0) },
            ),
            (
                "active, alone",
                Some(1),
                vec![],
                1,
                LinkLoss::Active { promote: None },
            ),
        ];
        for (what, active, standbys, lost, want) in cases {
            assert_eq!(on_link_lost(active, &standbys, lost), want, "{what}");
        }
    }

    #[test]
    fn only_heard_nodes_become_unreachable() {
        for (state, want) in [
            (NodeState::Up, true),
            (NodeState::Suspect, true),
            (NodeState::Joining, true),
            (NodeState::Down, false),
            (NodeState::Left, false),
            (NodeState::Unreachable, false),
        ] {
            assert_eq!(unreachable_when_master_lost(state), want, "{state:?}");
        }
    }
}
