//! Whether the leading cluster master keeps leading: plain code over plain data, with
//! time passed in.
//!
//! The leader renews its lease every third of the lease's time to live. A renewal the
//! key master cannot answer (it is away) changes nothing: the leader keeps serving
//! from memory, and tells how long the lease has gone unrenewed and whether that is
//! past its time to live. Only the key master saying the lease is gone (an outage
//! outlasted it) ends the lease: the leader campaigns again at once, for at most one
//! time to live. It keeps leading if it wins (nobody else took over), and steps down
//! otherwise. A standby that failed to campaign tries again after a short pause.

use std::time::{Duration, Instant};

/// What a keep-alive of the leadership lease came back with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeepAlive {
    Renewed,
    /// The key master answered that the lease no longer exists.
    LeaseNotFound,
    /// No answer (the key master is away or failing).
    Failed,
}

/// What the leader does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Keep leading.
    Lead,
    /// Keep leading from memory while the key master is away.
    LeadFromMemory {
        /// Since the lease was last renewed (or granted).
        since_renewed: Duration,
        /// Whether that is at least the lease's time to live: the key master will
        /// have let it go, unless it did not count the time it was away.
        lease_lapsed: bool,
    },
    /// The lease is gone: campaign again, and give up at `until` (the driver enforces
    /// it), then report with [`Leadership::campaign_ended`].
    Campaign { until: Instant },
    /// Another master may lead now: stop.
    StepDown,
}

/// The leader's view of its lease.
#[derive(Debug)]
pub(crate) struct Leadership {
    lease: Duration,
    last_renewed: Instant,
}

impl Leadership {
    /// Leadership won at `now` with a lease of `lease`.
    pub(crate) fn new(lease: Duration, now: Instant) -> Self {
        Leadership {
            lease,
            last_renewed: now,
        }
    }

    /// How often to renew the lease.
    pub(crate) fn keep_alive_every(&self) -> Duration {
        keep_alive_every(self.lease)
    }

    /// A keep-alive came back at `now` with `outcome`.
    pub(crate) fn keep_alive(&mut self, outcome: KeepAlive, now: Instant) -> Verdict {
        match outcome {
            KeepAlive::Renewed => {
                self.last_renewed = now;
                Verdict::Lead
            }
            KeepAlive::Failed => {
                let since_renewed = now.saturating_duration_since(self.last_renewed);
                Verdict::LeadFromMemory {
                    since_renewed,
                    lease_lapsed: since_renewed >= self.lease,
                }
            }
            KeepAlive::LeaseNotFound => Verdict::Campaign {
                until: now + self.lease,
            },
        }
    }

    /// The campaign [`Verdict::Campaign`] asked for ended at `now`, `won` or not (lost,
    /// failed, or out of time).
    pub(crate) fn campaign_ended(&mut self, won: bool, now: Instant) -> Verdict {
        if won {
            // A new lease, granted during the campaign: renewed at the latest now.
            self.last_renewed = now;
            Verdict::Lead
        } else {
            Verdict::StepDown
        }
    }
}

/// How often a lease of `lease` is renewed (by a leader, and by a candidate while it
/// waits in the election).
pub(crate) fn keep_alive_every(lease: Duration) -> Duration {
    lease / 3
}

/// Which step of a campaign for leadership failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CampaignFailure {
    /// The key master did not grant a lease.
    LeaseGrant,
    /// The campaign with a granted lease failed.
    Campaign,
}

