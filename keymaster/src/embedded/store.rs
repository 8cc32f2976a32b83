//! The synchronous SQLite half of the embedded backend: schema, reads, write
//! transactions, leases and the event history. Every function here runs on a blocking
//! thread with the connection mutex held; nothing here knows about tokio tasks except
//! the broadcast sender that a committed write publishes to.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Params, Row, TransactionBehavior};
use tokio::sync::broadcast;
use tracing::debug;

use crate::rules::{require_key, validate_txn};
use crate::{
    prefix_range_end, CmpOp, Compare, CompareTarget, EventKind, KeyMasterError, KeyValue, KmResult,
    LeaseId, OpResult, Revision, Txn, TxnOp, TxnResponse, WatchEvent,
};

/// Version of the table layout below. A store written by a newer layout is refused
/// rather than misread.
const SCHEMA_VERSION: i64 = 1;

const META_SCHEMA_VERSION: &str = "schema_version";
/// The store revision: bumped by one for every write transaction that changed a key.
const META_REVISION: &str = "revision";
/// The oldest revision whose events are all still in the `events` table.
const META_HISTORY_FROM: &str = "history_from";

const SCHEMA: &str = "
BEGIN;
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key        BLOB PRIMARY KEY,
    value      BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev    INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    lease      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv(lease);
CREATE TABLE IF NOT EXISTS leases (
    id                 INTEGER PRIMARY KEY,
    ttl_ms             INTEGER NOT NULL,
    expires_at_unix_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases(expires_at_unix_ms);
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    revision   INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    key        BLOB NOT NULL,
    value      BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev    INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    lease      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_revision ON events(revision);
COMMIT;
";

/// WAL pages written before SQLite copies them back into the database (and syncs
/// both). Its default, 1,000 pages, checkpointed about 20 times a second while 10,000
/// servers enrolled: 600 syncs and 49 page writes per enrolled server, the same hot
/// pages (revision, history tail, indexes' upper levels) copied back again and again.
/// 16,000 pages (64 MiB of WAL at most) copy each of them back once per 16,000
/// written; the WAL file is reused from its start after each checkpoint.
const WAL_CHECKPOINT_PAGES: i64 = 16_000;

const KV_COLUMNS: &str = "key, value, create_rev, mod_rev, version, lease";
const EVENT_COLUMNS: &str = "id, revision, kind, key, value, create_rev, mod_rev, version, lease";

const EVENT_KIND_PUT: i64 = 0;
const EVENT_KIND_DELETE: i64 = 1;

/// One row of the event history, as published to live watchers. `id` orders events
/// across revisions and within one.
#[derive(Clone, Debug)]
pub(super) struct StoredEvent {
    pub id: i64,
    pub event: WatchEvent,
}

/// The events of one committed write, published on the broadcast channel.
pub(super) type Batch = Arc<[StoredEvent]>;

/// Attach a short description of what we were doing to a SQLite error.
pub(super) trait SqlContext<T> {
    fn ctx(self, what: &str) -> KmResult<T>;
}

impl<T> SqlContext<T> for rusqlite::Result<T> {
    fn ctx(self, what: &str) -> KmResult<T> {
        self.map_err(|e| KeyMasterError::Internal(format!("{what}: {e}")))
    }
}

/// Configure the connection and create (or check) the tables.
pub(super) fn init(conn: &Connection) -> KmResult<()> {
    conn.busy_timeout(Duration::from_secs(5))
        .ctx("set busy timeout")?;
    // An in-memory database answers "memory" here; that is fine.
    let _mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .ctx("enable WAL journal")?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .ctx("set synchronous mode")?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
        .ctx("set WAL checkpoint threshold")?;
    // The journals of a group's savepoints (see `write_group`) live in memory, not in
    // temporary files written page by page.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .ctx("keep temporary journals in memory")?;
    conn.execute_batch(SCHEMA).ctx("create tables")?;
    conn.execute(
        "INSERT OR IGNORE INTO meta (name, value) VALUES (?1, ?2), (?3, 1), (?4, 1)",
        params![
            META_SCHEMA_VERSION,
            SCHEMA_VERSION,
            META_REVISION,
            META_HISTORY_FROM
        ],
    )
    .ctx("initialise meta table")?;
    let found = read_meta(conn, META_SCHEMA_VERSION)?;
    if found > SCHEMA_VERSION {
        return Err(KeyMasterError::Internal(format!(
            "store has schema version {found}, this build understands up to {SCHEMA_VERSION}"
        )));
    }
    Ok(())
}

fn read_meta(conn: &Connection, name: &str) -> KmResult<i64> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")
        .and_then(|mut stmt| stmt.query_row([name], |row| row.get(0)))
        .ctx(&format!("read meta {name}"))
}

