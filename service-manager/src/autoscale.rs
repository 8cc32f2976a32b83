//! The autoscaler's decision, pure (time passed in), the way Kubernetes' Horizontal
//! Pod Autoscaler makes it, with every input recorded:
//!
//! 1. **Raw recommendation**: `ceil(current x value / target)`, unless the ratio
//!    `value / target` is within the tolerance (10%) of 1, where it is `current`.
//!    With no metric there is no scale-down (missing data never removes capacity);
//!    with no instances the recommendation is `min` (a ratio of nothing is nothing).
//! 2. **Bounds**: never below `min`, never above `max`.
//! 3. **Scale up at once; scale down slowly**: a lower recommendation takes effect
//!    only as the highest recommendation of the last `scale_down_window` (default
//!    300 s), so a dip does not remove instances a returning load needs.
//! 4. **Rate limits**: at most `max_up_per_minute` instances added and
//!    `max_down_per_minute` removed over any minute.
//!
//! Example: 4 instances at 90% CPU for a 60% target: ratio 1.5, outside the 10%
//! tolerance, raw = ceil(4 x 1.5) = 6: up to 6 at once (if the rate limit allows).
//! Load falls to 20%: raw = ceil(6 x 0.33) = 2, but the window still holds the 6 of
//! a minute ago, so 6 stays until five minutes pass with nothing higher than 2.

use std::collections::VecDeque;

use serde::Serialize;

/// What the autoscaler may do for one service.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    /// The metric's value per instance to keep.
    pub target: f64,
    /// Relative distance from the target inside which nothing changes (0.1: 10%).
    pub tolerance: f64,
    pub scale_down_window_ms: u64,
    pub max_up_per_minute: u32,
    pub max_down_per_minute: u32,
}

impl Policy {
    pub fn new(min: u32, max: u32, target: f64, scale_down_window_seconds: u32) -> Self {
        Policy {
            min,
            max,
            target,
            tolerance: 0.1,
            scale_down_window_ms: u64::from(scale_down_window_seconds) * 1000,
            max_up_per_minute: max.max(4),
            max_down_per_minute: (max / 10).max(1),
        }
    }
}

/// One decision with its inputs (`GET /api/v1/services/{name}/scaling`).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = ScalingDecision)]
pub struct Decision {
    pub at: u64,
    pub metric: String,
    pub value: Option<f64>,
    pub current: u32,
    pub desired: u32,
    pub reason: String,
}

/// The autoscaler's memory for one service: recent recommendations and changes.
#[derive(Clone, Debug, Default)]
pub struct Autoscaler {
    recommendations: VecDeque<(u64, u32)>,
    changes: VecDeque<(u64, i64)>,
}

const MINUTE_MS: u64 = 60_000;

impl Autoscaler {
    /// Decide how many instances `current` should become at `now_ms`, given the
    /// metric's `value` (mean per instance) or `None` when there is no data.
    pub fn decide(
        &mut self,
        policy: &Policy,
        metric: &str,
        current: u32,
        value: Option<f64>,
        now_ms: u64,
    ) -> Decision {
        let (raw, why) = raw_recommendation(policy, current, value);
        let bounded = raw.clamp(policy.min, policy.max.max(policy.min));
        let mut reason = why;
        if bounded != raw {
            reason.push_str(&format!("; bounded to {}..{}", policy.min, policy.max));
        }
        let window = policy.scale_down_window_ms;
        self.recommendations
            .retain(|(at, _)| now_ms.saturating_sub(*at) <= window);
        self.recommendations.push_back((now_ms, bounded));
        let mut desired = bounded;
        if value.is_none() && desired < current {
            desired = current.clamp(policy.min, policy.max.max(policy.min));
        }
        if desired < current {
            let highest = self
                .recommendations
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(desired);
            if highest > desired {
                desired = highest.min(current);
                reason.push_str(&format!(
                    "; scale-down held at {desired}, the highest recommendation of the last {} s",
                    policy.scale_down_window_ms / 1000
                ));
            }
        }
        self.changes
            .retain(|(at, _)| now_ms.saturating_sub(*at) < MINUTE_MS);
        let added: i64 = self.changes.iter().filter(|c| c.1 > 0).map(|c| c.1).sum();
        let removed: i64 = -self
            .changes
            .iter()
            .filter(|c| c.1 < 0)
            .map(|c| c.1)
            .sum::<i64>();
        let delta = i64::from(desired) - i64::from(current);
        let allowed = if delta > 0 {
            delta.min((i64::from(policy.max_up_per_minute) - added).max(0))
        } else {
            -((-delta).min((i64::from(policy.max_down_per_minute) - removed).max(0)))
        };
        if allowed != delta {
            reason.push_str(&format!(
                "; rate limit: {} of {} per minute used",
                if delta > 0 { added } else { removed },
                if delta > 0 {
                    policy.max_up_per_minute
                } else {
                    policy.max_down_per_minute
                }
            ));
        }
        let desired = (i64::from(current) + allowed).max(0) as u32;
        // Outside bounds already (min or max changed): move to them at once.
        let desired = if current < policy.min || current > policy.max {
            bounded.clamp(policy.min, policy.max.max(policy.min))
        } else {
            desired
        };
        if desired != current {
            self.changes
                .push_back((now_ms, i64::from(desired) - i64::from(current)));
        }
        Decision {
            at: now_ms,
            metric: metric.to_string(),
            value,
            current,
            desired,
            reason,
        }
    }
}

