//! The verdicts of the component master reconciler, as pure functions of the facts it
//! gathers and `now`: whether a pool's master can go on, whether a start is due again,
//! whether a failed pool node is due for replacement. `master.rs` gathers the facts
//! under their locks and acts on the answers.

use std::time::{Duration, Instant};

use glory_protocol::{NodeState, ProcessReport, ProcessState};

/// A master whose node is unreachable (its group master is lost) is kept this long: a
/// standby group master usually takes over within a second or two.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(10);
/// A start not confirmed by the agent is sent again after this long.
const START_RETRY: Duration = Duration::from_secs(3);

/// Why the current master cannot go on.
pub(super) enum Trouble {
    /// Its node is gone, down, unreachable, or no longer a candidate or member: any
    /// live candidate may take over.
    Node(String),
    /// Its process keeps failing (or ended for good): another candidate that has not
    /// failed with this spec may take over; if none, the master stays.
    Process(String),
}

/// What the verdict on a pool's master looks at.
pub(super) struct MasterFacts<'a> {
    /// The master's node is still a member of the pool.
    pub in_pool: bool,
    /// And still one of its candidates.
    pub candidate: bool,
    /// The node's state and since when (ms), if the node exists.
    pub node: Option<(NodeState, u64)>,
    /// Its agent's newest report on the master's process of this epoch.
    pub process: Option<&'a ProcessReport>,
}

/// Why a pool's master cannot go on at `now_ms`, if it cannot. Pure: an unreachable
/// node is given [`UNREACHABLE_GRACE`] (its standby group master usually takes over
/// within seconds), and a process its agent is restarting is left to it.
pub(super) fn master_verdict(facts: MasterFacts<'_>, now_ms: u64) -> Option<Trouble> {
    if !facts.in_pool {
        return Some(Trouble::Node("node left the pool".into()));
    }
    if !facts.candidate {
        return Some(Trouble::Node("no longer a candidate".into()));
    }
    match facts.node {
        None => return Some(Trouble::Node("node removed".into())),
        Some((NodeState::Down, _)) => return Some(Trouble::Node("node down".into())),
        Some((NodeState::Left, _)) => return Some(Trouble::Node("node left".into())),
        Some((NodeState::Unreachable, since))
            if now_ms.saturating_sub(since) > UNREACHABLE_GRACE.as_millis() as u64 =>
        {
            return Some(Trouble::Node("node unreachable".into()))
        }
        _ => {}
    }
    let r = facts.process.filter(|r| r.state != ProcessState::Running)?;
    let why = r
        .last_exit
        .as_ref()
        .map(|e| e.detail.as_str())
        .filter(|d| !d.is_empty())
        .unwrap_or(if r.detail.is_empty() {
            "no detail"
        } else {
            &r.detail
        });
    if r.failing {
        Some(Trouble::Process(format!(
            "master process failing ({} quick failures, last: {why})",
            r.failures
        )))
    } else if r.restart_in_ms.is_none() {
        // Not restarted by its agent (an agent from before restarts, or stopped).
        Some(Trouble::Process(format!("master process ended: {why}")))
    } else {
        None // its agent restarts it
    }
}

/// Whether a start of the master of `epoch` should be sent (again) at `now`: none was
/// sent for this epoch, or the last one went unconfirmed for [`START_RETRY`].
pub(super) fn start_due(sent: Option<(u64, Instant)>, epoch: u64, now: Instant) -> bool {
    sent.is_none_or(|(sent_epoch, at)| {
        sent_epoch != epoch || now.saturating_duration_since(at) > START_RETRY
    })
}

