//! Pools and component masters: the cluster master's side.
//!
//! The pure decisions (which nodes, which candidate) are in [`alloc`]. Here they meet
//! the key master: every pool write is a compare-and-swap on the pool's revision, and
//! every membership change also on the pool generation, so two cluster masters that
//! planned on the same view cannot both succeed; the loser reloads and plans again.
//! Memory changes only after the store acknowledged. This file holds the pools' state
//! and that one write function; the operations are in the submodules.

pub mod alloc;
mod candidates;
mod claims;
mod frameworks;
mod labels;
pub mod launch;
mod master;
mod membership;
mod node_events;
pub mod offers;
mod processes;
pub mod quota;
pub mod reclaim;
pub mod sharing;
mod tenants;
mod verdict;

pub(crate) use frameworks::load_frameworks;
pub use frameworks::Listening;
pub use master::process_id;
pub(crate) use master::{on_change_or_tick, reconciler};
pub(crate) use tenants::load_tenants;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use glory_keymaster::schema::{
    self, FrameworkRecord, PoolRecord, TenantRecord, POOL_GENERATION_KEY,
};
use glory_keymaster::{Compare, KeyMaster, KeyMasterError, OpResult, Txn, TxnOp};
use glory_protocol::{NodeState, ProcessReport};
use tracing::{info, warn};

use crate::cluster::Cluster;
use alloc::{NodeFacts, PlanError, PoolBook};

/// Why a pool, tenant or token operation failed; the API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Bad input; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// Input of the right shape that breaks a rule the API's schema cannot state: one
    /// field against another, against the caller, the clock or what exists (422).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotFound(String),
    /// A conflict (exists, in use, taken); `fit` says how many free nodes fit when
    /// there were not enough.
    #[error("{message}")]
    Conflict { message: String, fit: Option<usize> },
    /// A tenant's quota would be passed.
    #[error("{0}")]
    Quota(quota::Exceeded),
    #[error(transparent)]
    KeyMaster(#[from] KeyMasterError),
}

impl OpError {
    fn conflict(message: impl Into<String>) -> Self {
        OpError::Conflict {
            message: message.into(),
            fit: None,
        }
    }
}

impl From<PlanError> for OpError {
    fn from(e: PlanError) -> Self {
        match &e {
            PlanError::NoPool(_) => OpError::NotFound(e.to_string()),
            PlanError::NoNode(_) => OpError::NotFound(e.to_string()),
            PlanError::NotEnough(n) => OpError::Conflict {
                message: e.to_string(),
                fit: Some(n.fit),
            },
            PlanError::Exists(_) | PlanError::Taken { .. } | PlanError::Unfit { .. } => {
                OpError::conflict(e.to_string())
            }
            PlanError::NotMember { .. } => OpError::NotFound(e.to_string()),
        }
    }
}

pub type OpResultT<T> = Result<T, OpError>;

/// Pool state kept by the active cluster master.
#[derive(Default)]
pub(crate) struct PoolState {
    book: RwLock<PoolBook>,
    tenants: RwLock<BTreeMap<String, TenantRecord>>,
    /// Serialises this master's pool writes (the key master serialises masters).
    write: tokio::sync::Mutex<()>,
    /// Last process report per (node, process id).
    pub(crate) processes: Mutex<HashMap<(String, String), ProcessReport>>,
    /// When a master's start was last sent, per pool.
    start_sent: Mutex<HashMap<String, (u64, Instant)>>,
    /// (pool, node) pairs whose replacement failed for lack of nodes (reported once).
    replace_blocked: Mutex<HashSet<(String, String)>>,
    /// Per pool, the candidates whose master process kept failing.
    failed_masters: Mutex<HashMap<String, master::FailedCandidates>>,
    /// Registered frameworks, by id (kept in the key master).
    frameworks: RwLock<BTreeMap<String, FrameworkRecord>>,
    /// Outstanding offers (this master's only: a new master offers anew).
    pub(crate) offers: Mutex<offers::OfferBook>,
    /// Open offer streams per framework: only listening frameworks get offers.
    listening: Mutex<HashMap<String, usize>>,
}