fn write_meta(conn: &Connection, name: &str, value: i64) -> KmResult<()> {
    conn.prepare_cached("UPDATE meta SET value = ?2 WHERE name = ?1")
        .and_then(|mut stmt| stmt.execute(params![name, value]))
        .ctx(&format!("write meta {name}"))?;
    Ok(())
}

pub(super) fn revision(conn: &Connection) -> KmResult<Revision> {
    read_meta(conn, META_REVISION)
}

fn utf8_key(bytes: Vec<u8>, column: usize) -> rusqlite::Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn kv_from_row(row: &Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: utf8_key(row.get(0)?, 0)?,
        value: row.get(1)?,
        create_revision: row.get(2)?,
        mod_revision: row.get(3)?,
        version: row.get(4)?,
        lease: row.get(5)?,
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let kind = match row.get::<_, i64>(2)? {
        EVENT_KIND_PUT => EventKind::Put,
        _ => EventKind::Delete,
    };
    Ok(StoredEvent {
        id: row.get(0)?,
        event: WatchEvent {
            kind,
            kv: KeyValue {
                key: utf8_key(row.get(3)?, 3)?,
                value: row.get(4)?,
                create_revision: row.get(5)?,
                mod_revision: row.get(6)?,
                version: row.get(7)?,
                lease: row.get(8)?,
            },
        },
    })
}

fn query_vec<T, P: Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    map: fn(&Row<'_>) -> rusqlite::Result<T>,
    what: &str,
) -> KmResult<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).ctx(what)?;
    let rows = stmt.query_map(params, map).ctx(what)?;
    rows.collect::<rusqlite::Result<Vec<T>>>().ctx(what)
}

pub(super) fn get(conn: &Connection, key: &str) -> KmResult<Option<KeyValue>> {
    conn.prepare_cached(&format!("SELECT {KV_COLUMNS} FROM kv WHERE key = ?1"))
        .and_then(|mut stmt| stmt.query_row([key.as_bytes()], kv_from_row).optional())
        .ctx("read key")
}

/// Every key starting with `prefix`, in key order. Two statements rather than one with
/// `?2 IS NULL OR ...` so that SQLite can bound the index scan on both ends.
pub(super) fn range(conn: &Connection, prefix: &str) -> KmResult<Vec<KeyValue>> {
    let start = prefix.as_bytes();
    match prefix_range_end(start) {
        Some(end) => query_vec(
            conn,
            &format!("SELECT {KV_COLUMNS} FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key"),
            params![start, end],
            kv_from_row,
            "read prefix",
        ),
        None => query_vec(
            conn,
            &format!("SELECT {KV_COLUMNS} FROM kv WHERE key >= ?1 ORDER BY key"),
            params![start],
            kv_from_row,
            "read prefix",
        ),
    }
}

/// Events after event id `after_id`, at or after `min_revision`, under `prefix`.
pub(super) fn events_since(
    conn: &Connection,
    prefix: &[u8],
    after_id: i64,
    min_revision: Revision,
) -> KmResult<Vec<StoredEvent>> {
    match prefix_range_end(prefix) {
        Some(end) => query_vec(
            conn,
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE id > ?1 AND revision >= ?2 AND key >= ?3 AND key < ?4 ORDER BY id"
            ),
            params![after_id, min_revision, prefix, end],
            event_from_row,
            "read event history",
        ),
        None => query_vec(
            conn,
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE id > ?1 AND revision >= ?2 AND key >= ?3 ORDER BY id"
            ),
            params![after_id, min_revision, prefix],
            event_from_row,
            "read event history",
        ),
    }
}

/// Where a watcher stands in the history: the newest event id and store revision it
/// has accounted for.
#[derive(Clone, Copy, Debug)]
pub(super) struct HistoryPosition {
    pub last_id: i64,
    pub last_revision: Revision,
}

