//! The agent's recent samples, kept across sessions so that a group master that lacks
//! them (a standby that took over, a master that restarted without its store, a link
//! that was down) gets them back: history has no gap longer than the buffer's reach.
//!
//! Compact on purpose (a simulation holds one per simulated node): a batch costs its
//! values (8 bytes each) and shares its list of series with the batch before when it is
//! the same, which it nearly always is.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use glory_protocol::monitoring::SeriesKey;

struct Entry {
    at_ms: u64,
    ids: Arc<[u32]>,
    values: Box<[f64]>,
}

/// Samples of the last `reach_ms`.
pub struct SampleBuffer {
    reach_ms: u64,
    keys: Vec<SeriesKey>,
    ids: HashMap<SeriesKey, u32>,
    entries: VecDeque<Entry>,
    staged_at: u64,
    staged_ids: Vec<u32>,
    staged_values: Vec<f64>,
}

impl SampleBuffer {
    pub fn new(reach_ms: u64) -> Self {
        SampleBuffer {
            reach_ms,
            keys: Vec::new(),
            ids: HashMap::new(),
            entries: VecDeque::new(),
            staged_at: 0,
            staged_ids: Vec::new(),
            staged_values: Vec::new(),
        }
    }

    /// Start the batch taken at `at_ms`; [`SampleBuffer::add`] its samples, then
    /// [`SampleBuffer::finish`] it.
    pub fn start(&mut self, at_ms: u64) {
        self.staged_at = at_ms;
        self.staged_ids.clear();
        self.staged_values.clear();
    }

    pub fn add(&mut self, key: &SeriesKey, value: f64) {
        if self.reach_ms == 0 {
            return;
        }
        let id = match self.ids.get(key) {
            Some(id) => *id,
            None => {
                let id = self.keys.len() as u32;
                self.keys.push(key.clone());
                self.ids.insert(key.clone(), id);
                id
            }
        };
        self.staged_ids.push(id);
        self.staged_values.push(value);
    }

    /// Keep the started batch; what is older than the reach goes.
    pub fn finish(&mut self) {
        if self.reach_ms == 0 || self.staged_ids.is_empty() {
            return;
        }
        let at_ms = self.staged_at;
        let ids = match self.entries.back() {
            Some(last) if *last.ids == *self.staged_ids => last.ids.clone(),
            _ => self.staged_ids.as_slice().into(),
        };
        self.entries.push_back(Entry {
            at_ms,
            ids,
            values: self.staged_values.as_slice().into(),
        });
        let cut = at_ms.saturating_sub(self.reach_ms);
        while self.entries.front().is_some_and(|e| e.at_ms < cut) {
            self.entries.pop_front();
        }
    }

    /// Keep the samples taken at `at_ms`.
    pub fn push(&mut self, at_ms: u64, samples: &[(SeriesKey, f64)]) {
        self.start(at_ms);
        for (key, value) in samples {
            self.add(key, *value);
        }
        self.finish();
    }

    /// The batches taken after `after_ms` (None: all) and before `before_ms`, oldest
    /// first (the newest of them first kept in the buffer).
    pub fn between(
        &self,
        after_ms: Option<u64>,
        before_ms: u64,
    ) -> impl Iterator<Item = (u64, Vec<(&SeriesKey, f64)>)> + '_ {
        self.entries
            .iter()
            .filter(move |e| after_ms.is_none_or(|a| e.at_ms > a) && e.at_ms < before_ms)
            .map(|e| {
                let samples = e
                    .ids
                    .iter()
                    .zip(e.values.iter())
                    .map(|(id, v)| (&self.keys[*id as usize], *v))
                    .collect();
                (e.at_ms, samples)
            })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_keeps_its_reach_and_gives_back_what_is_asked() {
        let mut b = SampleBuffer::new(60_000);
        let cpu = SeriesKey::new("cpu.percent");
        let load = SeriesKey::new("load.1");
        for i in 0..30u64 {
            let mut samples = vec![(cpu.clone(), i as f64)];
            if i % 10 == 0 {
                samples.push((load.clone(), 1.0));
            }
            b.push(i * 5_000, &samples);
        }
        // 145 s: what is older than 85 s is gone.
        assert_eq!(b.len(), 13);
        let got: Vec<_> = b.between(Some(100_000), 130_000).collect();
        assert_eq!(
            got.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![105_000, 110_000, 115_000, 120_000, 125_000]
        );
        assert_eq!(got[0].1, vec![(&cpu, 21.0)]);
        assert_eq!(b.between(None, u64::MAX).count(), 13);
        let at_100: Vec<_> = b.between(Some(95_000), 101_000).collect();
        assert_eq!(at_100[0].1, vec![(&cpu, 20.0), (&load, 1.0)]);
        let mut off = SampleBuffer::new(0);
        off.push(1, &[(cpu, 1.0)]);
        assert!(off.is_empty());
    }
}
