//! Whether the leading cluster master keeps leading: plain code over plain data, with
//! time passed in.
//!
//! The leader renews its lease every third of the lease's time to live. A renewal the
//! key master does not answer changes nothing at first: the leader keeps serving from
//! memory. But it cannot tell an outage of the key master from a partition that cuts
//! only itself off, and in a partition a standby takes over as soon as the key master
//! lets the lease go. So once [`step_down_after`] has passed since the last renewal
//! was sent (the key master counts the lease from when it received it, never earlier)
//! the leader steps down, before the lease can run out: two masters never lead at
//! once, and the group masters go to the one that can write. The key master saying
//! the lease is gone (it expired while the master was paused) makes the leader
//! campaign again at once, for at most one time to live: it keeps leading if it wins
//! (nobody else took over), and steps down otherwise. A standby that failed to
//! campaign tries again after a short pause.

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
    /// Keep leading from memory while the key master does not answer, for now.
    LeadFromMemory {
        /// Since the last renewal (or the grant) was asked for.
        since_renewed: Duration,
    },
    /// The lease is gone: campaign again, and give up at `until` (the driver enforces
    /// it), then report with [`Leadership::campaign_ended`].
    Campaign { until: Instant },
    /// Another master may lead now, or soon: stop.
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

    /// When the leader must have stepped down if no renewal succeeds before: the
    /// driver waits for a keep-alive's answer until then at most.
    pub(crate) fn step_down_at(&self) -> Instant {
        self.last_renewed + step_down_after(self.lease)
    }

    /// A keep-alive sent at `sent` came back (or gave up) at `now` with `outcome`.
    pub(crate) fn keep_alive(
        &mut self,
        outcome: KeepAlive,
        sent: Instant,
        now: Instant,
    ) -> Verdict {
        match outcome {
            KeepAlive::Renewed => {
                self.last_renewed = self.last_renewed.max(sent);
                Verdict::Lead
            }
            KeepAlive::Failed if now >= self.step_down_at() => Verdict::StepDown,
            KeepAlive::Failed => Verdict::LeadFromMemory {
                since_renewed: now.saturating_duration_since(self.last_renewed),
            },
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

/// How long after its last renewal was sent a leader whose renewals go unanswered
/// steps down: a sixth of the lease before the key master can let it go, which leaves
/// room for the step itself and for the two clocks' rates to differ.
pub(crate) fn step_down_after(lease: Duration) -> Duration {
    lease - lease / 6
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

    fn from_memory(since_renewed_ms: u64) -> Verdict {
        Verdict::LeadFromMemory {
            since_renewed: Duration::from_millis(since_renewed_ms),
        }
    }

    /// Keep-alives are answered (or given up on) this long after they were sent.
    const ANSWER_MS: u64 = 50;

    #[test]
    fn scenarios() {
        let t0 = Instant::now();
        let campaign_until = |at_ms| Verdict::Campaign {
            until: ms(t0, at_ms) + LEASE,
        };
        // A lease of 5 s: the leader steps down 4,167 ms after its last renewal was
        // sent, unless one succeeds before.
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
                "unanswered keep-alives lead from memory, then step down before the lease can lapse",
                vec![
                    (1666, keep_alive(Renewed), Verdict::Lead),
                    (3333, keep_alive(Failed), from_memory(1717)),
                    (5000, keep_alive(Failed), from_memory(3384)),
                    (5782, keep_alive(Failed), from_memory(4166)),
                    (5783, keep_alive(Failed), Verdict::StepDown),
                ],
            ),
            (
                "an outage from the start counts from winning",
                vec![
                    (4166, keep_alive(Failed), from_memory(4166)),
                    (4167, keep_alive(Failed), Verdict::StepDown),
                ],
            ),
            (
                "a renewal counts from when it was asked for, and ends a run of failures",
                vec![
                    (1666, keep_alive(Renewed), Verdict::Lead),
                    (3333, keep_alive(Failed), from_memory(1717)),
                    (5000, keep_alive(Renewed), Verdict::Lead),
                    (9116, keep_alive(Failed), from_memory(4166)),
                    (9117, keep_alive(Failed), Verdict::StepDown),
                ],
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
                    (12_000, keep_alive(Failed), from_memory(2900)),
                    (13_267, keep_alive(Failed), Verdict::StepDown),
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
                    Event::KeepAlive(outcome) => {
                        let sent = now - Duration::from_millis(ANSWER_MS);
                        leadership.keep_alive(outcome, sent, now)
                    }
                    CampaignEnded { won } => leadership.campaign_ended(won, now),
                };
                assert_eq!(got, want, "{name}: at {at} ms");
            }
        }
    }

    #[test]
    fn a_leader_steps_down_a_sixth_of_its_lease_before_it_can_lapse() {
        assert_eq!(
            step_down_after(Duration::from_secs(3)),
            Duration::from_millis(2500)
        );
        let t0 = Instant::now();
        let leadership = Leadership::new(Duration::from_secs(6), t0);
        assert_eq!(leadership.step_down_at(), t0 + Duration::from_secs(5));
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
