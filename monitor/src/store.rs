//! The statistics store a group master keeps for its nodes (SQLite): raw samples for
//! 6 hours, 1-minute rollups for 7 days, 1-hour rollups for 90 days.
//!
//! One row per node and interval, not per value: an agent's batch of about 40 values is
//! one row of packed `(series, value)` pairs, and a minute's or an hour's rollups of a
//! node are one row too. A group master of 250 nodes sampled every 5 s writes 50 rows a
//! second, in one transaction per interval ([`Store::commit`]), where a row per value
//! would be 2,000. Series names are numbered once in `series`.
//!
//! Queries pick the finest resolution that still holds the range, then fold its points
//! into buckets of the asked step.

use std::collections::HashMap;
use std::path::Path;

use glory_protocol::monitoring::{Point, SeriesKey};
use rusqlite::{params, Connection, OptionalExtension};

use crate::rollup::{bucket, Rollup};

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 3_600_000;

/// How long each resolution is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub raw_ms: u64,
    pub minute_ms: u64,
    pub hour_ms: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw_ms: 6 * HOUR_MS,
            minute_ms: 7 * 24 * HOUR_MS,
            hour_ms: 90 * 24 * HOUR_MS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("statistics store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("no history for node {0}")]
    UnknownNode(String),
}

/// The resolutions, finest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    Raw,
    Minute,
    Hour,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Raw => "raw",
            Table::Minute => "m1",
            Table::Hour => "h1",
        }
    }
}

/// What the store keeps in memory per node: its id and the minute its samples are in
/// (rollups are computed in SQL from the rows when a minute or an hour ends, so a node
/// costs a few dozen bytes here, not its series' running sums).
struct NodeState {
    id: i64,
    minute: u64,
}

pub struct Store {
    conn: Connection,
    retention: Retention,
    series: HashMap<SeriesKey, u32>,
    /// Series keys by id.
    keys: Vec<Option<SeriesKey>>,
    nodes: HashMap<String, NodeState>,
    /// Rows waiting for the next commit: (table, node id, t, data).
    pending: Vec<(Table, i64, u64, Vec<u8>)>,
    /// Minutes and hours that ended: (node id, start), rolled up from their rows at
    /// the next commit.
    minutes_due: Vec<(i64, u64)>,
    hours_due: Vec<(i64, u64)>,
    last_retention_ms: u64,
}