/// Step 1: the recommendation before bounds, windows and limits, and why.
fn raw_recommendation(policy: &Policy, current: u32, value: Option<f64>) -> (u32, String) {
    let Some(value) = value.filter(|v| v.is_finite() && *v >= 0.0) else {
        return (
            current,
            "no metric: holding (missing data never scales down)".to_string(),
        );
    };
    if current == 0 {
        return (policy.min, "no instances: start min".to_string());
    }
    let ratio = value / policy.target;
    if (ratio - 1.0).abs() <= policy.tolerance {
        return (
            current,
            format!(
                "{value:.2} is within {:.0}% of the target {:.2}",
                policy.tolerance * 100.0,
                policy.target
            ),
        );
    }
    let raw = (f64::from(current) * ratio).ceil().min(f64::from(u32::MAX)) as u32;
    (
        raw,
        format!(
            "ceil({current} x {value:.2} / {:.2}) = {raw}",
            policy.target
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min: 2,
            max: 20,
            target: 60.0,
            tolerance: 0.1,
            scale_down_window_ms: 300_000,
            max_up_per_minute: 100,
            max_down_per_minute: 100,
        }
    }

    /// (seconds, current, value, expected desired)
    fn run(p: &Policy, steps: &[(u64, u32, Option<f64>, u32)]) {
        let mut a = Autoscaler::default();
        for (i, (t, current, value, want)) in steps.iter().enumerate() {
            let d = a.decide(p, "cpu.percent", *current, *value, t * 1000);
            assert_eq!(d.desired, *want, "step {i} at {t} s: {d:?}");
        }
    }

    #[test]
    fn the_formula_and_its_tolerance() {
        let p = policy();
        run(&p, &[(0, 4, Some(90.0), 6)]); // ratio 1.5: ceil(6.0)
        run(&p, &[(0, 4, Some(65.0), 4)]); // 1.083: within 10%
        run(&p, &[(0, 4, Some(55.0), 4)]); // 0.917: within 10%
        run(&p, &[(0, 4, Some(67.0), 5)]); // 1.117: ceil(4.47)
        run(&p, &[(0, 10, Some(59.0), 10)]);
    }

    #[test]
    fn never_below_min_or_above_max() {
        let p = policy();
        run(&p, &[(0, 10, Some(1000.0), 20)]);
        let mut a = Autoscaler::default();
        // A long quiet spell brings it down to min, never under.
        let d = a.decide(&p, "cpu", 3, Some(1.0), 0);
        assert_eq!(d.desired, 2, "{d:?}");
        // Bounds that moved are met at once.
        let d = a.decide(&policy(), "cpu", 25, Some(60.0), 1000);
        assert_eq!(d.desired, 20, "{d:?}");
        run(&p, &[(0, 0, Some(50.0), 2)]); // nothing running: start min
    }

    #[test]
    fn up_at_once_down_only_after_the_window() {
        let p = policy();
        run(
            &p,
            &[
                (0, 4, Some(90.0), 6),   // up at once
                (30, 6, Some(20.0), 6),  // raw 2, but 6 is in the window
                (200, 6, Some(20.0), 6), // still in the window
                (301, 6, Some(20.0), 2), // the 6 left the window: down to the highest since
            ],
        );
    }

    #[test]
    fn missing_metrics_never_scale_down() {
        let p = policy();
        run(
            &p,
            &[
                (0, 8, None, 8),
                (600, 8, None, 8),
                (601, 8, Some(f64::NAN), 8),
            ],
        );
        // but the bounds still hold
        run(&p, &[(0, 30, None, 20)]);
    }

    #[test]
    fn rate_limits_per_minute() {
        let p = Policy {
            max_up_per_minute: 3,
            max_down_per_minute: 1,
            scale_down_window_ms: 0,
            ..policy()
        };
        run(
            &p,
            &[
                (0, 4, Some(180.0), 7),   // wants 12: 3 allowed
                (10, 7, Some(180.0), 7),  // still within the minute: none left
                (61, 7, Some(180.0), 10), // a new minute: 3 more
            ],
        );
        run(
            &p,
            &[
                (0, 10, Some(6.0), 9), // wants 2: one a minute
                (30, 9, Some(6.0), 9),
                (61, 9, Some(6.0), 8),
            ],
        );
    }

    #[test]
    fn every_decision_says_why() {
        let mut a = Autoscaler::default();
        let d = a.decide(&policy(), "requests_per_sec", 4, Some(90.0), 5);
        assert_eq!(d.metric, "requests_per_sec");
        assert_eq!(d.value, Some(90.0));
        assert!(
            d.reason.contains("ceil(4 x 90.00 / 60.00) = 6"),
            "{}",
            d.reason
        );
        let d = a.decide(&policy(), "requests_per_sec", 6, Some(10.0), 10);
        assert!(d.reason.contains("scale-down held at 6"), "{}", d.reason);
    }
}
