//! The rule engine: one alert's life under one rule, as plain code with time passed in.
//!
//! An alert starts `pending` when the value breaches the threshold, fires once it has
//! breached for `for_seconds` (at once when 0), and resolves once the value is back past
//! `recover_threshold` (the threshold itself when unset: hysteresis keeps a value that
//! hovers around the threshold from flapping) and has stayed there for
//! `keep_firing_seconds`. A pending alert whose value recovers before it fires resolves
//! at once. Inhibition (the node is down: its other alerts say nothing new) resolves
//! what is pending or firing and starts nothing.

use glory_protocol::monitoring::{Aggregate, AlertState, Rule};

/// What the engine remembers of one alert between evaluations.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Tracked {
    /// Not pending, not firing.
    #[default]
    Quiet,
    Pending {
        since_ms: u64,
    },
    Firing {
        since_ms: u64,
        /// When the value last recovered, while it stays recovered (keep-firing).
        recovered_ms: Option<u64>,
    },
}

/// A change the engine decided: the alert is now `state` (since `at_ms`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transition {
    pub state: AlertState,
    pub at_ms: u64,
    pub value: f64,
}

/// Whether `value` has recovered under `rule` (past the recover threshold).
fn recovered(rule: &Rule, value: f64) -> bool {
    !rule
        .op
        .holds(value, rule.recover_threshold.unwrap_or(rule.threshold))
}

/// Evaluate `rule` on `value` at `now_ms`: update `tracked`, and say what changed.
/// `inhibited`: the node is down.
pub fn step(
    rule: &Rule,
    tracked: &mut Tracked,
    value: f64,
    now_ms: u64,
    inhibited: bool,
) -> Option<Transition> {
    let to = |state| Transition {
        state,
        at_ms: now_ms,
        value,
    };
    if inhibited || value.is_nan() {
        return match std::mem::take(tracked) {
            Tracked::Quiet => None,
            _ => Some(to(AlertState::Resolved)),
        };
    }
    let breach = rule.op.holds(value, rule.threshold);
    let for_ms = rule.for_seconds * 1000;
    match *tracked {
        Tracked::Quiet if !breach => None,
        Tracked::Quiet if for_ms == 0 => {
            *tracked = Tracked::Firing {
                since_ms: now_ms,
                recovered_ms: None,
            };
            Some(to(AlertState::Firing))
        }
        Tracked::Quiet => {
            *tracked = Tracked::Pending { since_ms: now_ms };
            Some(to(AlertState::Pending))
        }
        Tracked::Pending { .. } if !breach => {
            *tracked = Tracked::Quiet;
            Some(to(AlertState::Resolved))
        }
        Tracked::Pending { since_ms } if now_ms.saturating_sub(since_ms) >= for_ms => {
            *tracked = Tracked::Firing {
                since_ms: now_ms,
                recovered_ms: None,
            };
            Some(to(AlertState::Firing))
        }
        Tracked::Pending { .. } => None,
        Tracked::Firing {
            since_ms,
            recovered_ms,
        } => {
            if !recovered(rule, value) {
                *tracked = Tracked::Firing {
                    since_ms,
                    recovered_ms: None,
                };
                return None;
            }
            let recovered_ms = recovered_ms.unwrap_or(now_ms);
            if now_ms.saturating_sub(recovered_ms) >= rule.keep_firing_seconds * 1000 {
                *tracked = Tracked::Quiet;
                Some(to(AlertState::Resolved))
            } else {
                *tracked = Tracked::Firing {
                    since_ms,
                    recovered_ms: Some(recovered_ms),
                };
                None
            }
        }
    }
}

