//! The admission decision: plain code over plain data, with time passed in.
//!
//! An attempt offered while fewer than `in_flight` are served and nobody waits is
//! admitted at once. Otherwise it joins the queue if there is room, and is refused if
//! not. A waiting attempt is admitted, oldest first, when a slot is released; one that
//! has waited longer than `max_wait` is refused instead, even if a slot is free by
//! then (the client is about to give up on it).
//!
//! The items are whatever the driver needs to answer an attempt later (a quinn
//! `Incoming` there, plain numbers in the tests): each decision hands the item back,
//! so an attempt can never be answered twice or forgotten.

use std::collections::VecDeque;
use std::time::Instant;

use super::Limits;

/// What to do with an attempt just offered.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// Serve it now; it holds a slot until [`Admission::release`].
    Admit(T),
    /// It waits in the queue; [`Admission::poll`] hands it back later.
    Queued,
    /// The queue is full: refuse it now.
    Refuse(T),
}

/// What became of a waiting attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready<T> {
    /// A slot is free: serve it; it holds the slot until [`Admission::release`].
    Admit(T),
    /// It waited longer than `max_wait`: refuse it.
    Expired(T),
}

/// Totals since the start, for the log and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Attempts served at this moment.
    pub in_flight: usize,
    /// Attempts waiting at this moment.
    pub waiting: usize,
    /// Attempts that were put in the queue.
    pub queued: u64,
    /// Attempts admitted from the queue (rather than at once).
    pub admitted_from_queue: u64,
    /// Attempts refused, for whatever reason.
    pub refused: u64,
    /// Of those, attempts refused because they waited longer than `max_wait`.
    pub expired: u64,
}

/// Admission control for one endpoint's ordinary attempts.
#[derive(Debug)]
pub struct Admission<T> {
    limits: Limits,
    in_flight: usize,
    /// Waiting attempts with the moment each arrived, oldest first.
    waiting: VecDeque<(T, Instant)>,
    stats: AdmissionStats,
}

impl<T> Admission<T> {
    pub fn new(limits: Limits) -> Self {
        Admission {
            limits,
            in_flight: 0,
            waiting: VecDeque::new(),
            stats: AdmissionStats::default(),
        }
    }

    fn has_room(&self) -> bool {
        self.in_flight < self.limits.in_flight
    }

    /// An attempt arrived at `now`.
    pub fn offer(&mut self, item: T, now: Instant) -> Offer<T> {
        // Nobody overtakes an attempt that is already waiting.
        if self.waiting.is_empty() && self.has_room() {
            self.in_flight += 1;
            Offer::Admit(item)
        } else if self.waiting.len() < self.limits.queue {
            self.waiting.push_back((item, now));
            self.stats.queued += 1;
            Offer::Queued
        } else {
            self.stats.refused += 1;
            Offer::Refuse(item)
        }
    }

    /// `slots` served attempts have ended.
    pub fn release(&mut self, slots: usize) {
        self.in_flight = self.in_flight.saturating_sub(slots);
    }

    /// The next waiting attempt that can be decided at `now`: admitted if a slot is
    /// free, refused if it waited too long. None while the oldest must keep waiting
    /// (or nobody waits). Call until None.
    pub fn poll(&mut self, now: Instant) -> Option<Ready<T>> {
        let (_, since) = self.waiting.front()?;
        let expired = now.saturating_duration_since(*since) > self.limits.max_wait;
        if !expired && !self.has_room() {
            return None;
        }
        let (item, _) = self.waiting.pop_front()?;
        if expired {
            self.stats.refused += 1;
            self.stats.expired += 1;
            Some(Ready::Expired(item))
        } else {
            self.in_flight += 1;
            self.stats.admitted_from_queue += 1;
            Some(Ready::Admit(item))
        }
    }