impl Store {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path, retention: Retention) -> Result<Self, StoreError> {
        Self::with(Connection::open(path)?, retention)
    }

    /// A store in memory (tests, simulations that keep no files).
    pub fn in_memory(retention: Retention) -> Result<Self, StoreError> {
        Self::with(Connection::open_in_memory()?, retention)
    }

    fn with(conn: Connection, retention: Retention) -> Result<Self, StoreError> {
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             PRAGMA cache_size=-128;
             CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
             CREATE TABLE IF NOT EXISTS nodes (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
             CREATE TABLE IF NOT EXISTS raw (node INTEGER, t INTEGER, data BLOB, PRIMARY KEY (node, t)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS m1 (node INTEGER, t INTEGER, data BLOB, PRIMARY KEY (node, t)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS h1 (node INTEGER, t INTEGER, data BLOB, PRIMARY KEY (node, t)) WITHOUT ROWID;",
        )?;
        let mut store = Store {
            conn,
            retention,
            series: HashMap::new(),
            keys: Vec::new(),
            nodes: HashMap::new(),
            pending: Vec::new(),
            minutes_due: Vec::new(),
            hours_due: Vec::new(),
            last_retention_ms: 0,
        };
        let known: Vec<(u32, String)> = {
            let mut stmt = store.conn.prepare("SELECT id, key FROM series")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, key) in known {
            store.remember(id, parse_key(&key));
        }
        Ok(store)
    }

    fn remember(&mut self, id: u32, key: SeriesKey) {
        let at = id as usize;
        if self.keys.len() <= at {
            self.keys.resize(at + 1, None);
        }
        self.keys[at] = Some(key.clone());
        self.series.insert(key, id);
    }

    /// The series named by `id`.
    pub fn key(&self, id: u32) -> Option<&SeriesKey> {
        self.keys.get(id as usize)?.as_ref()
    }

    /// The id of series `key` (numbered the first time it is seen).
    pub fn series_id(&mut self, key: &SeriesKey) -> Result<u32, StoreError> {
        if let Some(id) = self.series.get(key) {
            return Ok(*id);
        }
        self.conn.execute(
            "INSERT OR IGNORE INTO series (key) VALUES (?1)",
            params![key.to_string()],
        )?;
        let id: u32 = self.conn.query_row(
            "SELECT id FROM series WHERE key = ?1",
            params![key.to_string()],
            |r| r.get(0),
        )?;
        self.remember(id, key.clone());
        Ok(id)
    }

    fn node(&mut self, name: &str) -> Result<&mut NodeState, StoreError> {
        if !self.nodes.contains_key(name) {
            self.conn.execute(
                "INSERT OR IGNORE INTO nodes (name) VALUES (?1)",
                params![name],
            )?;
            let id: i64 = self.conn.query_row(
                "SELECT id FROM nodes WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )?;
            self.nodes
                .insert(name.to_string(), NodeState { id, minute: 0 });
        }
        Ok(self.nodes.get_mut(name).expect("inserted above"))
    }

    /// A node's samples taken at `t_ms`, by series id ([`Store::series_id`]); written
    /// at the next [`Store::commit`].
    pub fn ingest(
        &mut self,
        node: &str,
        t_ms: u64,
        values: &[(u32, f64)],
    ) -> Result<(), StoreError> {
        let raw = encode_values(values);
        let state = self.node(node)?;
        let (id, ended) = (state.id, state.minute);
        let minute = bucket(t_ms, MINUTE_MS);
        if minute < ended {
            // Backfill of a minute already closed: roll it (and its hour) up again.
            self.minutes_due.push((id, minute));
            if bucket(t_ms, HOUR_MS) < bucket(ended, HOUR_MS) {
                self.hours_due.push((id, bucket(t_ms, HOUR_MS)));
            }
        } else if minute > ended {
            state.minute = minute;
            if ended != 0 {
                self.minutes_due.push((id, ended));
                if bucket(ended, HOUR_MS) != bucket(t_ms, HOUR_MS) {
                    self.hours_due.push((id, bucket(ended, HOUR_MS)));
                }
            }
        }
        self.pending.push((Table::Raw, id, t_ms, raw));
        Ok(())
    }

    /// Bytes the store's tables hold: SQLite pages in use (the file, less its free
    /// pages, with what the write-ahead log adds).
    pub fn size_bytes(&self) -> Result<u64, StoreError> {
        let pragma = |name: &str| -> Result<u64, StoreError> {
            Ok(self
                .conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))?
                .max(0) as u64)
        };
        Ok((pragma("page_count")? - pragma("freelist_count")?) * pragma("page_size")?)
    }

    /// When the newest sample of `node` was taken (None: the store has none).
    pub fn latest(&mut self, node: &str) -> Result<Option<u64>, StoreError> {
        let Some(state) = self.nodes.get(node) else {
            let id: Option<i64> = self
                .conn
                .query_row("SELECT id FROM nodes WHERE name = ?1", params![node], |r| {
                    r.get(0)
                })
                .optional()?;
            return match id {
                Some(id) => self.stored_latest(id),
                None => Ok(None),
            };
        };
        let id = state.id;
        let pending = self
            .pending
            .iter()
            .filter(|(table, n, _, _)| *table == Table::Raw && *n == id)
            .map(|(_, _, t, _)| *t)
            .max();
        Ok(pending.max(self.stored_latest(id)?))
    }

    fn stored_latest(&self, id: i64) -> Result<Option<u64>, StoreError> {
        let t: Option<i64> =
            self.conn
                .query_row("SELECT MAX(t) FROM raw WHERE node = ?1", params![id], |r| {
                    r.get(0)
                })?;
        Ok(t.map(|t| t as u64))
    }

    /// Write what was ingested since the last commit in one transaction, and drop what
    /// is past retention (once a minute).
    pub fn commit(&mut self, now_ms: u64) -> Result<usize, StoreError> {
        let rows = std::mem::take(&mut self.pending);
        let tx = self.conn.transaction()?;
        for (table, node, t, data) in &rows {
            let sql = match table {
                Table::Raw => "INSERT OR REPLACE INTO raw (node, t, data) VALUES (?1, ?2, ?3)",
                Table::Minute => "INSERT OR REPLACE INTO m1 (node, t, data) VALUES (?1, ?2, ?3)",
                Table::Hour => "INSERT OR REPLACE INTO h1 (node, t, data) VALUES (?1, ?2, ?3)",
            };
            tx.prepare_cached(sql)?
                .execute(params![node, *t as i64, data])?;
        }
        // Minutes from their samples, then hours from their minutes (read back in the
        // same transaction).
        let mut minutes = std::mem::take(&mut self.minutes_due);
        let mut hours = std::mem::take(&mut self.hours_due);
        for due in [&mut minutes, &mut hours] {
            due.sort_unstable();
            due.dedup();
        }
        for (from, to, due, width) in [
            (Table::Raw, Table::Minute, &minutes, MINUTE_MS),
            (Table::Minute, Table::Hour, &hours, HOUR_MS),
        ] {
            for (node, start) in due {
                let mut merged: Vec<(u32, Rollup)> = Vec::new();
                let mut add =
                    |sid: u32, r: Rollup| match merged.binary_search_by_key(&sid, |(s, _)| *s) {
                        Ok(i) => merged[i].1.merge(&r),
                        Err(i) => merged.insert(i, (sid, r)),
                    };
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT data FROM {} WHERE node = ?1 AND t >= ?2 AND t < ?3",
                    from.name()
                ))?;
                let rows = stmt
                    .query_map(params![node, *start as i64, (*start + width) as i64], |r| {
                        r.get::<_, Vec<u8>>(0)
                    })?;
                for data in rows {
                    let data = data?;
                    if from == Table::Raw {
                        decode_values(&data).for_each(|(sid, v)| add(sid, Rollup::of(v)));
                    } else {
                        decode_rollups(&data).for_each(|(sid, r)| add(sid, r));
                    }
                }
                if !merged.is_empty() {
                    tx.prepare_cached(&format!(
                        "INSERT OR REPLACE INTO {} (node, t, data) VALUES (?1, ?2, ?3)",
                        to.name()
                    ))?
                    .execute(params![
                        node,
                        *start as i64,
                        encode_rollups(&merged)
                    ])?;
                }
            }
        }
        if now_ms.saturating_sub(self.last_retention_ms) >= MINUTE_MS {
            self.last_retention_ms = now_ms;
            for (table, keep) in [
                (Table::Raw, self.retention.raw_ms),
                (Table::Minute, self.retention.minute_ms),
                (Table::Hour, self.retention.hour_ms),
            ] {
                let cut = now_ms.saturating_sub(keep) as i64;
                tx.execute(
                    &format!("DELETE FROM {} WHERE t < ?1", table.name()),
                    params![cut],
                )?;
            }
        }
        tx.commit()?;
        Ok(rows.len() + minutes.len() + hours.len())
    }

    /// The history of `key` over every node of the store: per point, the mean of the
    /// nodes' averages, the least minimum and the greatest maximum.
    pub fn query_all(
        &self,
        key: &SeriesKey,
        from_ms: u64,
        to_ms: u64,
        step_ms: u64,
        now_ms: u64,
    ) -> Result<(u64, Vec<Point>), StoreError> {
        let names: Vec<String> = {
            let mut stmt = self.conn.prepare_cached("SELECT name FROM nodes")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut step = step_ms.max(1000);
        let mut parts = Vec::new();
        for name in &names {
            let (s, points) = self.query(name, key, from_ms, to_ms, step_ms, now_ms)?;
            step = s;
            parts.push(points);
        }
        Ok((step, merge_points(parts)))
    }

    /// `node`'s history of `key` from `from_ms` to `to_ms`, as points of `step_ms`
    /// (0: the resolution's own). Returns the step used and the points, oldest first.
    pub fn query(
        &self,
        node: &str,
        key: &SeriesKey,
        from_ms: u64,
        to_ms: u64,
        step_ms: u64,
        now_ms: u64,
    ) -> Result<(u64, Vec<Point>), StoreError> {
        let node_id: i64 = self
            .conn
            .query_row("SELECT id FROM nodes WHERE name = ?1", params![node], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::UnknownNode(node.to_string()))?;
        let Some(&sid) = self.series.get(key) else {
            return Ok((step_ms.max(1000), Vec::new()));
        };
        let table = resolution(from_ms, step_ms, now_ms, &self.retention);
        let own = match table {
            Table::Raw => 0,
            Table::Minute => MINUTE_MS,
            Table::Hour => HOUR_MS,
        };
        let step = step_ms.max(own).max(1000);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT t, data FROM {} WHERE node = ?1 AND t >= ?2 AND t <= ?3 ORDER BY t",
            table.name()
        ))?;
        let rows = stmt.query_map(
            params![node_id, bucket(from_ms, own.max(1)) as i64, to_ms as i64],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)),
        )?;
        let mut buckets: Vec<(u64, Rollup)> = Vec::new();
        for row in rows {
            let (t, data) = row?;
            let found = match table {
                Table::Raw => decode_values(&data)
                    .find(|(s, _)| *s == sid)
                    .map(|(_, v)| Rollup::of(v)),
                _ => decode_rollups(&data)
                    .find(|(s, _)| *s == sid)
                    .map(|(_, r)| r),
            };
            let Some(r) = found else { continue };
            let b = bucket(t, step);
            match buckets.last_mut() {
                Some((start, acc)) if *start == b => acc.merge(&r),
                _ => buckets.push((b, r)),
            }
        }
        Ok((
            step,
            buckets
                .into_iter()
                .map(|(t, r)| (t, r.avg(), r.min, r.max))
                .collect(),
        ))
    }
}

