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
        let id = self.number(batch, key);
        batch.values.push((id, value));
    }

    /// Add text that goes with a series (a check's output) to `batch`.
    pub fn add_text(&mut self, batch: &mut SampleBatch, key: &SeriesKey, text: String) {
        let id = self.number(batch, key);
        batch.texts.push((id, text));
    }

    /// The series' number, defined in `batch` if it is new to the session.
    fn number(&mut self, batch: &mut SampleBatch, key: &SeriesKey) -> u32 {
        match self.ids.get(key) {
            Some(id) => *id,
            None => {
                let id = self.ids.len() as u32;
                self.ids.insert(key.clone(), id);
                batch.defs.push((id, key.clone()));
                id
            }
        }
    }
}

/// Most series a session may define: a misbehaving agent cannot grow the group
/// master's tables without bound.
pub const MAX_SERIES_PER_SESSION: usize = 4096;

/// The group master's side of one session: what each number stands for, resolved once
/// when the session defines it (`T`: e.g. the statistics store's series id), so a
/// batch costs no name lookups. Numbers index a vector: they must stay below
/// [`MAX_SERIES_PER_SESSION`].
#[derive(Debug)]
pub struct BatchReader<T> {
    resolved: Vec<Option<T>>,
}

impl<T> Default for BatchReader<T> {
    fn default() -> Self {
        BatchReader {
            resolved: Vec::new(),
        }
    }
}

impl<T: Copy> BatchReader<T> {
    /// What number `id` was resolved to (after a [`BatchReader::read`] that defined it).
    pub fn get(&self, id: u32) -> Option<T> {
        self.resolved.get(id as usize).copied().flatten()
    }

    /// The samples of `batch`, each series resolved with `resolve` the first time the
    /// session defines it. Numbers the session never defined are an error.
    pub fn read<E: std::fmt::Display>(
        &mut self,
        batch: &SampleBatch,
        mut resolve: impl FnMut(&SeriesKey) -> Result<T, E>,
    ) -> Result<Vec<(T, f64)>, String> {
        for (id, key) in &batch.defs {
            let id = *id as usize;
            if id >= MAX_SERIES_PER_SESSION {
                return Err(format!(
                    "series number {id}: at most {MAX_SERIES_PER_SESSION} series in one session"
                ));
            }
            if self.resolved.len() <= id {
                self.resolved.resize(id + 1, None);
            }
            self.resolved[id] = Some(resolve(key).map_err(|e| e.to_string())?);
        }
        batch
            .values
            .iter()
            .map(|(id, value)| match self.resolved.get(*id as usize) {
                Some(Some(t)) => Ok((*t, *value)),
                _ => Err(format!("series {id} was never defined")),
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
        let mut names: Vec<SeriesKey> = Vec::new();
        let mut resolve = |key: &SeriesKey| -> Result<usize, String> {
            names.push(key.clone());
            Ok(names.len() - 1)
        };
        let first = writer.batch(1, [(&cpu, 10.0), (&load, 0.5)]);
        assert_eq!(first.defs.len(), 2);
        let second = writer.batch(2, [(&cpu, 11.0), (&load, 0.6)]);
        assert!(second.defs.is_empty());
        assert_eq!(
            reader.read(&first, &mut resolve).unwrap(),
            vec![(0, 10.0), (1, 0.5)]
        );
        assert_eq!(
            reader.read(&second, &mut resolve).unwrap(),
            vec![(0, 11.0), (1, 0.6)]
        );
        assert_eq!(names, vec![cpu, load], "each name resolved once");
        // A new session on the group master's side knows no numbers.
        let err = BatchReader::<usize>::default()
            .read(&second, |_| Ok::<_, String>(0))
            .unwrap_err();
        assert!(err.contains("never defined"), "{err}");
        // Numbers past the limit are refused, not allocated.
        let huge = SampleBatch {
            at_ms: 0,
            defs: vec![(u32::MAX, SeriesKey::new("x"))],
            values: vec![],
            texts: vec![],
        };
        assert!(BatchReader::<usize>::default()
            .read(&huge, |_| Ok::<_, String>(0))
            .is_err());
    }
}
