//! Which pieces a peer has, which its neighbours have, and which to ask for next:
//! the rarest piece nobody is fetching yet (ties broken from a random place, so that
//! peers starting together spread over the file), then, once every missing piece is
//! being fetched by someone, the end game: a piece another connection is fetching,
//! least duplicated first. Pure: the connections hold the lock around it.

/// The pieces of one torrent as this peer sees them.
#[derive(Debug)]
pub struct Pieces {
    pub hashes: Vec<[u8; 20]>,
    pub piece_length: u64,
    pub length: u64,
    have: Vec<bool>,
    have_count: usize,
    /// How many connected peers have each piece.
    avail: Vec<u32>,
    /// How many of our connections are fetching each piece.
    fetching: Vec<u32>,
    /// Pieces given up unfinished so far (nobody fetches them any more).
    freed: u64,
}

impl Pieces {
    pub fn new(hashes: Vec<[u8; 20]>, piece_length: u64, length: u64) -> Pieces {
        let n = hashes.len();
        Pieces {
            hashes,
            piece_length,
            length,
            have: vec![false; n],
            have_count: 0,
            avail: vec![0; n],
            fetching: vec![0; n],
            freed: 0,
        }
    }

    pub fn count(&self) -> usize {
        self.hashes.len()
    }

    /// The length of piece `p` (the last is shorter).
    pub fn size(&self, p: u32) -> u32 {
        let start = p as u64 * self.piece_length;
        (self.length - start).min(self.piece_length) as u32
    }

    pub fn has(&self, p: u32) -> bool {
        self.have.get(p as usize).copied().unwrap_or(false)
    }

    pub fn have_count(&self) -> usize {
        self.have_count
    }

    /// Fetch `p` (news from a neighbour) if we lack it and nobody is fetching it.
    pub fn take(&mut self, p: u32) -> bool {
        let i = p as usize;
        let free = !self.have[i] && self.fetching[i] == 0;
        if free {
            self.fetching[i] += 1;
        }
        free
    }

    pub fn complete(&self) -> bool {
        self.have_count == self.hashes.len()
    }

    /// Bytes still missing.
    pub fn left(&self) -> u64 {
        (0..self.count() as u32)
            .filter(|p| !self.has(*p))
            .map(|p| self.size(p) as u64)
            .sum()
    }

    /// Our pieces as a bitfield message's payload.
    pub fn bitfield(&self) -> Vec<u8> {
        to_bitfield(&self.have)
    }

    /// Piece `p` is verified and stored: true if it is new to us.
    pub fn got(&mut self, p: u32) -> bool {
        let i = p as usize;
        if self.have[i] {
            return false;
        }
        self.have[i] = true;
        self.have_count += 1;
        true
    }

    /// A neighbour gained `p` (`+1`) or left with it (`-1`).
    pub fn seen(&mut self, p: u32, up: bool) {
        let a = &mut self.avail[p as usize];
        *a = if up { *a + 1 } else { a.saturating_sub(1) };
    }

    /// A connection stopped fetching `p` (done, refused, choked or gone).
    pub fn release(&mut self, p: u32) {
        let i = p as usize;
        let f = &mut self.fetching[i];
        *f = f.saturating_sub(1);
        if *f == 0 && !self.have[i] {
            self.freed += 1;
        }
    }

    /// Counts the pieces given up unfinished: a connection that found nothing to ask
    /// for searches again when this changes.
    pub fn freed(&self) -> u64 {
        self.freed
    }

    /// The next piece to fetch from a neighbour that has `theirs`, by a connection
    /// already fetching `mine`; `start` is where ties start (random per call). The
    /// piece counts as fetched by that connection until [`Pieces::release`].
    pub fn pick(&mut self, theirs: &[bool], mine: &[u32], start: usize) -> Option<u32> {
        let n = self.count();
        if n == 0 || self.complete() {
            return None;
        }
        let wanted = |p: usize| theirs[p] && !self.have[p];
        let mut best: Option<(u32, usize)> = None;
        let mut spare: Option<(u32, usize)> = None;
        for k in 0..n {
            let p = (start + k) % n;
            if !wanted(p) {
                continue;
            }
            if self.fetching[p] == 0 {
                if best.is_none_or(|(a, _)| self.avail[p] < a) {
                    best = Some((self.avail[p], p));
                }
            } else if !mine.contains(&(p as u32)) && spare.is_none_or(|(f, _)| self.fetching[p] < f)
            {
                spare = Some((self.fetching[p], p));
            }
        }
        // The end game only once nothing is left unclaimed anywhere: before that a
        // duplicate request takes bandwidth a missing piece could have.
        let p = match best {
            Some((_, p)) => p,
            None if self
                .fetching
                .iter()
                .zip(&self.have)
                .all(|(f, h)| *h || *f > 0) =>
            {
                spare?.1
            }
            None => return None,
        };
        self.fetching[p] += 1;
        Some(p as u32)
    }
}