impl PoolState {
    pub fn new(
        book: PoolBook,
        tenants: BTreeMap<String, TenantRecord>,
        frameworks: BTreeMap<String, FrameworkRecord>,
    ) -> Self {
        PoolState {
            book: RwLock::new(book),
            tenants: RwLock::new(tenants),
            frameworks: RwLock::new(frameworks),
            offers: Mutex::new(offers::OfferBook::new(&format!(
                "o{:x}",
                glory_protocol::now_ms()
            ))),
            ..Default::default()
        }
    }
    pub fn book(&self) -> RwLockReadGuard<'_, PoolBook> {
        self.book.read().unwrap_or_else(|p| p.into_inner())
    }
    fn book_mut(&self) -> RwLockWriteGuard<'_, PoolBook> {
        self.book.write().unwrap_or_else(|p| p.into_inner())
    }
    pub fn tenants(&self) -> RwLockReadGuard<'_, BTreeMap<String, TenantRecord>> {
        self.tenants.read().unwrap_or_else(|p| p.into_inner())
    }
    fn tenants_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<String, TenantRecord>> {
        self.tenants.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Read every pool and the generation from the key master, in one transaction so the
/// two agree (a generation newer than the pools read would let a stale plan commit).
pub(crate) async fn load_book(km: &dyn KeyMaster) -> Result<PoolBook, KeyMasterError> {
    let resp = km
        .txn(Txn {
            compares: vec![],
            success: vec![
                TxnOp::Get {
                    key: POOL_GENERATION_KEY.to_string(),
                },
                TxnOp::GetPrefix {
                    prefix: schema::POOLS_PREFIX.to_string(),
                },
            ],
            failure: vec![],
        })
        .await?;
    let mut book = PoolBook::default();
    let mut results = resp.results.into_iter();
    if let Some(OpResult::Get(kvs)) = results.next() {
        book.generation = kvs.first().map(|kv| kv.mod_revision).unwrap_or(0);
    }
    if let Some(OpResult::Get(kvs)) = results.next() {
        for kv in kvs {
            match schema::decode::<PoolRecord>(&kv.key, &kv.value) {
                Ok(record) => book.put(record, kv.mod_revision),
                Err(e) => warn!(error = %e, "pool record skipped"),
            }
        }
    }
    Ok(book)
}

/// A name for tenants and pools: 1-63 lowercase letters, digits and '-', starting with a
/// letter or digit.
pub fn check_name(field: &str, name: &str) -> OpResultT<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(OpError::Invalid(format!(
            "{field}: {name:?} must be 1-63 lowercase letters, digits or '-', not starting with '-'"
        )))
    }
}

/// `fs`, `db`, `dp` or `custom:<name>`.
pub fn check_component(component: &str) -> OpResultT<()> {
    match component {
        "fs" | "db" | "dp" => Ok(()),
        other => match other.strip_prefix("custom:") {
            Some(name) => check_name("component", name),
            None => Err(OpError::Invalid(format!(
                "component: {other:?} is not one of fs, db, dp, custom:<name>"
            ))),
        },
    }
}

/// What a membership or master write does to one pool. Planned and consumed at once,
/// never stored: boxing the record would only add an allocation to every write.
#[allow(clippy::large_enum_variant)]
enum Write {
    Put(PoolRecord),
    Delete(String),
}

impl Cluster {
    /// What allocation needs to know about every node.
    pub(crate) fn node_facts(&self) -> Vec<NodeFacts> {
        let reg = self.read();
        reg.nodes
            .values()
            .map(|n| NodeFacts {
                id: n.record.id.clone(),
                group: n.record.group.clone(),
                cpus: n.record.inventory.cpus,
                memory_bytes: n.record.inventory.memory_bytes,
                disk_bytes: n.record.inventory.disks.iter().map(|d| d.total_bytes).sum(),
                labels: n.record.labels.clone(),
                up: n.status.state == NodeState::Up,
            })
            .collect()
    }

