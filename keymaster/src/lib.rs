//! The key master: where GLORY-CL keeps the truth that must survive a restart.
//!
//! [`KeyMaster`] is shaped after etcd's v3 API so that the embedded SQLite backend
//! ([`EmbeddedKeyMaster`]) and the etcd backend ([`EtcdKeyMaster`]) are
//! interchangeable: a flat, ordered key space of byte values with a cluster-wide
//! revision, compare-and-swap transactions, prefix watches that can resume from a
//! revision, leases with a TTL that delete their keys when they expire, and leader
//! election built from those pieces (etcd's `concurrency` recipe). The key layout used
//! by the masters lives in [`schema`].
//!
//! Both backends pass the same conformance suite (`tests/conformance`). Where etcd
//! cannot do exactly what the embedded store does, the trait documents the difference:
//! lease TTLs are whole seconds on etcd, with a minimum.
//!
//! Architecture invariant: only this crate knows SQL and etcd. Callers see keys,
//! values, revisions and leases, nothing else. [`testing`] starts real etcd members for
//! the tests of any crate.
#![forbid(unsafe_code)]

mod election;
mod embedded;
mod etcd;
mod rules;
pub mod schema;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use election::{campaign_via_kv, leader_via_kv, resign_via_kv};
pub use embedded::EmbeddedKeyMaster;
pub use etcd::{EtcdKeyMaster, EtcdOptions};

/// A cluster-wide, monotonically increasing version of the key space. Every write
/// transaction that changes something increments it by one.
pub type Revision = i64;
/// A lease handle. `0` means "no lease".
pub type LeaseId = i64;

/// Why a key master call failed. Callers branch on `Unavailable` (retry later, serve
/// from memory) versus everything else (a bug or bad input).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum KeyMasterError {
    /// The store cannot be reached or did not answer in time; retry with backoff.
    #[error("key master unavailable: {0}")]
    Unavailable(String),
    /// A watch asked to resume from a revision that has been compacted away.
    #[error("revision {requested} is compacted (oldest available is {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The lease does not exist (never granted, revoked, or expired).
    #[error("lease {0:x} not found")]
    LeaseNotFound(LeaseId),
    /// The caller lost an election it was campaigning in (its key disappeared).
    #[error("election lost: {0}")]
    ElectionLost(String),
    /// The request itself was invalid (empty key, bad TTL...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The store failed in a way that is not the caller's fault.
    #[error("key master internal error: {0}")]
    Internal(String),
}

pub type KmResult<T> = Result<T, KeyMasterError>;

/// One key with its value and etcd-style metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to this key.
    pub mod_revision: Revision,
    /// Number of writes since creation (1 after the first put).
    pub version: i64,
    /// Lease attached to the key, 0 for none.
    pub lease: LeaseId,
}

/// Comparison operator of a transaction guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// What a guard compares. A missing key has version, create and mod revision 0 and
/// never equals any value (as in etcd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    CreateRevision(Revision),
    ModRevision(Revision),
    Value(Vec<u8>),
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub op: CmpOp,
    pub target: CompareTarget,
}

impl Compare {
    /// True when `key` does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Compare {
            key: key.into(),
            op: CmpOp::Equal,
            target: CompareTarget::CreateRevision(0),
        }
    }
    /// True when `key` was last modified at `rev` (0 = absent).
    pub fn mod_revision(key: impl Into<String>, rev: Revision) -> Self {
        Compare {
            key: key.into(),
            op: CmpOp::Equal,
            target: CompareTarget::ModRevision(rev),
        }
    }
    /// True when `key` holds exactly `value`.
    pub fn value(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Compare {
            key: key.into(),
            op: CmpOp::Equal,
            target: CompareTarget::Value(value.into()),
        }
    }
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
        lease: LeaseId,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
    Get {
        key: String,
    },
    GetPrefix {
        prefix: String,
    },
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }
    pub fn delete(key: impl Into<String>) -> Self {
        TxnOp::Delete { key: key.into() }
    }
}