/// The newest event id and the store revision right now: where a live-only watch starts.
pub(super) fn position(conn: &Connection) -> KmResult<HistoryPosition> {
    let last_id: i64 = conn
        .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |row| {
            row.get(0)
        })
        .ctx("read newest event id")?;
    Ok(HistoryPosition {
        last_id,
        last_revision: revision(conn)?,
    })
}

/// Read everything a watcher needs to (re)start: the events under `prefix` after
/// `after_id` with revision `>= min_revision`, and the position that covers them.
/// Fails with `Compacted` when part of the needed history has been trimmed.
pub(super) fn history_after(
    conn: &Connection,
    prefix: &[u8],
    after_id: i64,
    min_revision: Revision,
) -> KmResult<(Vec<StoredEvent>, HistoryPosition)> {
    let history_from = read_meta(conn, META_HISTORY_FROM)?;
    if min_revision < history_from {
        return Err(KeyMasterError::Compacted {
            requested: min_revision,
            compacted: history_from,
        });
    }
    let events = events_since(conn, prefix, after_id, min_revision)?;
    let mut position = position(conn)?;
    position.last_id = position.last_id.max(after_id);
    Ok((events, position))
}

/// Oldest and newest event ids, each read from its end of the primary key.
const HISTORY_BOUNDS: &str = "SELECT (SELECT MIN(id) FROM events), (SELECT MAX(id) FROM events)";

/// Keep roughly the newest `limit` events. Trims only when the history is 10% over the
/// limit so that the delete runs in batches, and always at a revision boundary so that
/// every revision at or after `history_from` is complete.
pub(super) fn trim_history(conn: &mut Connection, limit: i64) -> KmResult<()> {
    let (oldest, newest): (Option<i64>, Option<i64>) = conn
        // Two subqueries, each answered from the end of the primary key: SQLite's
        // min/max shortcut applies only to a lone MIN or MAX, and `SELECT MIN(id),
        // MAX(id)` scanned the whole history on every reaper pass (ten a second),
        // holding the store while thousands of servers were enrolling.
        .query_row(HISTORY_BOUNDS, [], |row| Ok((row.get(0)?, row.get(1)?)))
        .ctx("measure event history")?;
    let (Some(oldest), Some(newest)) = (oldest, newest) else {
        return Ok(());
    };
    if newest - oldest < limit.saturating_add(limit / 10) {
        return Ok(());
    }
    let first_kept_id = newest - limit + 1;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("begin history trim")?;
    let keep_from: Revision = tx
        .query_row(
            "SELECT revision FROM events WHERE id >= ?1 ORDER BY id LIMIT 1",
            [first_kept_id],
            |row| row.get(0),
        )
        .ctx("find history trim point")?;
    let removed = tx
        .execute("DELETE FROM events WHERE revision < ?1", [keep_from])
        .ctx("trim event history")?;
    write_meta(&tx, META_HISTORY_FROM, keep_from)?;
    tx.commit().ctx("commit history trim")?;
    debug!(removed, history_from = keep_from, "trimmed event history");
    Ok(())
}

/// The writes of one revision. Every write gets revision `current + 1`; the store
/// revision moves only if something was actually written. The caller has begun the
/// SQLite transaction (see [`write_alone`] and [`write_group`]) and publishes the
/// recorded events once it has committed, still holding the connection lock, which is
/// what makes the watch handoff gapless.
pub(super) struct Writer<'c> {
    tx: &'c Connection,
    revision: Revision,
    now_ms: i64,
    events: Vec<WatchEvent>,
}

impl<'c> Writer<'c> {
    /// A writer inside the transaction open on `tx`, whose store revision is `revision`.
    fn within(tx: &'c Connection, revision: Revision, now_ms: i64) -> Self {
        Writer {
            tx,
            revision,
            now_ms,
            events: Vec::new(),
        }
    }

    fn write_revision(&self) -> Revision {
        self.revision + 1
    }

    pub fn get(&self, key: &str) -> KmResult<Option<KeyValue>> {
        get(self.tx, key)
    }

    pub fn range(&self, prefix: &str) -> KmResult<Vec<KeyValue>> {
        range(self.tx, prefix)
    }

