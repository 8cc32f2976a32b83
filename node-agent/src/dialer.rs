//! Which master to try next: a pure decision over the addresses the agent knows, what
//! refused it and where it was redirected, so the order is unit-tested without sockets.
//!
//! Used for the group masters of a session (the master just lost goes last, and is
//! skipped once a standby has said it is about to take over) and for the cluster
//! masters asked where a group is led. A refusal that names a leader not already
//! coming up in this round puts it next (one already coming up keeps its place). At
//! most [`MAX_TRIES`] addresses are tried in one round.

use std::net::SocketAddr;

/// Addresses tried in one round at most, redirects included (a loop of redirects
/// between confused masters ends here).
pub const MAX_TRIES: usize = 8;

#[derive(Debug)]
pub struct Dialer {
    candidates: Vec<SocketAddr>,
    next: usize,
    /// The master whose session was just lost.
    avoid: Option<SocketAddr>,
    /// A standby answered that it is not active yet: it is about to be promoted.
    standby_answered: bool,
}

impl Dialer {
    /// `known` in order, except `avoid` (when known), which goes last.
    pub fn new(known: &[SocketAddr], avoid: Option<SocketAddr>) -> Self {
        let mut candidates: Vec<SocketAddr> = known
            .iter()
            .copied()
            .filter(|a| Some(*a) != avoid)
            .collect();
        candidates.extend(avoid.filter(|a| known.contains(a)));
        Dialer {
            candidates,
            next: 0,
            avoid,
            standby_answered: false,
        }
    }

    /// The next address to try, or None when the round is over.
    pub fn next_addr(&mut self) -> Option<SocketAddr> {
        while self.next < self.candidates.len() && self.next < MAX_TRIES {
            let addr = self.candidates[self.next];
            self.next += 1;
            if Some(addr) == self.avoid && self.standby_answered {
                // A standby is alive and about to be promoted: the master we lost is
                // not worth a connect timeout now. Retry the standby shortly instead.
                continue;
            }
            return Some(addr);
        }
        None
    }

    /// The address just tried refused us; `standby` if it said it is not active yet,
    /// `redirect` if it named the master to go to instead (tried next).
    pub fn refused(&mut self, standby: bool, redirect: Option<SocketAddr>) {
        self.standby_answered |= standby;
        if let Some(to) = redirect
            .filter(|to| !self.candidates[self.next..].contains(to) && Some(*to) != self.avoid)
        {
            self.candidates.insert(self.next, to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn round(d: &mut Dialer) -> Vec<u16> {
        std::iter::from_fn(|| d.next_addr())
            .map(|x| x.port())
            .collect()
    }

    #[test]
    fn known_masters_in_order_and_the_lost_one_last() {
        assert_eq!(round(&mut Dialer::new(&[a(1), a(2)], None)), [1, 2]);
        assert_eq!(round(&mut Dialer::new(&[a(1), a(2)], Some(a(1)))), [2, 1]);
        // An avoided master we no longer know of is not tried.
        assert_eq!(round(&mut Dialer::new(&[a(1), a(2)], Some(a(9)))), [1, 2]);
        assert_eq!(round(&mut Dialer::new(&[], None)), Vec::<u16>::new());
    }

    #[test]
    fn a_redirect_is_tried_next_once() {
        let mut d = Dialer::new(&[a(1), a(2)], None);
        assert_eq!(d.next_addr(), Some(a(1)));
        d.refused(false, Some(a(3)));
        assert_eq!(d.next_addr(), Some(a(3)));
        // Redirected to one already coming up: not added twice.
        d.refused(false, Some(a(2)));
        assert_eq!(round(&mut d), [2]);
    }

    #[test]
    fn an_answering_standby_skips_the_lost_master() {
        let mut d = Dialer::new(&[a(1), a(2)], Some(a(1)));
        assert_eq!(d.next_addr(), Some(a(2)));
        d.refused(true, None);
        assert_eq!(d.next_addr(), None, "the lost master is skipped");
        // Without a standby's answer, the lost master is still tried last.
        let mut d = Dialer::new(&[a(1), a(2)], Some(a(1)));
        assert_eq!(d.next_addr(), Some(a(2)));
        d.refused(false, None);
        assert_eq!(d.next_addr(), Some(a(1)));
    }

    #[test]
    fn a_redirect_to_the_lost_master_is_ignored() {
        let mut d = Dialer::new(&[a(1), a(2)], Some(a(1)));
        assert_eq!(d.next_addr(), Some(a(2)));
        d.refused(true, Some(a(1)));
        assert_eq!(d.next_addr(), None);
    }

    #[test]
    fn redirect_loops_end_after_max_tries() {
        let mut d = Dialer::new(&[a(1)], None);
        let mut tried = 0;
        let mut port = 100;
        while d.next_addr().is_some() {
            tried += 1;
            port += 1;
            d.refused(false, Some(a(port)));
        }
        assert_eq!(tried, MAX_TRIES);
    }
}
