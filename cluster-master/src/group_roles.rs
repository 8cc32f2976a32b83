//! Which group master of a group leads: pure decisions over the group's links, so the
//! rules are unit-tested without connections. The first to register leads; a master
//! that registers again from the active master's address replaces it (a reconnect);
//! the others stand by, in the order they came. When the active link is lost, the
//! first standby is promoted and the group's live nodes become `unreachable` (never
//! `down`: nobody can hear them until an agent reaches the new master).
//!
//! After a cluster master takes over, the group's recorded master keeps its place for
//! [`takeover_grace`]: a standby that notices the old cluster master's death first must
//! not take the group from a healthy master (its agents would all have to move). A
//! recorded master that does not come back within the grace loses its place to the
//! first standby.

use std::net::SocketAddr;
use std::time::Duration;

use glory_protocol::NodeState;

/// How long after a takeover a group's recorded master is waited for: a group
/// master notices a dead cluster master within its link's idle timeout, then retries.
pub(crate) fn takeover_grace(group_idle_timeout: Duration) -> Duration {
    group_idle_timeout + Duration::from_secs(2)
}

/// Whether a group master registering at `listen` becomes the active one, given the
/// active link's address (None: the group has no active master), the group's recorded
/// master, and whether the takeover's grace is still running.
pub(crate) fn registers_as_active(
    active: Option<SocketAddr>,
    listen: SocketAddr,
    recorded: Option<SocketAddr>,
    in_grace: bool,
) -> bool {
    match active {
        Some(a) => a == listen,
        None => !in_grace || recorded.is_none_or(|r| r == listen),
    }
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
        assert!(
            registers_as_active(None, a(1), None, false),
            "first of the group"
        );
        assert!(
            registers_as_active(Some(a(1)), a(1), None, false),
            "the active one again"
        );
        assert!(
            !registers_as_active(Some(a(1)), a(2), None, false),
            "a second one stands by"
        );
    }

    #[test]
    fn after_a_takeover_the_recorded_master_keeps_its_place_for_the_grace() {
        // The standby noticed first: it waits while the grace runs.
        assert!(!registers_as_active(None, a(2), Some(a(1)), true));
        assert!(registers_as_active(None, a(1), Some(a(1)), true));
        // A new group (nothing recorded), or the grace is over: the first leads.
        assert!(registers_as_active(None, a(2), None, true));
        assert!(registers_as_active(None, a(2), Some(a(1)), false));
        // An active link decides as before.
        assert!(!registers_as_active(Some(a(1)), a(2), Some(a(2)), true));
        assert_eq!(
            takeover_grace(Duration::from_millis(3000)),
            Duration::from_secs(5)
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