    /// When the oldest waiting attempt runs out of time (None: nobody waits). Call
    /// [`Admission::poll`] again then.
    pub fn deadline(&self) -> Option<Instant> {
        self.waiting
            .front()
            .map(|(_, since)| *since + self.limits.max_wait)
    }

    /// Whether an attempt waits (for a slot or its deadline).
    pub fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Take every waiting attempt out (shutdown: they are all refused).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.waiting.drain(..).map(|(item, _)| item)
    }

    pub fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            in_flight: self.in_flight,
            waiting: self.waiting.len(),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn limits(in_flight: usize, queue: usize, max_wait_ms: u64) -> Limits {
        Limits {
            in_flight,
            queue,
            max_wait: Duration::from_millis(max_wait_ms),
        }
    }

    /// One step of a scenario and what it must decide.
    #[derive(Debug)]
    enum Step {
        /// Attempt `id` arrives at the time given; the offer's outcome.
        Arrive(u32, Offer<u32>),
        /// Served attempts end.
        Release(usize),
        /// Everything `poll` decides at the time given, in order.
        Poll(Vec<Ready<u32>>),
    }
    use Step::*;

    fn run(limits: Limits, steps: Vec<(u64, Step)>) -> Admission<u32> {
        let t0 = Instant::now();
        let mut a = Admission::new(limits);
        for (i, (at, step)) in steps.into_iter().enumerate() {
            let now = ms(t0, at);
            match step {
                Arrive(id, want) => assert_eq!(a.offer(id, now), want, "step {i} at {at} ms"),
                Release(n) => a.release(n),
                Poll(want) => {
                    let got: Vec<_> = std::iter::from_fn(|| a.poll(now)).collect();
                    assert_eq!(got, want, "step {i} at {at} ms");
                }
            }
        }
        a
    }

    #[test]
    fn scenarios() {
        use super::Offer::{Admit as A, Queued as Q, Refuse as R};
        use Ready::{Admit as RA, Expired as RE};
        // (what, limits, steps at their time in ms, the stats at the end)
        type Case = (&'static str, Limits, Vec<(u64, Step)>, AdmissionStats);
        let table: Vec<Case> = vec![
            (
                "under the limit everyone is admitted at once",
                limits(2, 4, 1000),
                vec![
                    (0, Arrive(1, A(1))),
                    (1, Arrive(2, A(2))),
                    (2, Poll(vec![])),
                ],
                AdmissionStats {
                    in_flight: 2,
                    ..Default::default()
                },
            ),
            (
                "without a queue the attempt beyond the limit is refused",
                limits(1, 0, 1000),
                vec![(0, Arrive(1, A(1))), (1, Arrive(2, R(2)))],
                AdmissionStats {
                    in_flight: 1,
                    refused: 1,
                    ..Default::default()
                },
            ),
            (
                "a waiting attempt is admitted when a slot is released",
                limits(1, 4, 1000),
                vec![
                    (0, Arrive(1, A(1))),
                    (10, Arrive(2, Q)),
                    (500, Poll(vec![])),
                    (600, Release(1)),
                    (600, Poll(vec![RA(2)])),
                ],
                AdmissionStats {
                    in_flight: 1,
                    queued: 1,
                    admitted_from_queue: 1,
                    ..Default::default()
                },
            ),
            (
                "waiting attempts are admitted oldest first, one per free slot",
                limits(2, 4, 1000),
                vec![
                    (0, Arrive(1, A(1))),
                    (0, Arrive(2, A(2))),
                    (10, Arrive(3, Q)),
                    (20, Arrive(4, Q)),
                    (30, Arrive(5, Q)),
                    (100, Release(2)),
                    (100, Poll(vec![RA(3), RA(4)])),
                ],
                AdmissionStats {
                    in_flight: 2,
                    waiting: 1,
                    queued: 3,
                    admitted_from_queue: 2,
                    ..Default::default()
                },
            ),
            (
                "a new attempt does not overtake a waiting one, even with a slot free",
                limits(1, 4, 1000),
                vec![
                    (0, Arrive(1, A(1))),
                    (10, Arrive(2, Q)),
                    (20, Release(1)),
                    (20, Arrive(3, Q)),
                    (20, Poll(vec![RA(2)])),
                ],
                AdmissionStats {
                    in_flight: 1,
                    waiting: 1,
                    queued: 2,
                    admitted_from_queue: 1,
                    ..Default::default()
                },
            ),
            (
                "a full queue refuses at once",
                limits(1, 2, 1000),
                vec![
                    (0, Arrive(1, A(1))),
                    (1, Arrive(2, Q)),
                    (2, Arrive(3, Q)),
                    (3, Arrive(4, R(4))),
                ],
                AdmissionStats {
                    in_flight: 1,
                    waiting: 2,
                    queued: 2,
                    refused: 1,
                    ..Default::default()
                },
            ),
            (
                "an attempt is refused only once it waited longer than max_wait",
                limits(1, 4, 300),
                vec![
                    (0, Arrive(1, A(1))),
                    (100, Arrive(2, Q)),
                    (400, Poll(vec![])),
                    (401, Poll(vec![RE(2)])),
                ],
                AdmissionStats {
                    in_flight: 1,
                    queued: 1,
                    refused: 1,
                    expired: 1,
                    ..Default::default()
                },
            ),
            (
                "an attempt that waited too long is refused even if a slot is free by then",
                limits(1, 4, 300),
                vec![
                    (0, Arrive(1, A(1))),
                    (0, Arrive(2, Q)),
                    (250, Arrive(3, Q)),
                    (500, Release(1)),
                    (500, Poll(vec![RE(2), RA(3)])),
                ],
                AdmissionStats {
                    in_flight: 1,
                    queued: 2,
                    admitted_from_queue: 1,
                    refused: 1,
                    expired: 1,
                    ..Default::default()
                },
            ),
            (
                "a released slot is taken by the next arrival when nobody waits",
                limits(1, 0, 0),
                vec![
                    (0, Arrive(1, A(1))),
                    (1, Arrive(2, R(2))),
                    (2, Release(1)),
                    (3, Arrive(3, A(3))),
                ],
                AdmissionStats {
                    in_flight: 1,
                    refused: 1,
                    ..Default::default()
                },
            ),
            (
                "unlimited admits everyone and queues nobody",
                Limits::UNLIMITED,
                (0..100)
                    .map(|i| (i, Arrive(i as u32, A(i as u32))))
                    .collect(),
                AdmissionStats {
                    in_flight: 100,
                    ..Default::default()
                },
            ),
        ];
        for (name, limits, steps, want) in table {
            let a = run(limits, steps);
            assert_eq!(a.stats(), want, "{name}");
        }
    }

    #[test]
    fn the_deadline_is_the_oldest_attempts_arrival_plus_max_wait() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(1, 4, 300));
        assert_eq!(a.deadline(), None);
        assert_eq!(a.offer(1, t0), Offer::Admit(1));
        assert_eq!(a.deadline(), None, "nobody waits");
        assert_eq!(a.offer(2, ms(t0, 100)), Offer::Queued);
        assert_eq!(a.offer(3, ms(t0, 200)), Offer::Queued);
        assert_eq!(a.deadline(), Some(ms(t0, 400)));
        assert_eq!(a.poll(ms(t0, 401)), Some(Ready::Expired(2)));
        assert_eq!(a.deadline(), Some(ms(t0, 500)));
        assert!(a.is_waiting());
    }

    #[test]
    fn drain_hands_back_every_waiting_attempt_in_order() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(1, 4, 300));
        a.offer(1, t0);
        a.offer(2, t0);
        a.offer(3, t0);
        assert_eq!(a.drain().collect::<Vec<_>>(), vec![2, 3]);
        assert!(!a.is_waiting());
        assert_eq!(a.poll(ms(t0, 1000)), None);
    }
}