impl CampaignFailure {
    /// How long to wait before campaigning again.
    pub(crate) fn retry_after(self) -> Duration {
        match self {
            CampaignFailure::LeaseGrant => Duration::from_millis(500),
            CampaignFailure::Campaign => Duration::from_millis(200),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(5);

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// One event the leader's driver reports, at a time in ms after winning.
    #[derive(Clone, Copy, Debug)]
    enum Event {
        KeepAlive(KeepAlive),
        CampaignEnded { won: bool },
    }
    use Event::CampaignEnded;
    use KeepAlive::{Failed, LeaseNotFound, Renewed};

    fn keep_alive(outcome: KeepAlive) -> Event {
        Event::KeepAlive(outcome)
    }

    fn from_memory(since_renewed_ms: u64, lease_lapsed: bool) -> Verdict {
        Verdict::LeadFromMemory {
            since_renewed: Duration::from_millis(since_renewed_ms),
            lease_lapsed,
        }
    }

    #[test]
    fn scenarios() {
        let t0 = Instant::now();
        let campaign_until = |at_ms| Verdict::Campaign {
            until: ms(t0, at_ms) + LEASE,
        };
        // (what, events at their time in ms, the verdict each must get)
        type Case = (&'static str, Vec<(u64, Event, Verdict)>);
        let table: Vec<Case> = vec![
            (
                "renewals keep the leader leading",
                vec![
                    (1666, keep_alive(Renewed), Verdict::Lead),
                    (3333, keep_alive(Renewed), Verdict::Lead),
                    (60_000, keep_alive(Renewed), Verdict::Lead),
                ],
            ),
            (
                "an unanswered keep-alive keeps leading from memory, counting from the last renewal",
                vec![
                    (1666, keep_alive(Renewed), Verdict::Lead),
                    (3333, keep_alive(Failed), from_memory(1667, false)),
                    (5000, keep_alive(Failed), from_memory(3334, false)),
                    (6665, keep_alive(Failed), from_memory(4999, false)),
                    (6666, keep_alive(Failed), from_memory(5000, true)),
                    (20_000, keep_alive(Failed), from_memory(18_334, true)),
                    (21_000, keep_alive(Renewed), Verdict::Lead),
                    (22_000, keep_alive(Failed), from_memory(1000, false)),
                ],
            ),
            (
                "an outage from the start counts from winning",
                vec![(5000, keep_alive(Failed), from_memory(5000, true))],
            ),
            (
                "a lapsed lease is campaigned for again, for one time to live",
                vec![
                    (1666, keep_alive(Renewed), Verdict::Lead),
                    (9000, keep_alive(LeaseNotFound), campaign_until(9000)),
                ],
            ),
            (
                "winning the campaign again keeps leading, renewed as of the win",
                vec![
                    (9000, keep_alive(LeaseNotFound), campaign_until(9000)),
                    (9100, CampaignEnded { won: true }, Verdict::Lead),
                    (12_000, keep_alive(Failed), from_memory(2900, false)),
                    (14_100, keep_alive(Failed), from_memory(5000, true)),
                ],
            ),
            (
                "losing (or running out of time in) the campaign steps down",
                vec![
                    (9000, keep_alive(LeaseNotFound), campaign_until(9000)),
                    (14_000, CampaignEnded { won: false }, Verdict::StepDown),
                ],
            ),
            (
                "a lease that lapsed even while the key master answered is campaigned for",
                vec![
                    (1666, keep_alive(Renewed), Verdict::Lead),
                    (3333, keep_alive(LeaseNotFound), campaign_until(3333)),
                ],
            ),
        ];
        for (name, events) in table {
            let mut leadership = Leadership::new(LEASE, t0);
            for (at, event, want) in events {
                let now = ms(t0, at);
                let got = match event {
                    Event::KeepAlive(outcome) => leadership.keep_alive(outcome, now),
                    CampaignEnded { won } => leadership.campaign_ended(won, now),
                };
                assert_eq!(got, want, "{name}: at {at} ms");
            }
        }
    }

    #[test]
    fn the_lease_is_renewed_three_times_per_time_to_live() {
        let leadership = Leadership::new(Duration::from_secs(6), Instant::now());
        assert_eq!(leadership.keep_alive_every(), Duration::from_secs(2));
        assert_eq!(
            keep_alive_every(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_failed_campaign_is_retried_after_a_short_pause() {
        assert_eq!(
            CampaignFailure::LeaseGrant.retry_after(),
            Duration::from_millis(500)
        );
        assert_eq!(
            CampaignFailure::Campaign.retry_after(),
            Duration::from_millis(200)
        );
    }
}
