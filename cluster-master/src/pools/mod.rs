//! Pools, tenants and component masters: the cluster master's side.
//!
//! The pure decisions (which nodes, which candidate) are in [`alloc`]. Here they meet
//! the key master: every pool write is a compare-and-swap on the pool's revision, and
//! every membership change also on the pool generation, so two cluster masters that
//! planned on the same view cannot both succeed; the loser reloads and plans again.
//! Memory changes only after the store acknowledged.

pub mod alloc;
pub mod launch;
mod master;

pub use master::process_id;
pub(crate) use master::reconciler;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use glory_keymaster::schema::{
    self, PoolRecord, TenantRecord, POOL_GENERATION_KEY, RECORD_VERSION,
};
use glory_keymaster::{Compare, KeyMaster, KeyMasterError, OpResult, Txn, TxnOp};
use glory_protocol::{NodeState, ProcessReport};
use serde_json::json;
use tracing::{info, warn};

use crate::cluster::Cluster;
use alloc::{NodeFacts, PlanError, PoolBook};

/// Why a pool, tenant or token operation failed; the API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Bad input; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// A conflict (exists, in use, taken); `fit` says how many free nodes fit when
    /// there were not enough.
    #[error("{message}")]
    Conflict { message: String, fit: Option<usize> },
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
    processes: Mutex<HashMap<(String, String), ProcessReport>>,
    /// When a master's start was last sent, per pool.
    start_sent: Mutex<HashMap<String, (u64, Instant)>>,
    /// (pool, node) pairs whose replacement failed for lack of nodes (reported once).
    replace_blocked: Mutex<HashSet<(String, String)>>,
    /// Per pool, the candidates whose master process kept failing.
    failed_masters: Mutex<HashMap<String, master::FailedCandidates>>,
}

impl PoolState {
    pub fn new(book: PoolBook, tenants: BTreeMap<String, TenantRecord>) -> Self {
        PoolState {
            book: RwLock::new(book),
            tenants: RwLock::new(tenants),
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

pub(crate) async fn load_tenants(
    km: &dyn KeyMaster,
) -> Result<BTreeMap<String, TenantRecord>, KeyMasterError> {
    let (kvs, _) = km.get_prefix(schema::TENANTS_PREFIX).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| schema::decode::<TenantRecord>(&kv.key, &kv.value).ok())
        .map(|t| (t.name.clone(), t))
        .collect())
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

/// What a membership or master write does to one pool.
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

    /// Plan on the current view and write with compare-and-swap; on a conflict (another
    /// master wrote meanwhile) reload and plan again. `membership`: the plan changes
    /// which nodes belong to pools, so the generation is checked and bumped too.
    async fn write_pool<T>(
        &self,
        membership: bool,
        mut plan: impl FnMut(&PoolBook, &[NodeFacts]) -> OpResultT<(Write, T)>,
    ) -> OpResultT<(Option<PoolRecord>, T)> {
        let _serial = self.pools.write.lock().await;
        for _attempt in 0..8 {
            let facts = self.node_facts();
            let (write, out, generation, rev) = {
                let book = self.pools.book();
                let (write, out) = plan(&book, &facts)?;
                let name = match &write {
                    Write::Put(p) => p.name.clone(),
                    Write::Delete(n) => n.clone(),
                };
                let rev = book.revision(&name);
                (write, out, book.generation, rev)
            };
            let (key, op) = match &write {
                Write::Put(p) => (
                    schema::pool_key(&p.name),
                    TxnOp::put(schema::pool_key(&p.name), schema::encode(p)),
                ),
                Write::Delete(n) => (schema::pool_key(n), TxnOp::delete(schema::pool_key(n))),
            };
            let mut txn = Txn {
                compares: vec![Compare::mod_revision(key, rev)],
                success: vec![op],
                failure: vec![],
            };
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
                return Ok(match write {
                    Write::Put(p) => {
                        book.put(p.clone(), resp.revision);
                        (Some(p), out)
                    }
                    Write::Delete(n) => {
                        book.remove(&n);
                        (None, out)
                    }
                });
            }
            info!("pool write lost a race with another writer; reloading pools");
            let fresh = load_book(self.km.as_ref()).await?;
            *self.pools.book_mut() = fresh;
        }
        Err(OpError::KeyMaster(KeyMasterError::Unavailable(
            "pool write kept conflicting with other writers; try again".into(),
        )))
    }

    // -----------------------------------------------------------------------------
    // Tenants
    // -----------------------------------------------------------------------------