/// `if all(compares) then success else failure`, atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// `op` alone, unconditionally.
    pub fn alone(op: TxnOp) -> Self {
        Txn {
            success: vec![op],
            ..Default::default()
        }
    }
}

/// The result of one [`TxnOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    Put,
    /// Number of keys deleted.
    Delete(i64),
    Get(Vec<KeyValue>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (and `success` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
    /// One result per executed op, in order.
    pub results: Vec<OpResult>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For deletes, `kv.value` is empty and `kv.mod_revision`
/// is the revision of the delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// A prefix watch: events arrive in revision order. The stream ends (recv returns
/// `None`) when the backend closes it; an `Err` item (e.g. `Compacted`) is final.
pub struct Watcher {
    pub events: mpsc::Receiver<KmResult<WatchEvent>>,
}

impl Watcher {
    pub async fn recv(&mut self) -> Option<KmResult<WatchEvent>> {
        self.events.recv().await
    }
}

/// Proof of leadership returned by [`KeyMaster::campaign`]: the election key we hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderKey {
    pub election: String,
    pub key: String,
    pub create_revision: Revision,
    pub lease: LeaseId,
}

/// The key master interface. See the crate docs for the semantics; they follow etcd v3.
#[async_trait]
pub trait KeyMaster: Send + Sync + 'static {
    /// A short name of the backend for logs and the API (`embedded`, `etcd`).
    fn backend(&self) -> &'static str;

    async fn get(&self, key: &str) -> KmResult<Option<KeyValue>>;

    /// All keys starting with `prefix`, in key order, and the store revision they were
    /// read at (start a watch at `revision + 1` to see every later change).
    async fn get_prefix(&self, prefix: &str) -> KmResult<(Vec<KeyValue>, Revision)>;

    /// Write `value` at `key`, attached to `lease` if given. Returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> KmResult<Revision>;

    /// Delete `key`; returns how many keys were deleted (0 or 1).
    async fn delete(&self, key: &str) -> KmResult<i64>;

    async fn txn(&self, txn: Txn) -> KmResult<TxnResponse>;

    /// Watch every key under `prefix`. With `start_revision`, first replay all changes
    /// at or after it (resume after a reconnect), then stream live ones.
    async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: Option<Revision>,
    ) -> KmResult<Watcher>;

    /// Grant a lease that ends `ttl` after its last refresh. A backend may round the
    /// TTL up (etcd counts whole seconds and has a minimum, 2 s with its defaults);
    /// [`KeyMaster::lease_keep_alive`] returns the TTL in force.
    async fn lease_grant(&self, ttl: Duration) -> KmResult<LeaseId>;

    /// Refresh the lease's TTL; returns the TTL it was refreshed to, which is at least
    /// the TTL it was granted with.
    async fn lease_keep_alive(&self, lease: LeaseId) -> KmResult<Duration>;

    /// Revoke the lease and delete every key attached to it.
    async fn lease_revoke(&self, lease: LeaseId) -> KmResult<()>;

    /// Campaign in `election` with `value`, holding `lease`; resolves when we lead.
    /// Leadership ends when the lease ends or on [`KeyMaster::resign`].
    async fn campaign(
        &self,
        election: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> KmResult<LeaderKey> {
        campaign_via_kv(self, election, value, lease).await
    }

    /// The current leader's key and value, if any.
    async fn leader(&self, election: &str) -> KmResult<Option<KeyValue>> {
        leader_via_kv(self, election).await
    }

    /// Give up leadership (deletes our election key).
    async fn resign(&self, leader: &LeaderKey) -> KmResult<()> {
        resign_via_kv(self, leader).await
    }
}

/// The smallest key greater than every key with this prefix (etcd's `GetPrefixRangeEnd`).
/// `None` means "no upper bound" (prefix of all 0xff bytes or empty).
pub fn prefix_range_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