    pub fn put(&mut self, key: &str, value: Vec<u8>, lease: LeaseId) -> KmResult<()> {
        require_key(key)?;
        if lease != 0 && !lease_alive(self.tx, lease, self.now_ms)? {
            return Err(KeyMasterError::LeaseNotFound(lease));
        }
        let rev = self.write_revision();
        let (create_revision, version) = match self.get(key)? {
            Some(old) => (old.create_revision, old.version + 1),
            None => (rev, 1),
        };
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: rev,
            version,
            lease,
        };
        self.tx
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO kv ({KV_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ))
            .and_then(|mut stmt| {
                stmt.execute(params![
                    kv.key.as_bytes(),
                    kv.value,
                    create_revision,
                    rev,
                    version,
                    lease
                ])
            })
            .ctx("write key")?;
        self.events.push(WatchEvent {
            kind: EventKind::Put,
            kv,
        });
        Ok(())
    }

    pub fn delete_key(&mut self, key: &str) -> KmResult<i64> {
        require_key(key)?;
        let removed = self
            .tx
            .prepare_cached("DELETE FROM kv WHERE key = ?1")
            .and_then(|mut stmt| stmt.execute([key.as_bytes()]))
            .ctx("delete key")?;
        if removed > 0 {
            self.push_delete(key.to_owned());
        }
        Ok(removed as i64)
    }

    pub fn delete_prefix(&mut self, prefix: &str) -> KmResult<i64> {
        let keys: Vec<String> = self.range(prefix)?.into_iter().map(|kv| kv.key).collect();
        self.delete_keys(keys)
    }

    fn delete_lease_keys(&mut self, lease: LeaseId) -> KmResult<i64> {
        let keys = query_vec(
            self.tx,
            "SELECT key FROM kv WHERE lease = ?1 ORDER BY key",
            [lease],
            |row| utf8_key(row.get(0)?, 0),
            "find keys of lease",
        )?;
        self.delete_keys(keys)
    }

    fn delete_keys(&mut self, keys: Vec<String>) -> KmResult<i64> {
        let mut removed = 0;
        for key in keys {
            removed += self.delete_key(&key)?;
        }
        Ok(removed)
    }

    /// A delete event carries only the key and the revision of the delete (as in etcd).
    fn push_delete(&mut self, key: String) {
        let kv = KeyValue {
            key,
            value: Vec::new(),
            create_revision: 0,
            mod_revision: self.write_revision(),
            version: 0,
            lease: 0,
        };
        self.events.push(WatchEvent {
            kind: EventKind::Delete,
            kv,
        });
    }

    /// Record the events in the history. Returns the store revision after these writes
    /// and the events to publish once the transaction is committed (none if nothing was
    /// written, and then the revision has not moved).
    fn record(self) -> KmResult<(Revision, Vec<StoredEvent>)> {
        let Writer {
            tx,
            revision,
            events,
            ..
        } = self;
        if events.is_empty() {
            return Ok((revision, Vec::new()));
        }
        let rev = revision + 1;
        let mut stored = Vec::with_capacity(events.len());
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (revision, kind, key, value, create_rev, mod_rev, version, lease)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .ctx("prepare event insert")?;
        for event in events {
            let kind = match event.kind {
                EventKind::Put => EVENT_KIND_PUT,
                EventKind::Delete => EVENT_KIND_DELETE,
            };
            let kv = &event.kv;
            insert
                .execute(params![
                    rev,
                    kind,
                    kv.key.as_bytes(),
                    kv.value,
                    kv.create_revision,
                    kv.mod_revision,
                    kv.version,
                    kv.lease
                ])
                .ctx("record event")?;
            stored.push(StoredEvent {
                id: tx.last_insert_rowid(),
                event,
            });
        }
        Ok((rev, stored))
    }
}

/// Run `write` as a write transaction of its own: commit it, publish its events, and
/// return its result with the store revision after it. Nothing is written if `write`
/// fails.
pub(super) fn write_alone<T>(
    conn: &mut Connection,
    now_ms: i64,
    publish: &broadcast::Sender<Batch>,
    write: impl FnOnce(&mut Writer<'_>) -> KmResult<T>,
) -> KmResult<(T, Revision)> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("begin write transaction")?;
    let before = read_meta(&tx, META_REVISION)?;
    let mut writer = Writer::within(&tx, before, now_ms);
    let out = write(&mut writer)?;
    let (after, stored) = writer.record()?;
    if after != before {
        write_meta(&tx, META_REVISION, after)?;
    }
    tx.commit().ctx("commit transaction")?;
    if !stored.is_empty() {
        // No receiver (nobody watching) is not an error.
        let _ = publish.send(stored.into());
    }
    Ok((out, after))
}