    /// Whether `planned` (a pool after a change) keeps its tenant within its quota.
    /// Called inside a pool write, so the quota and the book do not move meanwhile.
    fn within_quota(
        &self,
        book: &PoolBook,
        facts: &[NodeFacts],
        planned: &PoolRecord,
    ) -> OpResultT<()> {
        let Some(q) = self
            .pools
            .tenants()
            .get(&planned.tenant)
            .and_then(|t| t.quota.clone())
        else {
            return Ok(());
        };
        let before = quota::usage(book, facts, &planned.tenant, None);
        let after = quota::usage(book, facts, &planned.tenant, Some(planned));
        quota::check(&q, before, after).map_err(OpError::Quota)
    }

    /// Plan on the current view and write with compare-and-swap; on a conflict (another
    /// master wrote meanwhile) reload and plan again. `membership`: the plan changes
    /// which nodes belong to pools, so the generation is checked and bumped too.
    async fn write_pool<T>(
        &self,
        membership: bool,
        mut plan: impl FnMut(&PoolBook, &[NodeFacts]) -> OpResultT<(Write, T)>,
    ) -> OpResultT<(Option<PoolRecord>, T)> {
        let (mut written, out) = self
            .write_pools(membership, |book, facts| {
                let (write, out) = plan(book, facts)?;
                Ok((vec![write], out))
            })
            .await?;
        Ok((written.pop().flatten(), out))
    }

    /// [`Self::write_pool`] for several pools in one transaction (a reclaim moves a
    /// node between two). Returns what each write left, in order (`None`: deleted).
    async fn write_pools<T>(
        &self,
        membership: bool,
        mut plan: impl FnMut(&PoolBook, &[NodeFacts]) -> OpResultT<(Vec<Write>, T)>,
    ) -> OpResultT<(Vec<Option<PoolRecord>>, T)> {
        let _serial = self.pools.write.lock().await;
        for _attempt in 0..8 {
            let facts = self.node_facts();
            let (writes, out, generation, revs) = {
                let book = self.pools.book();
                let (writes, out) = plan(&book, &facts)?;
                let revs: Vec<_> = writes
                    .iter()
                    .map(|w| match w {
                        Write::Put(p) => book.revision(&p.name),
                        Write::Delete(n) => book.revision(n),
                    })
                    .collect();
                (writes, out, book.generation, revs)
            };
            let mut txn = Txn {
                compares: vec![],
                success: vec![],
                failure: vec![],
            };
            for (write, rev) in writes.iter().zip(&revs) {
                let (key, op) = match write {
                    Write::Put(p) => (
                        schema::pool_key(&p.name),
                        TxnOp::put(schema::pool_key(&p.name), schema::encode(p)),
                    ),
                    Write::Delete(n) => (schema::pool_key(n), TxnOp::delete(schema::pool_key(n))),
                };
                txn.compares.push(Compare::mod_revision(key, *rev));
                txn.success.push(op);
            }
            if membership {
                txn.compares
                    .push(Compare::mod_revision(POOL_GENERATION_KEY, generation));
                txn.success.push(TxnOp::put(
                    POOL_GENERATION_KEY,
                    generation.to_string().into_bytes(),
                ));
            }
            let resp = self.km_txn(txn).await?;
            if resp.succeeded {
                let mut book = self.pools.book_mut();
                if membership {
                    book.generation = resp.revision;
                }
                let written = writes
                    .into_iter()
                    .map(|write| match write {
                        Write::Put(p) => {
                            book.put(p.clone(), resp.revision);
                            Some(p)
                        }
                        Write::Delete(n) => {
                            book.remove(&n);
                            None
                        }
                    })
                    .collect();
                return Ok((written, out));
            }
            info!("pool write lost a race with another writer; reloading pools");
            let fresh = load_book(self.km.as_ref()).await?;
            *self.pools.book_mut() = fresh;
        }
        Err(OpError::KeyMaster(KeyMasterError::Unavailable(
            "pool write kept conflicting with other writers; try again".into(),
        )))
    }
}