/// Booleans as a bitfield (the first piece is the high bit of the first byte).
pub fn to_bitfield(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, b) in bits.iter().enumerate() {
        if *b {
            out[i / 8] |= 0x80 >> (i % 8);
        }
    }
    out
}

/// A bitfield message's payload for `n` pieces; `None` if its length is wrong or a
/// spare bit is set.
pub fn from_bitfield(bytes: &[u8], n: usize) -> Option<Vec<bool>> {
    if bytes.len() != n.div_ceil(8) {
        return None;
    }
    let bits: Vec<bool> = (0..bytes.len() * 8)
        .map(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0)
        .collect();
    if bits[n..].iter().any(|b| *b) {
        return None;
    }
    Some(bits[..n].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(n: usize) -> Pieces {
        Pieces::new(vec![[0; 20]; n], 64, 64 * n as u64 - 10)
    }

    #[test]
    fn bitfields_round_trip_and_refuse_spare_bits() {
        let bits = vec![true, false, true, true, false, false, false, false, true];
        let bytes = to_bitfield(&bits);
        assert_eq!(bytes, vec![0b1011_0000, 0b1000_0000]);
        assert_eq!(from_bitfield(&bytes, 9), Some(bits));
        assert_eq!(from_bitfield(&[0b1011_0000, 0b1100_0000], 9), None);
        assert_eq!(from_bitfield(&[0], 9), None);
    }

    #[test]
    fn sizes_and_what_is_left() {
        let mut p = pieces(3);
        assert_eq!((p.size(0), p.size(2)), (64, 54));
        assert_eq!(p.left(), 182);
        assert!(p.got(2));
        assert!(!p.got(2));
        assert_eq!(p.left(), 128);
        assert_eq!(p.bitfield(), vec![0b0010_0000]);
    }

    #[test]
    fn the_rarest_unclaimed_piece_comes_first_then_the_end_game() {
        let mut p = pieces(4);
        let all = [true; 4];
        // Pieces 0 and 1 are held by two neighbours, 2 and 3 by one.
        for (piece, times) in [(0, 2), (1, 2), (2, 1), (3, 1)] {
            for _ in 0..times {
                p.seen(piece, true);
            }
        }
        let first = p.pick(&all, &[], 0).unwrap();
        assert_eq!(first, 2);
        assert_eq!(p.pick(&all, &[2], 0), Some(3));
        // Only what the neighbour has.
        assert_eq!(p.pick(&[true, false, false, false], &[], 0), Some(0));
        assert_eq!(p.pick(&all, &[2, 3, 0], 1), Some(1));
        // Everything is claimed: the end game takes another connection's piece, not
        // one of its own.
        assert_eq!(p.pick(&all, &[2, 3], 0), Some(0));
        // A piece we have is never asked for; a released piece is free again.
        assert!(p.got(1));
        p.release(3);
        assert_eq!(p.pick(&all, &[], 0), Some(3));
        assert!(p.got(0) && p.got(2) && p.got(3));
        assert!(p.complete());
        assert_eq!(p.pick(&all, &[], 0), None);
    }

    #[test]
    fn pieces_given_up_unfinished_are_counted() {
        let mut p = pieces(2);
        let all = [true; 2];
        let a = p.pick(&all, &[], 0).unwrap();
        let b = p.pick(&all, &[a], 0).unwrap();
        // Finished: not freed.
        assert!(p.got(a));
        p.release(a);
        assert_eq!(p.freed(), 0);
        // Given up (choked, gone, corrupt): freed, and free to pick again.
        p.release(b);
        assert_eq!(p.freed(), 1);
        assert_eq!(p.pick(&all, &[], 0), Some(b));
    }

    #[test]
    fn no_end_game_while_a_piece_is_unclaimed() {
        let mut p = pieces(2);
        assert_eq!(p.pick(&[true, false], &[], 0), Some(0));
        // This neighbour has only piece 0, claimed; piece 1 is unclaimed elsewhere.
        assert_eq!(p.pick(&[true, false], &[], 0), None);
    }
}