/// Commit `txns` in one SQLite transaction (group commit), in order, each as if it
/// had been committed alone: each in a savepoint, so a write that fails changes
/// nothing and the others go ahead, and each at its own revision with its own
/// published events. One commit writes each page the group touched once, where
/// committing them one by one wrote the revision, the history's tail and the indexes'
/// upper pages again for every write. If the commit itself fails, every write of the
/// group fails and nothing is published.
pub(super) fn write_group(
    conn: &mut Connection,
    txns: &[Txn],
    now_ms: i64,
    publish: &broadcast::Sender<Batch>,
) -> Vec<KmResult<TxnResponse>> {
    match group_in_one_transaction(conn, txns, now_ms) {
        Ok((results, batches)) => {
            for stored in batches {
                let _ = publish.send(stored.into());
            }
            results
        }
        Err(error) => txns.iter().map(|_| Err(error.clone())).collect(),
    }
}

type GroupOutcome = (Vec<KmResult<TxnResponse>>, Vec<Vec<StoredEvent>>);

fn group_in_one_transaction(
    conn: &mut Connection,
    txns: &[Txn],
    now_ms: i64,
) -> KmResult<GroupOutcome> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("begin write transaction")?;
    let before = read_meta(&tx, META_REVISION)?;
    let mut revision = before;
    let mut results = Vec::with_capacity(txns.len());
    let mut batches = Vec::new();
    // A savepoint costs a journal of the pages it changes; a write alone needs none,
    // since its failure rolls back the whole transaction.
    let alone = txns.len() == 1;
    for txn in txns {
        if !alone {
            tx.execute_batch("SAVEPOINT one_write")
                .ctx("begin one write of a group")?;
        }
        let mut writer = Writer::within(&tx, revision, now_ms);
        let outcome = match apply_txn(&mut writer, txn) {
            Ok(applied) => writer.record().map(|recorded| (applied, recorded)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(((succeeded, ops), (after, stored))) => {
                if !alone {
                    tx.execute_batch("RELEASE one_write")
                        .ctx("end one write of a group")?;
                }
                revision = after;
                if !stored.is_empty() {
                    batches.push(stored);
                }
                results.push(Ok(TxnResponse {
                    succeeded,
                    revision: after,
                    results: ops,
                }));
            }
            Err(e) if alone => return Ok((vec![Err(e)], Vec::new())),
            Err(e) => {
                tx.execute_batch("ROLLBACK TO one_write; RELEASE one_write")
                    .ctx("undo one write of a group")?;
                results.push(Err(e));
            }
        }
    }
    if revision != before {
        write_meta(&tx, META_REVISION, revision)?;
    }
    tx.commit().ctx("commit grouped writes")?;
    Ok((results, batches))
}

/// etcd's compare rules: a missing key has version and revisions 0 and matches no value.
fn compare_holds(current: Option<&KeyValue>, cmp: &Compare) -> bool {
    let ordering = match (&cmp.target, current) {
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(want), Some(kv)) => kv.value.as_slice().cmp(want.as_slice()),
        (CompareTarget::Version(want), kv) => kv.map_or(0, |kv| kv.version).cmp(want),
        (CompareTarget::CreateRevision(want), kv) => {
            kv.map_or(0, |kv| kv.create_revision).cmp(want)
        }
        (CompareTarget::ModRevision(want), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(want),
    };
    match cmp.op {
        CmpOp::Equal => ordering == Ordering::Equal,
        CmpOp::NotEqual => ordering != Ordering::Equal,
        CmpOp::Greater => ordering == Ordering::Greater,
        CmpOp::Less => ordering == Ordering::Less,
    }
}

