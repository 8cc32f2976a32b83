//! The failure detector: plain code over plain data, with time passed in.
//!
//! A node is `up` while heartbeats arrive; silent for `suspect_after` it is `suspect`,
//! silent for `down_after` it is `down`. A clean shutdown makes it `left` at once. A
//! node the cluster told us about but that we have not heard since we started gets a
//! grace period of `down_after` from the moment we learned of it (a group master that
//! just took over must not call everyone dead).
//!
//! Silence is measured on our own clock, so time we did not run does not count: when
//! two ticks are further apart than `stall_after` (the process was starved of CPU or
//! paused, and heartbeats sat unread in socket buffers), every node's silence is
//! shortened by the stall before anyone is judged.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use glory_protocol::NodeState;

#[derive(Clone, Copy, Debug)]
pub struct DetectorConfig {
    pub suspect_after: Duration,
    pub down_after: Duration,
    /// How long a node learned from the cluster (not heard yet) may stay silent before
    /// it is judged: it must first reconnect to this (new) group master. At least
    /// `down_after`.
    pub rejoin_grace: Duration,
    /// A gap between two ticks longer than this is a stall of this process, not
    /// silence of the nodes (None: never assume a stall).
    pub stall_after: Option<Duration>,
}

/// One decision of the detector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub node: String,
    pub from: NodeState,
    pub to: NodeState,
    pub reason: &'static str,
}

#[derive(Clone, Debug)]
struct Tracked {
    /// Last heartbeat, or when we started tracking the node.
    last_heard: Instant,
    state: NodeState,
    last_seq: u64,
}

#[derive(Debug)]
pub struct FailureDetector {
    config: DetectorConfig,
    nodes: HashMap<String, Tracked>,
    lost: u64,
    received: u64,
    last_tick: Option<Instant>,
    /// Time not counted as silence because this process stalled.
    stalled: Duration,
}

impl FailureDetector {
    pub fn new(config: DetectorConfig) -> Self {
        FailureDetector {
            config,
            nodes: HashMap::new(),
            lost: 0,
            received: 0,
            last_tick: None,
            stalled: Duration::ZERO,
        }
    }

    /// Total time this detector did not count as silence because it stalled.
    pub fn stalled(&self) -> Duration {
        self.stalled
    }

    /// Start watching a node in the state the cluster last recorded. Already-tracked
    /// nodes keep what we know first-hand.
    pub fn track(&mut self, node: &str, recorded: NodeState, now: Instant) {
        // Pretend we heard it a little in the future, so the usual thresholds apply
        // only after the grace period.
        let extra = self
            .config
            .rejoin_grace
            .saturating_sub(self.config.down_after);
        self.nodes.entry(node.to_string()).or_insert(Tracked {
            last_heard: now + extra,
            state: recorded,
            last_seq: 0,
        });
    }

    /// Stop watching every node.
    pub fn forget_all(&mut self) {
        self.nodes.clear();
    }

    pub fn forget(&mut self, node: &str) -> bool {
        self.nodes.remove(node).is_some()
    }