/// Whether a failed pool node (down or left since `since_ms`) is due for replacement at
/// `now_ms`, after the pool's `replace_delay_ms`.
pub(super) fn replacement_due(
    state: NodeState,
    since_ms: u64,
    now_ms: u64,
    replace_delay_ms: u64,
) -> bool {
    matches!(state, NodeState::Down | NodeState::Left)
        && now_ms.saturating_sub(since_ms) >= replace_delay_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use glory_protocol::ProcessExit;

    fn report(state: ProcessState, failing: bool, restart_in_ms: Option<u64>) -> ProcessReport {
        ProcessReport {
            failing,
            restart_in_ms,
            last_exit: Some(ProcessExit {
                detail: "exit status: 3".into(),
                ..Default::default()
            }),
            ..ProcessReport::new(crate::pools::process_id("p"), 1, state)
        }
    }

    fn verdict(facts: MasterFacts<'_>, now_ms: u64) -> Option<String> {
        master_verdict(facts, now_ms).map(|t| match t {
            Trouble::Node(why) => format!("node: {why}"),
            Trouble::Process(why) => format!("process: {why}"),
        })
    }

    /// What a case shows; in pool, candidate, node state, process report, now (ms);
    /// the verdict wanted.
    type Case<'a> = (
        &'static str,
        bool,
        bool,
        Option<(NodeState, u64)>,
        Option<&'a ProcessReport>,
        u64,
        Option<&'static str>,
    );

    #[test]
    fn the_master_verdict_follows_node_and_process_facts() {
        let grace = UNREACHABLE_GRACE.as_millis() as u64;
        let running = report(ProcessState::Running, false, None);
        let restarting = report(ProcessState::Exited { code: Some(3) }, false, Some(1000));
        let failing = report(ProcessState::Exited { code: Some(3) }, true, Some(4000));
        let ended = report(ProcessState::Exited { code: Some(3) }, false, None);
        let up = Some((NodeState::Up, 0));
        let cases: Vec<Case<'_>> = vec![
            ("healthy", true, true, up, Some(&running), 5, None),
            ("not confirmed yet", true, true, up, None, 5, None),
            (
                "left the pool",
                false,
                true,
                up,
                Some(&running),
                5,
                Some("node: node left the pool"),
            ),
            (
                "not a candidate",
                true,
                false,
                up,
                Some(&running),
                5,
                Some("node: no longer a candidate"),
            ),
            (
                "node removed",
                true,
                true,
                None,
                Some(&running),
                5,
                Some("node: node removed"),
            ),
            (
                "node down",
                true,
                true,
                Some((NodeState::Down, 0)),
                Some(&running),
                5,
                Some("node: node down"),
            ),
            (
                "node left",
                true,
                true,
                Some((NodeState::Left, 0)),
                None,
                5,
                Some("node: node left"),
            ),
            (
                "unreachable within grace",
                true,
                true,
                Some((NodeState::Unreachable, 100)),
                Some(&running),
                100 + grace,
                None,
            ),
            (
                "unreachable past grace",
                true,
                true,
                Some((NodeState::Unreachable, 100)),
                Some(&running),
                101 + grace,
                Some("node: node unreachable"),
            ),
            (
                "agent restarting it",
                true,
                true,
                up,
                Some(&restarting),
                5,
                None,
            ),
            (
                "failing",
                true,
                true,
                up,
                Some(&failing),
                5,
                Some("process: master process failing (0 quick failures, last: exit status: 3)"),
            ),
            (
                "ended, no restart",
                true,
                true,
                up,
                Some(&ended),
                5,
                Some("process: master process ended: exit status: 3"),
            ),
        ];
        for (what, in_pool, candidate, node, process, now, want) in cases {
            let facts = MasterFacts {
                in_pool,
                candidate,
                node,
                process,
            };
            assert_eq!(verdict(facts, now).as_deref(), want, "{what}");
        }
    }

    #[test]
    fn starts_are_repeated_after_the_retry_time_and_for_a_new_epoch() {
        let t0 = Instant::now();
        assert!(start_due(None, 1, t0), "never sent");
        assert!(
            !start_due(Some((1, t0)), 1, t0 + START_RETRY),
            "sent just now"
        );
        assert!(start_due(
            Some((1, t0)),
            1,
            t0 + START_RETRY + Duration::from_millis(1)
        ));
        assert!(start_due(Some((1, t0)), 2, t0), "a new epoch");
    }

    #[test]
    fn failed_nodes_are_replaced_after_the_delay() {
        let cases = [
            (NodeState::Down, 1000, 1999, 1000, false),
            (NodeState::Down, 1000, 2000, 1000, true),
            (NodeState::Left, 1000, 2000, 1000, true),
            (NodeState::Unreachable, 0, 1_000_000, 1000, false),
            (NodeState::Suspect, 0, 1_000_000, 1000, false),
            (NodeState::Down, 5000, 1000, 0, true),
        ];
        for (state, since, now, delay, want) in cases {
            assert_eq!(
                replacement_due(state, since, now, delay),
                want,
                "{state:?} since {since} at {now}, delay {delay}"
            );
        }
    }
}
