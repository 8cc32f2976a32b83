//! Sample batches: series numbered once per session, so a batch carries numbers and
//! values, and a series' name only the first time.

use std::collections::HashMap;

use glory_protocol::monitoring::{SampleBatch, SeriesKey};

/// The agent's side of one session: numbers series as they first appear.
#[derive(Debug, Default)]
pub struct BatchWriter {
    ids: HashMap<SeriesKey, u32>,
}

impl BatchWriter {
    /// A batch of `samples` taken at `at_ms`.
    pub fn batch<'a>(
        &mut self,
        at_ms: u64,
        samples: impl IntoIterator<Item = (&'a SeriesKey, f64)>,
    ) -> SampleBatch {
        let mut batch = SampleBatch {
            at_ms,
            ..SampleBatch::default()
        };
        for (key, value) in samples {
            self.add(&mut batch, key, value);
        }
        batch
    }

    /// Add one sample to `batch`.
    pub fn add(&mut self, batch: &mut SampleBatch, key: &SeriesKey, value: f64) {
        let id = match self.ids.get(key) {
            Some(id) => *id,
            None => {
                let id = self.ids.len() as u32;
                self.ids.insert(key.clone(), id);
                batch.defs.push((id, key.clone()));
                id
            }
        };
        batch.values.push((id, value));
    }
}

/// Most series a session may define: a misbehaving agent cannot grow the group
/// master's tables without bound.
pub const MAX_SERIES_PER_SESSION: usize = 4096;

/// The group master's side of one session: what the numbers stand for.
#[derive(Debug, Default)]
pub struct BatchReader {
    keys: HashMap<u32, SeriesKey>,
}

impl BatchReader {
    /// The samples of `batch` by series; numbers the session never defined are an error.
    pub fn read<'a>(
        &'a mut self,
        batch: &SampleBatch,
    ) -> Result<Vec<(&'a SeriesKey, f64)>, String> {
        for (id, key) in &batch.defs {
            if self.keys.len() >= MAX_SERIES_PER_SESSION && !self.keys.contains_key(id) {
                return Err(format!(
                    "more than {MAX_SERIES_PER_SESSION} series in one session"
                ));
            }
            self.keys.insert(*id, key.clone());
        }
        batch
            .values
            .iter()
            .map(|(id, value)| match self.keys.get(id) {
                Some(key) => Ok((key, *value)),
                None => Err(format!("series {id} was never defined")),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_travel_once_per_session() {
        let (cpu, load) = (SeriesKey::new("cpu.percent"), SeriesKey::new("load.1"));
        let mut writer = BatchWriter::default();
        let mut reader = BatchReader::default();
        let first = writer.batch(1, [(&cpu, 10.0), (&load, 0.5)]);
        assert_eq!(first.defs.len(), 2);
        let second = writer.batch(2, [(&cpu, 11.0), (&load, 0.6)]);
        assert!(second.defs.is_empty());
        assert_eq!(
            reader.read(&first).unwrap(),
            vec![(&cpu, 10.0), (&load, 0.5)]
        );
        assert_eq!(
            reader.read(&second).unwrap(),
            vec![(&cpu, 11.0), (&load, 0.6)]
        );
        // A new session on the group master's side knows no numbers.
        let err = BatchReader::default().read(&second).unwrap_err();
        assert!(err.contains("never defined"), "{err}");
    }
}