    pub async fn create_tenant(&self, name: &str, description: &str) -> OpResultT<TenantRecord> {
        check_name("name", name)?;
        if description.len() > 256 {
            return Err(OpError::Invalid(
                "description: at most 256 characters".into(),
            ));
        }
        let record = TenantRecord {
            v: RECORD_VERSION,
            name: name.to_string(),
            created_ms: glory_protocol::now_ms(),
            description: description.to_string(),
        };
        let resp = self
            .km_txn(Txn {
                compares: vec![Compare::absent(schema::tenant_key(name))],
                success: vec![TxnOp::put(
                    schema::tenant_key(name),
                    schema::encode(&record),
                )],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(OpError::conflict(format!("tenant {name} already exists")));
        }
        self.pools
            .tenants_mut()
            .insert(name.to_string(), record.clone());
        self.events
            .emit("tenant_created", None, json!({"tenant": name}));
        Ok(record)
    }

    /// Delete a tenant that has no pools; its API tokens are revoked with it.
    pub async fn delete_tenant(&self, name: &str) -> OpResultT<()> {
        // No pool of this master can be created for the tenant meanwhile.
        let _serial = self.pools.write.lock().await;
        if !self.pools.tenants().contains_key(name) {
            return Err(OpError::NotFound(format!("tenant {name} does not exist")));
        }
        let pools = self.pools.book().tenant_pools(name);
        if !pools.is_empty() {
            return Err(OpError::conflict(format!(
                "tenant {name} still has pools: {}",
                pools.join(", ")
            )));
        }
        let tokens: Vec<String> = self
            .api_tokens()
            .into_iter()
            .filter(|t| t.tenant.as_deref() == Some(name))
            .map(|t| t.id)
            .collect();
        let mut success = vec![TxnOp::delete(schema::tenant_key(name))];
        success.extend(
            tokens
                .iter()
                .map(|id| TxnOp::delete(schema::api_token_key(id))),
        );
        self.km_txn(Txn {
            success,
            ..Default::default()
        })
        .await?;
        self.pools.tenants_mut().remove(name);
        self.forget_api_tokens(&tokens);
        self.events
            .emit("tenant_deleted", None, json!({"tenant": name}));
        Ok(())
    }

    // -----------------------------------------------------------------------------
    // Pools
    // -----------------------------------------------------------------------------

    /// Create a pool with `count` nodes (`None`: every free node that fits).
    pub async fn create_pool(
        &self,
        record: PoolRecord,
        count: Option<usize>,
    ) -> OpResultT<PoolRecord> {
        check_name("name", &record.name)?;
        check_component(&record.component)?;
        if !self.pools.tenants().contains_key(&record.tenant) {
            return Err(OpError::Invalid(format!(
                "tenant: {} does not exist",
                record.tenant
            )));
        }
        for g in &record.selector.groups {
            if !self.read().groups.contains_key(g) {
                return Err(OpError::Invalid(format!(
                    "selector.groups: group {g} does not exist"
                )));
            }
        }
        let (pool, ()) = self
            .write_pool(true, |book, facts| {
                Ok((
                    Write::Put(book.plan_create(record.clone(), count, facts)?),
                    (),
                ))
            })
            .await?;
        let pool = pool.ok_or_else(|| OpError::conflict("pool vanished"))?;
        info!(pool = %pool.name, tenant = %pool.tenant, nodes = pool.nodes.len(), "pool created");
        let at = Some((pool.name.as_str(), pool.tenant.as_str()));
        self.events.emit(
            "pool_created",
            at,
            json!({"component": pool.component, "nodes": pool.nodes.len()}),
        );
        self.announce_added(&pool, &pool.nodes);
        Ok(pool)
    }

    pub async fn delete_pool(&self, name: &str) -> OpResultT<PoolRecord> {
        let (_, old) = self
            .write_pool(true, |book, _| {
                let old = book.cloned(name)?;
                Ok((Write::Delete(name.to_string()), old))
            })
            .await?;
        if let Some(master) = &old.master {
            self.stop_master_process(&old.name, master);
        }
        self.forget_failed(&old.name);
        info!(pool = %name, "pool deleted");
        self.events.emit(
            "pool_deleted",
            Some((&old.name, &old.tenant)),
            json!({"nodes": old.nodes.len()}),
        );
        Ok(old)
    }

    fn announce_added(&self, pool: &PoolRecord, added: &[String]) {
        for node in added {
            self.events.emit(
                "node_added",
                Some((&pool.name, &pool.tenant)),
                json!({"node": node}),
            );
        }
    }

    /// Add `count` nodes chosen by the pool's selector and spread.
    pub async fn grow_pool(
        &self,
        name: &str,
        count: usize,
    ) -> OpResultT<(PoolRecord, Vec<String>)> {
        let (pool, added) = self
            .write_pool(true, |book, facts| {
                let (p, added) = book.plan_grow(name, count, facts)?;
                Ok((Write::Put(p), added))
            })
            .await?;
        let pool = pool.ok_or_else(|| OpError::conflict("pool vanished"))?;
        self.announce_added(&pool, &added);
        Ok((pool, added))
    }

    /// Add the named nodes; returns the pool and the nodes that were not in it yet.
    pub async fn add_pool_nodes(
        &self,
        name: &str,
        nodes: &[String],
    ) -> OpResultT<(PoolRecord, Vec<String>)> {
        let (pool, added) = self
            .write_pool(true, |book, facts| {
                let before = book.get(name).map(|p| p.nodes.clone()).unwrap_or_default();
                let p = book.plan_add_named(name, nodes, facts)?;
                let mut added: Vec<String> = Vec::new();
                for n in nodes {
                    if !before.contains(n) && !added.contains(n) {
                        added.push(n.clone());
                    }
                }
                Ok((Write::Put(p), added))
            })
            .await?;
        let pool = pool.ok_or_else(|| OpError::conflict("pool vanished"))?;
        self.announce_added(&pool, &added);
        Ok((pool, added))
    }

    /// Release one node back to the free set.
    pub async fn release_pool_node(&self, name: &str, node: &str) -> OpResultT<PoolRecord> {
        let (pool, ()) = self
            .write_pool(true, |book, _| {
                Ok((Write::Put(book.plan_release(name, node)?), ()))
            })
            .await?;
        let pool = pool.ok_or_else(|| OpError::conflict("pool vanished"))?;
        self.events.emit(
            "node_removed",
            Some((&pool.name, &pool.tenant)),
            json!({"node": node, "reason": "released"}),
        );
        Ok(pool)
    }

    /// Release a node from whatever pool holds it (the node leaves the cluster).
    pub(crate) async fn release_everywhere(&self, node: &str) -> OpResultT<()> {
        let pool = self.pools.book().owner(node).map(str::to_string);
        if let Some(pool) = pool {
            self.release_pool_node(&pool, node).await?;
        }
        Ok(())
    }

    /// Register master candidates: `nodes` in election order, appended after the
    /// existing ones (`replace`: instead of them).
    pub async fn set_candidates(
        &self,
        name: &str,
        nodes: &[String],
        replace: bool,
    ) -> OpResultT<PoolRecord> {
        self.edit_candidates(name, |p| {
            for n in nodes {
                if p.nodes.binary_search(n).is_err() {
                    return Err(OpError::Invalid(format!(
                        "nodes: {n} is not a node of pool {name}"
                    )));
                }
            }
            if replace {
                p.candidates.clear();
            }
            for n in nodes {
                if !p.candidates.contains(n) {
                    p.candidates.push(n.clone());
                }
            }
            Ok(())
        })
        .await
    }

    pub async fn remove_candidate(&self, name: &str, node: &str) -> OpResultT<PoolRecord> {
        self.edit_candidates(name, |p| {
            if !p.candidates.iter().any(|c| c == node) {
                return Err(OpError::NotFound(format!(
                    "{node} is not a candidate of pool {name}"
                )));
            }
            p.candidates.retain(|c| c != node);
            Ok(())
        })
        .await
    }

    /// Change a pool's candidate list, tell its watchers, and wake the reconciler.
    async fn edit_candidates(
        &self,
        name: &str,
        edit: impl Fn(&mut PoolRecord) -> OpResultT<()>,
    ) -> OpResultT<PoolRecord> {
        let (pool, ()) = self
            .write_pool(false, |book, _| {
                let mut p = book.cloned(name)?;
                edit(&mut p)?;
                Ok((Write::Put(p), ()))
            })
            .await?;
        let pool = pool.ok_or_else(|| OpError::conflict("pool vanished"))?;
        self.events.emit(
            "candidates_changed",
            Some((&pool.name, &pool.tenant)),
            json!({"candidates": pool.candidates}),
        );
        self.pool_changed.notify_one();
        Ok(pool)
    }

    /// Replace a node's labels (selectors match on them).
    pub async fn set_labels(
        &self,
        node: &str,
        labels: BTreeMap<String, String>,
    ) -> OpResultT<BTreeMap<String, String>> {
        for (k, v) in &labels {
            let key_ok = !k.is_empty()
                && k.len() <= 63
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
            if !key_ok {
                return Err(OpError::Invalid(format!(
                    "labels: key {k:?} must be 1-63 letters, digits, '-', '_', '.' or '/'"
                )));
            }
            if v.len() > 63 || v.chars().any(|c| c.is_control()) {
                return Err(OpError::Invalid(format!(
                    "labels: value of {k:?} must be at most 63 printable characters"
                )));
            }
        }
        if labels.len() > 64 {
            return Err(OpError::Invalid("labels: at most 64 labels".into()));
        }
        let mut record = self
            .read()
            .nodes
            .get(node)
            .map(|n| n.record.clone())
            .ok_or_else(|| OpError::NotFound(format!("node {node} does not exist")))?;
        record.labels = labels;
        let resp = self
            .km_txn(Txn {
                compares: vec![Compare::value(
                    schema::identity_key(&record.identity()),
                    record.id.clone().into_bytes(),
                )],
                success: vec![TxnOp::put(schema::node_key(node), schema::encode(&record))],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(OpError::conflict(format!(
                "node {node} was removed or enrolled again meanwhile; try again"
            )));
        }
        let labels = record.labels.clone();
        if let Some(entry) = self.write().nodes.get_mut(node) {
            entry.record.labels = record.labels;
        }
        Ok(labels)
    }

    // -----------------------------------------------------------------------------
    // Node events into pools
    // -----------------------------------------------------------------------------

    /// A node changed state: tell its pool's watchers, and wake the master reconciler.
    pub(crate) fn node_transitioned(&self, node: &str, from: NodeState, to: NodeState) {
        self.events.emit(
            "node_state",
            None,
            json!({"node": node, "from": from, "to": to}),
        );
        let kind = match to {
            NodeState::Up => "node_up",
            NodeState::Down | NodeState::Left => "node_down",
            NodeState::Unreachable => "node_unreachable",
            NodeState::Suspect | NodeState::Joining => return,
        };
        let book = self.pools.book();
        if let Some(pool) = book.owner(node).and_then(|p| book.get(p)) {
            self.events.emit(
                kind,
                Some((&pool.name, &pool.tenant)),
                json!({"node": node, "state": to}),
            );
            self.pool_changed.notify_one();
        }
    }

    /// A node's whole set of processes (its agent's session started): forget what was
    /// known of it before, e.g. a master process that died with a restarted agent.
    /// `address` is where the agent connected from; a new one is stored with the node.
    pub(crate) async fn process_snapshot(
        &self,
        group: &str,
        node: &str,
        all: Vec<ProcessReport>,
        address: Option<std::net::IpAddr>,
    ) {
        let changed_record = {
            let mut reg = self.write();
            let Some(entry) = reg.nodes.get_mut(node) else {
                return;
            };
            if entry.record.group != group {
                return;
            }
            let address = address.map(|a| a.to_string());
            match address {
                Some(a) if entry.record.reached_from.as_ref() != Some(&a) => {
                    entry.record.reached_from = Some(a);
                    Some(entry.record.clone())
                }
                _ => None,
            }
        };
        {
            let mut procs = self
                .pools
                .processes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            procs.retain(|(n, _), _| n != node);
            for report in all {
                procs.insert((node.to_string(), report.id.clone()), report);
            }
        }
        self.pool_changed.notify_one();
        if let Some(record) = changed_record {
            // Compared with the identity's key like a label change, so a node removed
            // meanwhile is not written back.
            let result = self
                .km_txn(Txn {
                    compares: vec![Compare::value(
                        schema::identity_key(&record.identity()),
                        record.id.clone().into_bytes(),
                    )],
                    success: vec![TxnOp::put(schema::node_key(node), schema::encode(&record))],
                    failure: vec![],
                })
                .await;
            if let Err(e) = result {
                warn!(node_id = %node, error = %e, "could not store the node's address");
            }
        }
    }

    /// Agents reported on their processes (through their group master).
    pub(crate) fn process_reports(&self, reports: Vec<(String, ProcessReport)>) {
        let mut procs = self
            .pools
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (node, report) in reports {
            procs.insert((node, report.id.clone()), report);
        }
        drop(procs);
        self.pool_changed.notify_one();
    }
}
