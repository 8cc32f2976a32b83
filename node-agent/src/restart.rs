//! When to restart a supervised process that ended: a pure decision, `now` passed in.
//!
//! A process that exits (or cannot start) is started again after a backoff that doubles
//! with each consecutive *quick* failure (1 s, 2 s, 4 s ... up to `max_delay`). A run
//! that lasted `stable_after` is not a quick failure: it resets the count, so a master
//! that crashes once a day is restarted after a second every time. After
//! `failing_after` consecutive quick failures the process is *failing*: it is still
//! restarted at the backoff, and the cluster master may move its role elsewhere.
//!
//! The agent restarts on its own rather than waiting for the cluster master to ask: it
//! sees the exit at once and measures the run exactly, and a master keeps being
//! restarted while the cluster master or the group master is unreachable.

use std::time::{Duration, Instant};

/// How restarts back off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Wait before the first restart after a stable run (or the first start).
    pub first_delay: Duration,
    /// The longest wait between restarts.
    pub max_delay: Duration,
    /// A run at least this long resets the count of quick failures.
    pub stable_after: Duration,
    /// This many consecutive quick failures make the process `failing`.
    pub failing_after: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            stable_after: Duration::from_secs(30),
            failing_after: 3,
        }
    }
}

/// What to do after a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartDecision {
    /// Start it again this long from now.
    pub delay: Duration,
    /// Consecutive quick failures, this one included (1 after a stable run).
    pub failures: u32,
    /// It keeps failing quickly.
    pub failing: bool,
    /// How long the run that just ended lasted (zero for a failed start).
    pub ran: Duration,
}

/// The restart history of one process (one id and epoch).
#[derive(Clone, Debug)]
pub struct Restarts {
    policy: RestartPolicy,
    /// When the current run started, while one runs.
    started: Option<Instant>,
    /// Consecutive quick failures so far.
    failures: u32,
}

impl Restarts {
    pub fn new(policy: RestartPolicy) -> Self {
        Restarts {
            policy,
            started: None,
            failures: 0,
        }
    }

    /// Consecutive quick failures before the current run or pending restart.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the process counts as failing now.
    pub fn failing(&self) -> bool {
        self.failures >= self.policy.failing_after
    }

    /// The process was started at `now`.
    pub fn started(&mut self, now: Instant) {
        self.started = Some(now);
    }

    /// The process ended at `now` (or could not be started: it never ran).
    pub fn ended(&mut self, now: Instant) -> RestartDecision {
        let ran = self
            .started
            .take()
            .map(|s| now.saturating_duration_since(s))
            .unwrap_or_default();
        if ran >= self.policy.stable_after {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        // 1 s, 2 s, 4 s ...: the exponent is bounded so the shift cannot overflow.
        let factor = 1u32 << (self.failures - 1).min(20);
        let delay = self
            .policy
            .first_delay
            .saturating_mul(factor)
            .min(self.policy.max_delay);
        RestartDecision {
            delay,
            failures: self.failures,
            failing: self.failing(),
            ran,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Step {
        /// Start at this second.
        Start(u64),
        /// End at this second; expect (delay s, failures, failing).
        End(u64, u64, u32, bool),
        /// A start that failed at this second; expect the same.
        StartFailed(u64, u64, u32, bool),
    }
    use Step::*;

    fn run(table: &[Step]) {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Restarts::new(RestartPolicy::default());
        for (i, step) in table.iter().enumerate() {
            let (now, expect) = match *step {
                Start(s) => {
                    r.started(at(s));
                    continue;
                }
                End(s, d, f, failing) => (s, (d, f, failing)),
                StartFailed(s, d, f, failing) => (s, (d, f, failing)),
            };
            let got = r.ended(at(now));
            assert_eq!(
                (got.delay, got.failures, got.failing),
                (Duration::from_secs(expect.0), expect.1, expect.2),
                "step {i}"
            );
            assert_eq!(r.failing(), expect.2, "step {i}");
        }
    }

    #[test]
    fn quick_exits_back_off_exponentially_and_fail_after_three() {
        run(&[
            Start(0),
            End(0, 1, 1, false),
            Start(1),
            End(1, 2, 2, false),
            Start(3),
            End(3, 4, 3, true),
            Start(7),
            End(7, 8, 4, true),
        ]);
    }

    #[test]
    fn backoff_is_capped() {
        let mut table = Vec::new();
        let mut t = 0;
        let mut delay = 1;
        for n in 1..=12u32 {
            table.push(Start(t));
            table.push(End(t, delay, n, n >= 3));
            t += delay;
            delay = (delay * 2).min(60);
        }
        run(&table);
        // A very long run of failures does not overflow.
        let mut r = Restarts::new(RestartPolicy::default());
        let now = Instant::now();
        for _ in 0..100 {
            r.ended(now);
        }
        assert_eq!(r.ended(now).delay, Duration::from_secs(60));
    }

    #[test]
    fn a_stable_run_resets_the_count() {
        run(&[
            Start(0),
            End(1, 1, 1, false),
            Start(2),
            End(3, 2, 2, false),
            Start(5),
            End(6, 4, 3, true),
            // Runs 30 s: stable; the exit counts as the first failure again.
            Start(10),
            End(40, 1, 1, false),
            Start(41),
            End(70, 2, 2, false), // 29 s is not stable
        ]);
    }

    #[test]
    fn failed_starts_count_as_quick_failures() {
        run(&[
            StartFailed(0, 1, 1, false),
            StartFailed(1, 2, 2, false),
            StartFailed(3, 4, 3, true),
            // It finally runs, stably, and ends.
            Start(7),
            End(100, 1, 1, false),
        ]);
    }
}