/// Points of several series of the same step merged per time: the mean of their
/// averages, the least minimum, the greatest maximum.
pub fn merge_points(parts: impl IntoIterator<Item = Vec<Point>>) -> Vec<Point> {
    let mut by_time: std::collections::BTreeMap<u64, (f64, u32, f64, f64)> = Default::default();
    for points in parts {
        for (t, avg, min, max) in points {
            let e = by_time.entry(t).or_insert((0.0, 0, f64::MAX, f64::MIN));
            e.0 += avg;
            e.1 += 1;
            e.2 = e.2.min(min);
            e.3 = e.3.max(max);
        }
    }
    by_time
        .into_iter()
        .map(|(t, (sum, n, min, max))| (t, sum / n as f64, min, max))
        .collect()
}

/// The finest resolution that holds `from_ms` and is no finer than asked.
fn resolution(from_ms: u64, step_ms: u64, now_ms: u64, retention: &Retention) -> Table {
    let age = now_ms.saturating_sub(from_ms);
    if age <= retention.raw_ms && step_ms < MINUTE_MS {
        Table::Raw
    } else if age <= retention.minute_ms && step_ms < HOUR_MS {
        Table::Minute
    } else {
        Table::Hour
    }
}

/// `item{a=b,c=d}` back into a key (the form `SeriesKey`'s `Display` writes).
fn parse_key(text: &str) -> SeriesKey {
    match text.split_once('{') {
        None => SeriesKey::new(text),
        Some((item, rest)) => {
            let mut key = SeriesKey::new(item);
            for pair in rest.trim_end_matches('}').split(',') {
                if let Some((n, v)) = pair.split_once('=') {
                    key = key.label(n, v);
                }
            }
            key
        }
    }
}