    pub fn state(&self, node: &str) -> Option<NodeState> {
        self.nodes.get(node).map(|t| t.state)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Heartbeats received and detected missing (sequence gaps) so far.
    pub fn heartbeat_stats(&self) -> (u64, u64) {
        (self.received, self.lost)
    }

    /// A heartbeat arrived. Unknown nodes are tracked from now on (their certificate
    /// already proved they belong here).
    pub fn heartbeat(&mut self, node: &str, seq: u64, now: Instant) -> Option<Transition> {
        self.received += 1;
        // Look up first: allocating the key on every heartbeat would be wasted work.
        if !self.nodes.contains_key(node) {
            self.nodes.insert(
                node.to_string(),
                Tracked {
                    last_heard: now,
                    state: NodeState::Joining,
                    last_seq: 0,
                },
            );
        }
        let tracked = self.nodes.get_mut(node)?;
        if seq > tracked.last_seq + 1 && tracked.last_seq > 0 {
            self.lost += seq - tracked.last_seq - 1;
        }
        // A restarted agent counts from 1 again.
        tracked.last_seq = seq;
        self.heard(node, now, "heartbeat")
    }

    /// The node was heard from otherwise than by a heartbeat (`reason` says how).
    /// Only tracked nodes count: heartbeats are what starts the tracking.
    pub fn heard(&mut self, node: &str, now: Instant, reason: &'static str) -> Option<Transition> {
        let tracked = self.nodes.get_mut(node)?;
        tracked.last_heard = now;
        if tracked.state == NodeState::Up {
            return None;
        }
        let from = tracked.state;
        tracked.state = NodeState::Up;
        Some(Transition {
            node: node.to_string(),
            from,
            to: NodeState::Up,
            reason,
        })
    }

    /// The agent said it is shutting down.
    pub fn left(&mut self, node: &str) -> Option<Transition> {
        let tracked = self.nodes.get_mut(node)?;
        if tracked.state == NodeState::Left {
            return None;
        }
        let from = tracked.state;
        tracked.state = NodeState::Left;
        Some(Transition {
            node: node.to_string(),
            from,
            to: NodeState::Left,
            reason: "clean shutdown",
        })
    }

    /// Time has passed: who became suspect or down?
    pub fn tick(&mut self, now: Instant) -> Vec<Transition> {
        let mut out = Vec::new();
        if let (Some(prev), Some(limit)) = (self.last_tick, self.config.stall_after) {
            let gap = now.saturating_duration_since(prev);
            if gap > limit {
                // Nobody could be heard while we did not run: move every last-heard
                // time forward by the part of the gap beyond a normal tick.
                let stall = gap - limit;
                self.stalled += stall;
                for tracked in self.nodes.values_mut() {
                    tracked.last_heard = (tracked.last_heard + stall).min(now);
                }
            }
        }
        self.last_tick = Some(now);
        for (node, tracked) in self.nodes.iter_mut() {
            let silent = now.saturating_duration_since(tracked.last_heard);
            let next = match tracked.state {
                NodeState::Down | NodeState::Left => continue,
                _ if silent >= self.config.down_after => NodeState::Down,
                NodeState::Up if silent >= self.config.suspect_after => NodeState::Suspect,
                _ => continue,
            };
            if next != tracked.state {
                out.push(Transition {
                    node: node.clone(),
                    from: tracked.state,
                    to: next,
                    reason: if next == NodeState::Down {
                        "no heartbeat within down_after"
                    } else {
                        "missed heartbeats"
                    },
                });
                tracked.state = next;
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    pub fn counts(&self) -> BTreeMap<NodeState, u32> {
        let mut counts = BTreeMap::new();
        for tracked in self.nodes.values() {
            *counts.entry(tracked.state).or_insert(0) += 1;
        }
        counts
    }

    /// Every tracked node with its state.
    pub fn states(&self) -> impl Iterator<Item = (&str, NodeState)> {
        self.nodes.iter().map(|(n, t)| (n.as_str(), t.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> FailureDetector {
        FailureDetector::new(DetectorConfig {
            suspect_after: Duration::from_secs(2),
            down_after: Duration::from_secs(3),
            rejoin_grace: Duration::from_secs(3),
            stall_after: None,
        })
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn an_answered_probe_makes_a_suspect_up_and_restarts_its_silence() {
        let t0 = Instant::now();
        let mut d = detector();
        assert!(
            d.heard("n9", t0, "answered a probe").is_none(),
            "only tracked nodes"
        );
        d.heartbeat("n1", 1, t0);
        assert_eq!(d.tick(ms(t0, 2000))[0].to, NodeState::Suspect);
        let back = d.heard("n1", ms(t0, 2300), "answered a probe").unwrap();
        assert_eq!(
            (back.from, back.to, back.reason),
            (NodeState::Suspect, NodeState::Up, "answered a probe")
        );
        assert!(
            d.tick(ms(t0, 3000)).is_empty(),
            "not down at 3 s: heard at 2.3 s"
        );
        assert_eq!(d.tick(ms(t0, 4300))[0].to, NodeState::Suspect);
        assert_eq!(d.tick(ms(t0, 5300))[0].to, NodeState::Down);
        assert_eq!(d.heartbeat_stats(), (1, 0), "an answer is not a heartbeat");
    }

    #[test]
    fn a_detector_that_forgets_all_tracks_afresh_with_the_rejoin_grace() {
        let t0 = Instant::now();
        let mut d = detector();
        d.heartbeat("n1", 1, t0);
        d.forget_all();
        assert!(d.is_empty());
        assert!(d.tick(ms(t0, 60_000)).is_empty(), "nobody to judge");
        d.track("n1", NodeState::Up, ms(t0, 60_000));
        assert!(d
            .tick(ms(t0, 62_999))
            .iter()
            .all(|t| t.to != NodeState::Down));
    }

    #[test]
    fn heartbeats_keep_a_node_up_silence_makes_it_suspect_then_down() {
        let t0 = Instant::now();
        let mut d = detector();
        let up = d.heartbeat("n1", 1, t0).unwrap();
        assert_eq!((up.from, up.to), (NodeState::Joining, NodeState::Up));
        for i in 1..10 {
            assert!(d.heartbeat("n1", i + 1, ms(t0, i * 1000)).is_none());
            assert!(d.tick(ms(t0, i * 1000 + 500)).is_empty());
        }
        // Last heartbeat at 9 s.
        assert!(d.tick(ms(t0, 10_999)).is_empty());
        let suspect = d.tick(ms(t0, 11_000));
        assert_eq!(suspect[0].to, NodeState::Suspect);
        assert!(d.tick(ms(t0, 11_999)).is_empty());
        let down = d.tick(ms(t0, 12_000));
        assert_eq!(
            (down[0].from, down[0].to),
            (NodeState::Suspect, NodeState::Down)
        );
        assert!(d.tick(ms(t0, 60_000)).is_empty(), "down is reported once");
        let back = d.heartbeat("n1", 11, ms(t0, 61_000)).unwrap();
        assert_eq!((back.from, back.to), (NodeState::Down, NodeState::Up));
    }

    #[test]
    fn a_long_gap_between_ticks_goes_straight_to_down() {
        let t0 = Instant::now();
        let mut d = detector();
        d.heartbeat("n1", 1, t0);
        let out = d.tick(ms(t0, 5000));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].from, out[0].to), (NodeState::Up, NodeState::Down));
    }

    #[test]
    fn clean_shutdown_is_left_and_never_down() {
        let t0 = Instant::now();
        let mut d = detector();
        d.heartbeat("n1", 1, t0);
        assert_eq!(d.left("n1").unwrap().to, NodeState::Left);
        assert!(d.left("n1").is_none());
        assert!(d.tick(ms(t0, 100_000)).is_empty());
        assert!(d.left("unknown").is_none());
    }

    #[test]
    fn nodes_learned_from_the_cluster_get_a_grace_period() {
        let t0 = Instant::now();
        let mut d = detector();
        d.track("n1", NodeState::Unreachable, t0);
        d.track("n2", NodeState::Unreachable, t0);
        d.track("n3", NodeState::Left, t0);
        assert!(
            d.tick(ms(t0, 2999)).is_empty(),
            "no verdict inside the grace period"
        );
        d.heartbeat("n1", 40, ms(t0, 1500));
        let out = d.tick(ms(t0, 3000));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].node.as_str(), out[0].to), ("n2", NodeState::Down));
        assert_eq!(d.state("n3"), Some(NodeState::Left));
        // track() does not overwrite first-hand knowledge.
        d.track("n1", NodeState::Down, ms(t0, 3000));
        assert_eq!(d.state("n1"), Some(NodeState::Up));
    }

    #[test]
    fn a_stall_of_this_process_is_not_counted_as_silence() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(DetectorConfig {
            suspect_after: Duration::from_secs(2),
            down_after: Duration::from_secs(3),
            rejoin_grace: Duration::from_secs(3),
            stall_after: Some(Duration::from_millis(500)),
        });
        d.heartbeat("n1", 1, t0);
        d.heartbeat("n2", 1, t0);
        assert!(d.tick(ms(t0, 100)).is_empty());
        // The process did not run for 5 s; n2's heartbeats were read first afterwards.
        d.heartbeat("n2", 2, ms(t0, 5100));
        assert!(
            d.tick(ms(t0, 5100)).is_empty(),
            "nobody is down after a stall"
        );
        assert_eq!(d.stalled(), Duration::from_millis(4500));
        // Silence after the stall counts as usual (n1 was last heard 0.6 s before the
        // end of it): with regular ticks it is suspect at 6.5 s and down at 7.5 s.
        let mut seen = Vec::new();
        for t in (5200..=8000).step_by(100) {
            for tr in d.tick(ms(t0, t)) {
                seen.push((t, tr.node, tr.to));
            }
        }
        assert_eq!(
            seen,
            vec![
                (6500, "n1".to_string(), NodeState::Suspect),
                (7100, "n2".to_string(), NodeState::Suspect),
                (7500, "n1".to_string(), NodeState::Down),
            ]
        );
        // Without stall detection the same stall would have been a false down.
        let mut plain = detector();
        plain.heartbeat("n1", 1, t0);
        assert!(plain.tick(ms(t0, 100)).is_empty());
        assert_eq!(plain.tick(ms(t0, 5100))[0].to, NodeState::Down);
    }

    #[test]
    fn a_longer_rejoin_grace_delays_the_verdict_on_unheard_nodes_only() {
        let t0 = Instant::now();
        let mut d = FailureDetector::new(DetectorConfig {
            suspect_after: Duration::from_secs(2),
            down_after: Duration::from_secs(3),
            rejoin_grace: Duration::from_secs(5),
            stall_after: None,
        });
        d.track("quiet", NodeState::Unreachable, t0);
        d.track("back", NodeState::Unreachable, t0);
        d.heartbeat("back", 1, ms(t0, 100));
        assert!(
            d.tick(ms(t0, 4999)).iter().all(|t| t.node == "back"),
            "quiet is still in its grace period"
        );
        let out = d.tick(ms(t0, 5000));
        assert!(
            out.iter()
                .any(|t| t.node == "quiet" && t.to == NodeState::Down),
            "{out:?}"
        );
    }

    #[test]
    fn sequence_gaps_count_as_lost_heartbeats_and_restarts_do_not() {
        let t0 = Instant::now();
        let mut d = detector();
        d.heartbeat("n1", 1, t0);
        d.heartbeat("n1", 2, t0);
        d.heartbeat("n1", 5, t0);
        assert_eq!(d.heartbeat_stats(), (3, 2));
        d.heartbeat("n1", 1, t0); // agent restarted
        d.heartbeat("n1", 2, t0);
        assert_eq!(d.heartbeat_stats(), (5, 2));
    }

    #[test]
    fn counts_and_forget() {
        let t0 = Instant::now();
        let mut d = detector();
        d.heartbeat("a", 1, t0);
        d.heartbeat("b", 1, t0);
        d.track("c", NodeState::Down, t0);
        let counts = d.counts();
        assert_eq!(counts.get(&NodeState::Up), Some(&2));
        assert_eq!(counts.get(&NodeState::Down), Some(&1));
        assert!(d.forget("a"));
        assert_eq!(d.len(), 2);
    }
}
