//! Which cluster master to try next, for everything that dials one (agents and group
//! masters enrolling, a group master's link): the configured addresses in turn, and a
//! leader a standby named ahead of them. Pure: the callers keep the sockets, the
//! backoff and the logging.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long an address that did not answer is passed over: a standby still naming
/// it as the leader (its lease has not run out yet) is not followed back to it, and
/// a refusal does not send us there while another address answers.
pub const SILENT_HOLD: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Targets {
    candidates: Vec<SocketAddr>,
    /// Index in `candidates` of the last configured address tried.
    next: usize,
    current: SocketAddr,
    /// The last address that did not answer, and when.
    silent: Option<(SocketAddr, Instant)>,
}

impl Targets {
    /// Start at the first of `candidates`; None when there is none.
    pub fn new(candidates: &[SocketAddr]) -> Option<Self> {
        Some(Targets {
            current: *candidates.first()?,
            candidates: candidates.to_vec(),
            next: 0,
            silent: None,
        })
    }

    /// The address to try now.
    pub fn current(&self) -> SocketAddr {
        self.current
    }

    /// The current address did not answer: move to the next configured one that is
    /// not the current one (round and round).
    pub fn failed(&mut self) {
        self.failed_at(Instant::now())
    }

    pub fn failed_at(&mut self, now: Instant) {
        self.silent = Some((self.current, now));
        self.move_on(now);
    }

    /// The current address answered but cannot serve us (a standby). When it named
    /// the leader, go there next unless that address just failed to answer; otherwise
    /// try another configured address that has not just failed, or this one again.
    /// Returns whether it followed a redirect.
    pub fn refused(&mut self, leader: Option<SocketAddr>) -> bool {
        self.refused_at(leader, Instant::now())
    }

    pub fn refused_at(&mut self, leader: Option<SocketAddr>, now: Instant) -> bool {
        if self.redirect_at(leader, now) {
            return true;
        }
        self.move_on(now);
        false
    }

    /// A refusal named `leader`: go there next. Returns whether that changed the target
    /// (a master that names itself, no leader, or one that just failed to answer
    /// changes nothing).
    pub fn redirect(&mut self, leader: Option<SocketAddr>) -> bool {
        self.redirect_at(leader, Instant::now())
    }

    pub fn redirect_at(&mut self, leader: Option<SocketAddr>, now: Instant) -> bool {
        match leader.filter(|to| *to != self.current && !self.is_silent(*to, now)) {
            Some(to) => {
                self.current = to;
                true
            }
            None => false,
        }
    }

    fn is_silent(&self, addr: SocketAddr, now: Instant) -> bool {
        self.silent
            .is_some_and(|(a, at)| a == addr && now.duration_since(at) < SILENT_HOLD)
    }

    /// The next configured address in turn that is neither the current one nor one
    /// that just failed; failing that, the next one other than a silent current one.
    fn move_on(&mut self, now: Instant) {
        let n = self.candidates.len();
        for step in 1..=n {
            let i = (self.next + step) % n;
            let c = self.candidates[i];
            if c != self.current && !self.is_silent(c, now) {
                self.next = i;
                self.current = c;
                return;
            }
        }
        if self.is_silent(self.current, now) {
            self.next = (self.next + 1) % n;
            self.current = self.candidates[self.next];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn failures_go_round_and_redirects_jump_the_queue() {
        assert!(Targets::new(&[]).is_none());
        let mut t = Targets::new(&[addr(1), addr(2), addr(3)]).unwrap();
        let mut seen = vec![t.current()];
        for _ in 0..3 {
            t.failed();
            seen.push(t.current());
        }
        assert_eq!(seen, [addr(1), addr(2), addr(3), addr(1)]);
        // A standby names the leader (even one not configured): tried next.
        assert!(t.redirect(Some(addr(9))));
        assert_eq!(t.current(), addr(9));
        // Naming the current target, or nobody, changes nothing.
        assert!(!t.redirect(Some(addr(9))));
        assert!(!t.redirect(None));
        // A failed leader hands over to the configured addresses again, in turn.
        t.failed();
        assert_eq!(t.current(), addr(2));
    }

    #[test]
    fn a_standby_naming_a_leader_that_just_failed_is_asked_again_not_followed() {
        // The cluster master at 1 led and died; 2 stands by until its lease runs out
        // and names 1 as the leader meanwhile.
        let (cm1, cm2) = (addr(1), addr(2));
        let now = Instant::now();
        let mut t = Targets::new(&[cm1, cm2]).unwrap();
        t.failed_at(now);
        assert_eq!(t.current(), cm2);
        // Not back to the dead leader: ask the standby again.
        assert!(!t.refused_at(Some(cm1), now));
        assert_eq!(t.current(), cm2);
        // A timeout to an address followed by a redirect does not send us back there.
        let mut t = Targets::new(&[cm1, cm2]).unwrap();
        t.failed_at(now);
        assert!(t.refused_at(Some(addr(9)), now));
        t.failed_at(now);
        assert_eq!(
            t.current(),
            cm1,
            "9 failed: the configured addresses in turn"
        );
        t.failed_at(now);
        assert_eq!(t.current(), cm2);
        // Once the hold has passed, a leader named is followed again (it may have
        // been cut off only for a moment).
        let later = now + SILENT_HOLD;
        assert!(t.refused_at(Some(cm1), later));
        assert_eq!(t.current(), cm1);
        // A refusal naming nobody moves to another address that answers, not to one
        // that just failed.
        let mut t = Targets::new(&[cm1, cm2, addr(3)]).unwrap();
        t.failed_at(now); // 1 silent, at 2
        assert!(!t.refused_at(None, now));
        assert_eq!(t.current(), addr(3));
        assert!(!t.refused_at(None, now));
        assert_eq!(t.current(), cm2, "1 is passed over while silent");
    }
}