/// A transaction's compares and then its success or failure branch, in `writer`.
fn apply_txn(writer: &mut Writer<'_>, txn: &Txn) -> KmResult<(bool, Vec<OpResult>)> {
    validate_txn(txn)?;
    let mut succeeded = true;
    for cmp in &txn.compares {
        if !compare_holds(writer.get(&cmp.key)?.as_ref(), cmp) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let result = match op {
            TxnOp::Put { key, value, lease } => {
                writer.put(key, value.clone(), *lease)?;
                OpResult::Put
            }
            TxnOp::Delete { key } => OpResult::Delete(writer.delete_key(key)?),
            TxnOp::DeletePrefix { prefix } => OpResult::Delete(writer.delete_prefix(prefix)?),
            TxnOp::Get { key } => OpResult::Get(writer.get(key)?.into_iter().collect()),
            TxnOp::GetPrefix { prefix } => OpResult::Get(writer.range(prefix)?),
        };
        results.push(result);
    }
    Ok((succeeded, results))
}

fn lease_alive(conn: &Connection, lease: LeaseId, now_ms: i64) -> KmResult<bool> {
    conn.prepare_cached("SELECT 1 FROM leases WHERE id = ?1 AND expires_at_unix_ms > ?2")
        .and_then(|mut stmt| stmt.exists(params![lease, now_ms]))
        .ctx("look up lease")
}

/// Insert a lease under a fresh random id (positive, non-zero, as etcd's).
pub(super) fn lease_grant(conn: &Connection, ttl_ms: i64, now_ms: i64) -> KmResult<LeaseId> {
    // A collision among 2^63 ids is rare; a few retries make it irrelevant.
    for _ in 0..16 {
        let id = rand::random::<i64>() & i64::MAX;
        if id == 0 {
            continue;
        }
        let inserted = conn
            .execute(
                "INSERT OR IGNORE INTO leases (id, ttl_ms, expires_at_unix_ms) VALUES (?1, ?2, ?3)",
                params![id, ttl_ms, now_ms.saturating_add(ttl_ms)],
            )
            .ctx("insert lease")?;
        if inserted == 1 {
            return Ok(id);
        }
    }
    Err(KeyMasterError::Internal(
        "could not find a free lease id".into(),
    ))
}

/// Push the lease's expiry to `now + ttl`; returns the TTL in milliseconds.
pub(super) fn lease_keep_alive(conn: &Connection, lease: LeaseId, now_ms: i64) -> KmResult<i64> {
    let ttl_ms: Option<i64> = conn
        .query_row(
            "UPDATE leases SET expires_at_unix_ms = ?2 + ttl_ms
             WHERE id = ?1 AND expires_at_unix_ms > ?2 RETURNING ttl_ms",
            params![lease, now_ms],
            |row| row.get(0),
        )
        .optional()
        .ctx("refresh lease")?;
    ttl_ms.ok_or(KeyMasterError::LeaseNotFound(lease))
}

/// Delete the lease and every key attached to it, all at one revision. Returns whether
/// the lease existed.
pub(super) fn lease_revoke(
    conn: &mut Connection,
    lease: LeaseId,
    now_ms: i64,
    publish: &broadcast::Sender<Batch>,
) -> KmResult<bool> {
    let (existed, _) = write_alone(conn, now_ms, publish, |writer| {
        let existed = writer
            .tx
            .execute("DELETE FROM leases WHERE id = ?1", [lease])
            .ctx("delete lease")?
            > 0;
        if existed {
            writer.delete_lease_keys(lease)?;
        }
        Ok(existed)
    })?;
    Ok(existed)
}

/// Revoke every lease whose expiry has passed, each in its own revision (as etcd's
/// lessor does). Returns how many were revoked.
pub(super) fn reap_expired_leases(
    conn: &mut Connection,
    now_ms: i64,
    publish: &broadcast::Sender<Batch>,
) -> KmResult<usize> {
    let expired = query_vec(
        conn,
        "SELECT id FROM leases WHERE expires_at_unix_ms <= ?1 ORDER BY expires_at_unix_ms",
        [now_ms],
        |row| row.get::<_, i64>(0),
        "find expired leases",
    )?;
    for &lease in &expired {
        lease_revoke(conn, lease, now_ms, publish)?;
        debug!(lease = %format_args!("{lease:x}"), "lease expired");
    }
    Ok(expired.len())
}

#[cfg(test)]
mod tests;
