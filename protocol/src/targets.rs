//! Which cluster master to try next, for everything that dials one (agents and group
//! masters enrolling, a group master's link): the configured addresses in turn, and a
//! leader a standby named ahead of them. Pure: the callers keep the sockets, the
//! backoff and the logging.

use std::net::SocketAddr;

#[derive(Clone, Debug)]
pub struct Targets {
    candidates: Vec<SocketAddr>,
    /// Index in `candidates` of the last configured address tried.
    next: usize,
    current: SocketAddr,
}

impl Targets {
    /// Start at the first of `candidates`; None when there is none.
    pub fn new(candidates: &[SocketAddr]) -> Option<Self> {
        Some(Targets {
            current: *candidates.first()?,
            candidates: candidates.to_vec(),
            next: 0,
        })
    }

    /// The address to try now.
    pub fn current(&self) -> SocketAddr {
        self.current
    }

    /// The current address failed: move to the next configured one (round and round).
    pub fn failed(&mut self) {
        self.next = (self.next + 1) % self.candidates.len();
        self.current = self.candidates[self.next];
    }

    /// A refusal named `leader`: go there next. Returns whether that changed the target
    /// (a master that names itself, or no leader, changes nothing).
    pub fn redirect(&mut self, leader: Option<SocketAddr>) -> bool {
        match leader.filter(|to| *to != self.current) {
            Some(to) => {
                self.current = to;
                true
            }
            None => false,
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
}
