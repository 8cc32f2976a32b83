//! Rollups: min, max, sum and count of the samples in a time bucket. Rollups of
//! rollups give what rollups of the raw samples give, so 1-hour rollups are built from
//! 1-minute ones.

/// Summary of the samples of one series in one bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rollup {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: u32,
}

impl Rollup {
    /// One sample.
    pub fn of(value: f64) -> Self {
        Rollup {
            min: value,
            max: value,
            sum: value,
            count: 1,
        }
    }

    pub fn add(&mut self, value: f64) {
        self.merge(&Rollup::of(value));
    }

    pub fn merge(&mut self, other: &Rollup) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        self.count += other.count;
    }

    pub fn avg(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum / self.count as f64
        }
    }
}

/// The start of the bucket of width `width_ms` that holds `t_ms`.
pub fn bucket(t_ms: u64, width_ms: u64) -> u64 {
    t_ms - t_ms % width_ms.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rollups(samples: &[(u64, f64)], width: u64) -> Vec<(u64, Rollup)> {
        let mut out: Vec<(u64, Rollup)> = Vec::new();
        for (t, v) in samples {
            let b = bucket(*t, width);
            match out.iter_mut().find(|(s, _)| *s == b) {
                Some((_, r)) => r.add(*v),
                None => out.push((b, Rollup::of(*v))),
            }
        }
        out
    }

    proptest! {
        /// 1-hour rollups made from 1-minute rollups equal 1-hour rollups made from
        /// the raw samples: min, max and count exactly, sum within rounding.
        #[test]
        fn rollups_of_rollups_equal_rollups_of_samples(
            mut samples in prop::collection::vec((0u64..4 * 3_600_000, -1e6f64..1e6), 1..300)
        ) {
            samples.sort_by_key(|s| s.0);
            let direct = rollups(&samples, 3_600_000);
            let mut staged: Vec<(u64, Rollup)> = Vec::new();
            for (minute, r) in rollups(&samples, 60_000) {
                let hour = bucket(minute, 3_600_000);
                match staged.iter_mut().find(|(s, _)| *s == hour) {
                    Some((_, h)) => h.merge(&r),
                    None => staged.push((hour, r)),
                }
            }
            prop_assert_eq!(direct.len(), staged.len());
            for ((t1, a), (t2, b)) in direct.iter().zip(&staged) {
                prop_assert_eq!(t1, t2);
                prop_assert_eq!((a.min, a.max, a.count), (b.min, b.max, b.count));
                prop_assert!((a.sum - b.sum).abs() <= 1e-6 * a.sum.abs().max(1.0));
            }
        }
    }
}