/// Packed `(series, value)` pairs; values that are not finite (NaN, infinities) are
/// left out: they would poison every rollup they entered.
fn encode_values(values: &[(u32, f64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 12);
    for (s, v) in values.iter().filter(|(_, v)| v.is_finite()) {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn decode_values(data: &[u8]) -> impl Iterator<Item = (u32, f64)> + '_ {
    data.chunks_exact(12).map(|c| {
        (
            u32::from_le_bytes(c[0..4].try_into().unwrap_or_default()),
            f64::from_le_bytes(c[4..12].try_into().unwrap_or_default()),
        )
    })
}

/// Rollups sorted by series id.
fn encode_rollups(series: &[(u32, Rollup)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(series.len() * 24);
    for (s, r) in series {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&(r.min as f32).to_le_bytes());
        out.extend_from_slice(&(r.max as f32).to_le_bytes());
        out.extend_from_slice(&r.sum.to_le_bytes());
        out.extend_from_slice(&r.count.to_le_bytes());
    }
    out
}

fn decode_rollups(data: &[u8]) -> impl Iterator<Item = (u32, Rollup)> + '_ {
    data.chunks_exact(24).map(|c| {
        let f32_at = |i: usize| f32::from_le_bytes(c[i..i + 4].try_into().unwrap_or_default());
        (
            u32::from_le_bytes(c[0..4].try_into().unwrap_or_default()),
            Rollup {
                min: f32_at(4) as f64,
                max: f32_at(8) as f64,
                sum: f64::from_le_bytes(c[12..20].try_into().unwrap_or_default()),
                count: u32::from_le_bytes(c[20..24].try_into().unwrap_or_default()),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS;

    fn cpu() -> SeriesKey {
        SeriesKey::new("cpu.percent")
    }

    /// Samples every 5 s for `minutes`, value = minute index (so rollups are easy).
    fn fill(store: &mut Store, node: &str, minutes: u64) {
        let disk = SeriesKey::new("disk.used_percent").label("mount", "/");
        let (c, d) = (
            store.series_id(&cpu()).unwrap(),
            store.series_id(&disk).unwrap(),
        );
        for i in 0..minutes * 12 {
            let t = T0 + i * 5000;
            let v = (i / 12) as f64;
            store.ingest(node, t, &[(c, v), (d, 50.0)]).unwrap();
            store.commit(t).unwrap();
        }
    }

    #[test]
    fn backfilled_samples_are_rolled_up_into_closed_minutes_and_hours() {
        let mut store = Store::in_memory(Retention::default()).unwrap();
        let c = store.series_id(&cpu()).unwrap();
        assert_eq!(store.latest("n1").unwrap(), None);
        // Live samples from minute 70 on (a new master), then the agent's backfill of
        // minutes 0..70, in order, as it sends it.
        let live = T0 + 70 * MINUTE_MS;
        for i in 0..24 {
            store.ingest("n1", live + i * 5000, &[(c, 70.0)]).unwrap();
        }
        store.commit(live + 120_000).unwrap();
        assert_eq!(store.latest("n1").unwrap(), Some(live + 23 * 5000));
        for i in 0..70 * 12 {
            let v = (i / 12) as f64;
            store.ingest("n1", T0 + i * 5000, &[(c, v)]).unwrap();
            if i % 100 == 0 {
                store.commit(live + 120_000).unwrap();
            }
        }
        store.commit(live + 120_000).unwrap();
        let now = live + 120_000;
        let (_, minutes) = store
            .query("n1", &cpu(), T0, live - 1, MINUTE_MS, now)
            .unwrap();
        assert_eq!(minutes.len(), 70, "every backfilled minute is rolled up");
        assert_eq!(minutes[69], (T0 + 69 * MINUTE_MS, 69.0, 69.0, 69.0));
        let (_, hours) = store.query("n1", &cpu(), T0, now, HOUR_MS, now).unwrap();
        assert_eq!(hours[0], (T0, 29.5, 0.0, 59.0), "the closed hour too");
        assert_eq!(store.latest("n1").unwrap(), Some(live + 23 * 5000));
    }

    #[test]
    fn queries_read_raw_minute_and_hour_resolutions() {
        let mut store = Store::in_memory(Retention::default()).unwrap();
        fill(&mut store, "n1", 130);
        let now = T0 + 130 * MINUTE_MS;
        // Raw, 5 s points.
        let (step, points) = store.query("n1", &cpu(), T0, T0 + 60_000, 0, now).unwrap();
        assert_eq!(step, 1000);
        assert_eq!(points.len(), 13);
        assert_eq!(points[12], (T0 + 60_000, 1.0, 1.0, 1.0));
        // Minute rollups, folded into 10-minute points.
        let (step, points) = store
            .query("n1", &cpu(), T0, T0 + 30 * MINUTE_MS - 1, 600_000, now)
            .unwrap();
        assert_eq!(step, 600_000);
        assert_eq!(points[0], (T0, 4.5, 0.0, 9.0));
        assert_eq!(points.len(), 3);
        // Hour rollups: the first two hours are complete.
        let (step, points) = store.query("n1", &cpu(), T0, now, HOUR_MS, now).unwrap();
        assert_eq!(step, HOUR_MS);
        assert_eq!(points[0], (T0, 29.5, 0.0, 59.0));
        assert_eq!(points[1], (T0 + HOUR_MS, 89.5, 60.0, 119.0));
        // Labels tell series apart.
        let disk = SeriesKey::new("disk.used_percent").label("mount", "/");
        let (_, points) = store.query("n1", &disk, T0, T0 + 5000, 0, now).unwrap();
        assert_eq!(
            points,
            vec![(T0, 50.0, 50.0, 50.0), (T0 + 5000, 50.0, 50.0, 50.0)]
        );
        assert!(matches!(
            store.query("n2", &cpu(), T0, now, 0, now),
            Err(StoreError::UnknownNode(_))
        ));
    }

    #[test]
    fn retention_drops_old_rows_and_the_store_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.db");
        let retention = Retention {
            raw_ms: 10 * MINUTE_MS,
            ..Retention::default()
        };
        let mut store = Store::open(&path, retention).unwrap();
        fill(&mut store, "n1", 30);
        let now = T0 + 30 * MINUTE_MS;
        store.commit(now + MINUTE_MS).unwrap();
        let (_, old) = store
            .query("n1", &cpu(), T0, T0 + MINUTE_MS, 0, T0 + 5 * MINUTE_MS)
            .unwrap();
        assert!(old.is_empty(), "raw rows past retention are gone: {old:?}");
        drop(store);
        let store = Store::open(&path, retention).unwrap();
        let (_, minutes) = store.query("n1", &cpu(), T0, now, MINUTE_MS, now).unwrap();
        assert_eq!(minutes.len(), 29, "minute rollups survive a reopen");
        let id = store.series.get(&cpu()).copied().unwrap();
        assert_eq!(store.key(id), Some(&cpu()), "series names survive a reopen");
    }

    #[test]
    fn a_group_query_merges_its_nodes() {
        let mut store = Store::in_memory(Retention::default()).unwrap();
        let c = store.series_id(&cpu()).unwrap();
        store.ingest("n1", T0, &[(c, 10.0)]).unwrap();
        store.ingest("n2", T0, &[(c, 30.0)]).unwrap();
        store.ingest("n2", T0 + 5000, &[(c, 50.0)]).unwrap();
        store.commit(T0 + 5000).unwrap();
        let (_, points) = store
            .query_all(&cpu(), T0, T0 + 5000, 0, T0 + 5000)
            .unwrap();
        assert_eq!(
            points,
            vec![(T0, 20.0, 10.0, 30.0), (T0 + 5000, 50.0, 50.0, 50.0)]
        );
    }

    #[test]
    fn keys_round_trip_through_text() {
        let key = SeriesKey::new("net.rx_bytes").label("iface", "eth0");
        assert_eq!(parse_key(&key.to_string()), key);
        assert_eq!(parse_key("load.1"), SeriesKey::new("load.1"));
    }
}