/// The value a group rule looks at: `aggregate` over the latest value of each node in
/// scope. None when no node has a value.
pub fn aggregate(aggregate: Aggregate, values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(match aggregate {
        Aggregate::Avg => values.iter().sum::<f64>() / values.len() as f64,
        Aggregate::Max => values.iter().copied().fold(f64::MIN, f64::max),
        Aggregate::FractionOver { threshold } => {
            let over = values.iter().filter(|v| **v > threshold).count();
            100.0 * over as f64 / values.len() as f64
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use glory_protocol::monitoring::{Level, Op};
    use AlertState::{Firing, Pending, Resolved};

    fn rule(threshold: f64, for_s: u64, recover: Option<f64>, keep_s: u64) -> Rule {
        Rule {
            level: Level::Warning,
            op: Op::Gt,
            threshold,
            for_seconds: for_s,
            recover_threshold: recover,
            keep_firing_seconds: keep_s,
            aggregate: None,
        }
    }

    /// Run `values` (one every 5 s from t=0; `None` = node down) and return the
    /// transitions as (seconds, state).
    fn run(rule: &Rule, values: &[Option<f64>]) -> Vec<(u64, AlertState)> {
        let mut tracked = Tracked::Quiet;
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let now = i as u64 * 5000;
            let (value, down) = match v {
                Some(v) => (*v, false),
                None => (0.0, true),
            };
            if let Some(t) = step(rule, &mut tracked, value, now, down) {
                out.push((now / 1000, t.state));
            }
        }
        out
    }

    #[test]
    fn table() {
        let s = Some;
        type Case = (&'static str, Rule, Vec<Option<f64>>, Vec<(u64, AlertState)>);
        let cases: Vec<Case> = vec![
            (
                "for 0 fires at once and resolves at once",
                rule(90.0, 0, None, 0),
                vec![s(50.0), s(95.0), s(96.0), s(50.0)],
                vec![(5, Firing), (15, Resolved)],
            ),
            (
                "for 10 s: pending, then firing after 10 s of breach",
                rule(90.0, 10, None, 0),
                vec![s(95.0), s(95.0), s(95.0), s(95.0), s(10.0)],
                vec![(0, Pending), (10, Firing), (20, Resolved)],
            ),
            (
                "a pending alert whose value recovers resolves without firing",
                rule(90.0, 10, None, 0),
                vec![s(95.0), s(80.0), s(95.0)],
                vec![(0, Pending), (5, Resolved), (10, Pending)],
            ),
            (
                "hysteresis: no flapping between 80 and 90",
                rule(90.0, 0, Some(80.0), 0),
                vec![s(91.0), s(89.0), s(91.0), s(85.0), s(79.0), s(85.0)],
                vec![(0, Firing), (20, Resolved)],
            ),
            (
                "keep firing 10 s after recovery; a new breach restarts the wait",
                rule(90.0, 0, None, 10),
                vec![s(95.0), s(50.0), s(95.0), s(50.0), s(50.0), s(50.0)],
                vec![(0, Firing), (25, Resolved)],
            ),
            (
                "a node down resolves its alert and starts none",
                rule(90.0, 0, None, 0),
                vec![s(95.0), None, None, s(95.0)],
                vec![(0, Firing), (5, Resolved), (15, Firing)],
            ),
        ];
        for (name, rule, values, want) in cases {
            assert_eq!(run(&rule, &values), want, "{name}");
        }
    }

    #[test]
    fn other_operators_breach_the_other_way() {
        let mut r = rule(10.0, 0, Some(20.0), 0);
        r.op = Op::Lt;
        // Free disk under 10 %: fires; resolves only above 20 %.
        assert_eq!(
            run(&r, &[Some(50.0), Some(5.0), Some(15.0), Some(25.0)]),
            vec![(5, Firing), (15, Resolved)]
        );
    }

    #[test]
    fn group_aggregates() {
        let values = [95.0, 50.0, 92.0, 10.0];
        assert_eq!(
            aggregate(Aggregate::FractionOver { threshold: 90.0 }, &values),
            Some(50.0)
        );
        assert_eq!(aggregate(Aggregate::Max, &values), Some(95.0));
        assert_eq!(aggregate(Aggregate::Avg, &values), Some(61.75));
        assert_eq!(aggregate(Aggregate::Avg, &[]), None);
    }
}
