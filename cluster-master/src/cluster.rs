//! The cluster master's operations: enrollment, group links, state changes, node
//! removal, tokens. Durable changes go to the key master first and to memory after, so
//! what the API shows was acknowledged by the store; state transitions are queued to a
//! writer that coalesces and batches them.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use glory_keymaster::schema::{
    self, ApiTokenRecord, BootstrapScope, BootstrapTokenRecord, GroupRecord, NodeRecord,
    NodeStatus, RevokedRecord, RECORD_VERSION,
};
use glory_keymaster::{Compare, KeyMaster, KeyMasterError, Txn, TxnOp};
use glory_protocol::{
    CertRole, CertSubject, ClusterCa, ClusterToGroup, Enrolled, GroupReport, Inventory, NodeState,
    Refusal, RefusalCode, StateChange,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::assign::{assign_group, AssignError};
use crate::auth::{self, TokenError};
use crate::registry::{GroupEntry, GroupLink, NodeEntry, Registry};
use crate::ClusterMasterSettings;

/// Hooks into a simulation (only `glory up` and `glory sim` provide one): the API's
/// `/api/v1/sim/...` routes call it. Real deployments have none and those routes 404.
#[async_trait::async_trait]
pub trait SimControl: Send + Sync + 'static {
    /// Cut a simulated node's power: it stops sending anything.
    async fn kill(&self, node: &str) -> Result<(), String>;
    /// Power a simulated node back on with its old identity.
    async fn restart(&self, node: &str) -> Result<(), String>;
}

fn refusal(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal::new(code, message)
}

fn unavailable(e: KeyMasterError) -> Refusal {
    refusal(RefusalCode::Unavailable, format!("key master: {e}"))
}

/// Keys per transaction: etcd's default limit is 128 operations.
const TXN_CHUNK: usize = 100;

pub struct Cluster {
    pub(crate) settings: ClusterMasterSettings,
    pub(crate) km: Arc<dyn KeyMaster>,
    pub(crate) ca: ClusterCa,
    registry: RwLock<Registry>,
    api_tokens: RwLock<HashMap<String, ApiTokenRecord>>,
    status_tx: mpsc::UnboundedSender<(String, NodeStatus)>,
    pub(crate) sim: Option<Arc<dyn SimControl>>,
    pub(crate) started: Instant,
    pub(crate) km_writes: AtomicU64,
    pub(crate) km_available: AtomicBool,
    next_session: AtomicU64,
    /// Transitions into each state since start, indexed like `NodeState::ALL`.
    transitions: [AtomicU64; 6],
    pub(crate) pools: crate::pools::PoolState,
    pub(crate) events: crate::events::EventBus,
    /// Wakes the pool reconciler (a pool node changed state, a candidate changed...).
    pub(crate) pool_changed: tokio::sync::Notify,
    /// Addresses group master links came from (they reconnect from the same one).
    group_master_remotes: RwLock<HashSet<SocketAddr>>,
}

impl Cluster {
    /// Load everything from the key master into memory.
    pub(crate) async fn load(
        settings: ClusterMasterSettings,
        km: Arc<dyn KeyMaster>,
        sim: Option<Arc<dyn SimControl>>,
        ca: ClusterCa,
    ) -> anyhow::Result<(Arc<Cluster>, mpsc::UnboundedReceiver<(String, NodeStatus)>)> {
        use anyhow::Context;
        let mut registry = Registry::default();
        let (groups, _) = km
            .get_prefix(schema::GROUPS_PREFIX)
            .await
            .context("load groups")?;
        for kv in groups {
            let record: GroupRecord = schema::decode(&kv.key, &kv.value)?;
            registry
                .groups
                .insert(record.id.clone(), GroupEntry::new(record));
        }
        let (statuses, _) = km
            .get_prefix(schema::NODE_STATUS_PREFIX)
            .await
            .context("load node status")?;
        let mut status_by_node: HashMap<String, NodeStatus> = HashMap::new();
        for kv in statuses {
            let id = kv
                .key
                .trim_start_matches(schema::NODE_STATUS_PREFIX)
                .to_string();
            status_by_node.insert(id, schema::decode(&kv.key, &kv.value)?);
        }
        let (nodes, _) = km
            .get_prefix(schema::NODES_PREFIX)
            .await
            .context("load nodes")?;
        for kv in nodes {
            let record: NodeRecord = schema::decode(&kv.key, &kv.value)?;
            let status = status_by_node.remove(&record.id).unwrap_or_else(|| {
                NodeStatus::new(
                    NodeState::Unreachable,
                    glory_protocol::now_ms(),
                    "no status record",
                )
            });
            registry.insert_node(NodeEntry {
                record,
                status,
                load: None,
                load_ms: 0,
            });
        }
        let (revoked, _) = km
            .get_prefix(schema::REVOKED_PREFIX)
            .await
            .context("load revoked serials")?;
        for kv in revoked {
            let record: RevokedRecord = schema::decode(&kv.key, &kv.value)?;
            registry.revoked.insert(record.serial, record.node);
        }
        let mut api_tokens = HashMap::new();
        let (tokens, _) = km
            .get_prefix(schema::API_TOKENS_PREFIX)
            .await
            .context("load api tokens")?;
        for kv in tokens {
            let record: ApiTokenRecord = schema::decode(&kv.key, &kv.value)?;
            api_tokens.insert(record.id.clone(), record);
        }
        let book = crate::pools::load_book(km.as_ref())
            .await
            .context("load pools")?;
        let tenants = crate::pools::load_tenants(km.as_ref())
            .await
            .context("load tenants")?;
        // Until their group masters report, nobody knows how live nodes are.
        let now = glory_protocol::now_ms();
        let mut stale = Vec::new();
        for node in registry.nodes.values_mut() {
            if matches!(
                node.status.state,
                NodeState::Up | NodeState::Suspect | NodeState::Joining
            ) && node
                .status
                .transition(NodeState::Unreachable, now, "cluster master restarted")
            {
                stale.push((node.record.id.clone(), node.status.clone()));
            }
        }
        info!(
            nodes = registry.nodes.len(),
            groups = registry.groups.len(),
            "registry loaded"
        );
        let (status_tx, status_rx) = mpsc::unbounded_channel();
        for item in stale {
            let _ = status_tx.send(item);
        }
        let cluster = Arc::new(Cluster {
            settings,
            km,
            ca,
            registry: RwLock::new(registry),
            api_tokens: RwLock::new(api_tokens),
            status_tx,
            sim,
            started: Instant::now(),
            km_writes: AtomicU64::new(0),
            km_available: AtomicBool::new(true),
            next_session: AtomicU64::new(1),
            transitions: Default::default(),
            pools: crate::pools::PoolState::new(book, tenants),
            events: Default::default(),
            pool_changed: tokio::sync::Notify::new(),
            group_master_remotes: RwLock::new(HashSet::new()),
        });
        Ok((cluster, status_rx))
    }

    /// Locks are held for memory work only, never across an await; a poisoned lock is
    /// recovered (every critical section leaves the registry consistent).
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) async fn km_txn(
        &self,
        txn: Txn,
    ) -> Result<glory_keymaster::TxnResponse, KeyMasterError> {
        let writes = txn.success.len().max(txn.failure.len()) as u64;
        let result = self.km.txn(txn).await;
        match &result {
            Ok(_) => {
                self.km_writes.fetch_add(writes, Ordering::Relaxed);
                self.km_available.store(true, Ordering::Relaxed);
            }
            Err(KeyMasterError::Unavailable(_)) => {
                self.km_available.store(false, Ordering::Relaxed)
            }
            Err(_) => {}
        }
        result
    }

    // -----------------------------------------------------------------------------
    // Tokens
    // -----------------------------------------------------------------------------

    async fn bootstrap_token(
        &self,
        token: &str,
        scope: BootstrapScope,
    ) -> Result<(BootstrapTokenRecord, i64), Refusal> {
        let bad = |e: TokenError| {
            refusal(
                RefusalCode::BadToken,
                format!("bootstrap token rejected: {e}"),
            )
        };
        let (id, secret) = auth::parse_token(token).map_err(bad)?;
        let kv = self
            .km
            .get(&schema::bootstrap_token_key(id))
            .await
            .map_err(unavailable)?;
        let (record, rev) = match kv {
            Some(kv) => (
                Some(
                    schema::decode::<BootstrapTokenRecord>(&kv.key, &kv.value)
                        .map_err(|e| refusal(RefusalCode::Unavailable, e.to_string()))?,
                ),
                kv.mod_revision,
            ),
            None => (None, 0),
        };
        auth::check_bootstrap(record.as_ref(), secret, scope, glory_protocol::now_ms())
            .map_err(bad)?;
        Ok((record.ok_or_else(|| bad(TokenError::Invalid))?, rev))
    }

    /// Create a bootstrap token; returns the token string (shown once) and its record.
    pub async fn create_bootstrap_token(
        &self,
        ttl: Option<Duration>,
        single_use: bool,
        scope: BootstrapScope,
        description: &str,
    ) -> Result<(String, BootstrapTokenRecord), KeyMasterError> {
        let (id, secret, token) = auth::new_token("gb-");
        let now = glory_protocol::now_ms();
        let record = BootstrapTokenRecord {
            v: RECORD_VERSION,
            id: id.clone(),
            secret_sha256: auth::hash_secret(&secret),
            created_ms: now,
            expires_ms: ttl.map(|t| now + t.as_millis() as u64),
            single_use,
            used: false,
            scope,
            description: description.to_string(),
        };
        self.km_txn(Txn {
            compares: vec![Compare::absent(schema::bootstrap_token_key(&id))],
            success: vec![TxnOp::put(
                schema::bootstrap_token_key(&id),
                schema::encode(&record),
            )],
            failure: vec![],
        })
        .await?;
        Ok((token, record))
    }

    pub async fn list_bootstrap_tokens(&self) -> Result<Vec<BootstrapTokenRecord>, KeyMasterError> {
        let (kvs, _) = self.km.get_prefix(schema::BOOTSTRAP_TOKENS_PREFIX).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| schema::decode(&kv.key, &kv.value).ok())
            .collect())
    }

    pub async fn delete_bootstrap_token(&self, id: &str) -> Result<bool, KeyMasterError> {
        let deleted = self.km.delete(&schema::bootstrap_token_key(id)).await?;
        Ok(deleted > 0)
    }

    /// Make sure an API token exists for `token` (the operator token file of `glory up`).
    pub(crate) async fn ensure_api_token(&self, token: &str, role: &str) -> anyhow::Result<()> {
        let (id, secret) =
            auth::parse_token(token).map_err(|e| anyhow::anyhow!("operator token: {e}"))?;
        if self.check_api_token(token).is_some() {
            return Ok(());
        }
        let record = ApiTokenRecord {
            v: RECORD_VERSION,
            id: id.to_string(),
            secret_sha256: auth::hash_secret(secret),
            role: role.to_string(),
            tenant: None,
            created_ms: glory_protocol::now_ms(),
            description: "operator token".to_string(),
        };
        self.km
            .put(&schema::api_token_key(id), schema::encode(&record), None)
            .await?;
        self.remember_api_token(record);
        Ok(())
    }

    /// Every API token record.
    pub(crate) fn api_tokens(&self) -> Vec<ApiTokenRecord> {
        let tokens = self.api_tokens.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<ApiTokenRecord> = tokens.values().cloned().collect();
        out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        out
    }

    pub(crate) fn remember_api_token(&self, record: ApiTokenRecord) {
        self.api_tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.id.clone(), record);
    }

    pub(crate) fn forget_api_tokens(&self, ids: &[String]) {
        let mut tokens = self.api_tokens.write().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            tokens.remove(id);
        }
    }

    /// The record of a valid API bearer token.
    pub(crate) fn check_api_token(&self, token: &str) -> Option<ApiTokenRecord> {
        let (id, secret) = auth::parse_token(token).ok()?;
        let tokens = self.api_tokens.read().unwrap_or_else(|p| p.into_inner());
        let record = tokens.get(id)?;
        auth::secret_matches(&record.secret_sha256, secret).then(|| record.clone())
    }

    // -----------------------------------------------------------------------------
    // Enrollment
    // -----------------------------------------------------------------------------

    fn node_id_for(registry: &Registry, machine_id: &str) -> String {
        let digest = hex::encode(Sha256::digest(machine_id.as_bytes()));
        let base = format!("n-{}", &digest[..12]);
        let mut id = base.clone();
        let mut n = 1;
        while registry
            .nodes
            .get(&id)
            .is_some_and(|e| e.record.machine_id != machine_id)
        {
            n += 1;
            id = format!("{base}-{n}");
        }
        id
    }

    /// Enroll a server: check the token, give it an id and a group, sign its key.
    pub(crate) async fn enroll_node(
        &self,
        token: &str,
        inventory: Inventory,
        csr_pem: &str,
    ) -> Result<Enrolled, Refusal> {
        if inventory.machine_id.is_empty() || inventory.machine_id.len() > 256 {
            return Err(refusal(
                RefusalCode::BadRequest,
                "inventory.machine_id must be 1-256 characters",
            ));
        }
        let (token_record, token_rev) = self.bootstrap_token(token, BootstrapScope::Node).await?;
        let now = glory_protocol::now_ms();
        // Reserve the node in memory under the lock, so concurrent enrollments see the
        // group sizes including each other.
        let (id, group, previous) = {
            let mut reg = self.write();
            match reg.machines.get(&inventory.machine_id).cloned() {
                Some(id)
                    if reg
                        .nodes
                        .get(&id)
                        .is_some_and(|n| reg.groups.contains_key(&n.record.group)) =>
                {
                    let group = reg.nodes[&id].record.group.clone();
                    let previous = reg
                        .nodes
                        .get(&id)
                        .map(|n| (n.record.clone(), n.status.clone()));
                    (id, group, previous)
                }
                _ => {
                    let subnets = crate::assign::node_subnets(&inventory);
                    let group =
                        assign_group(&reg.group_loads(), &subnets, self.settings.group_size_limit)
                            .map_err(|e| match e {
                                AssignError::NoGroups | AssignError::NoCapacity { .. } => {
                                    refusal(RefusalCode::NoCapacity, e.to_string())
                                }
                            })?;
                    let id = Self::node_id_for(&reg, &inventory.machine_id);
                    let record = NodeRecord {
                        v: RECORD_VERSION,
                        id: id.clone(),
                        hostname: inventory.hostname.clone(),
                        machine_id: inventory.machine_id.clone(),
                        group: group.clone(),
                        serial: String::new(),
                        enrolled_ms: now,
                        inventory: inventory.clone(),
                        labels: Default::default(),
                        reached_from: None,
                    };
                    let status = NodeStatus::new(NodeState::Joining, now, "enrolled");
                    reg.insert_node(NodeEntry {
                        record,
                        status,
                        load: None,
                        load_ms: 0,
                    });
                    (id, group, None)
                }
            }
        };
        let rollback = |previous: &Option<(NodeRecord, NodeStatus)>| {
            let mut reg = self.write();
            if previous.is_none() {
                reg.remove_node(&id);
            }
        };
        let subject = CertSubject {
            id: id.clone(),
            role: CertRole::Node,
            group: Some(group.clone()),
        };
        let signed = match self
            .ca
            .sign_csr(csr_pem, &subject, self.settings.cert_validity)
        {
            Ok(signed) => signed,
            Err(e) => {
                rollback(&previous);
                return Err(refusal(RefusalCode::BadRequest, e.to_string()));
            }
        };
        let mut record = match &previous {
            Some((record, _)) => record.clone(),
            None => self
                .read()
                .nodes
                .get(&id)
                .map(|n| n.record.clone())
                .ok_or_else(|| {
                    refusal(
                        RefusalCode::Unavailable,
                        "node vanished during enrollment (removed concurrently)",
                    )
                })?,
        };
        record.serial = signed.serial.clone();
        record.hostname = inventory.hostname.clone();
        record.inventory = inventory;
        let status = match &previous {
            Some((_, status)) => status.clone(),
            None => NodeStatus::new(NodeState::Joining, now, "enrolled"),
        };
        let mut txn = Txn::default();
        if token_record.single_use {
            let key = schema::bootstrap_token_key(&token_record.id);
            txn.compares
                .push(Compare::mod_revision(key.clone(), token_rev));
            let used = BootstrapTokenRecord {
                used: true,
                ..token_record.clone()
            };
            txn.success.push(TxnOp::put(key, schema::encode(&used)));
        }
        txn.success
            .push(TxnOp::put(schema::node_key(&id), schema::encode(&record)));
        txn.success.push(TxnOp::put(
            schema::node_status_key(&id),
            schema::encode(&status),
        ));
        txn.success.push(TxnOp::put(
            schema::machine_key(&record.machine_id),
            id.clone().into_bytes(),
        ));
        match self.km_txn(txn).await {
            Ok(resp) if resp.succeeded => {}
            Ok(_) => {
                rollback(&previous);
                return Err(refusal(
                    RefusalCode::BadToken,
                    "bootstrap token rejected: single-use token was already used",
                ));
            }
            Err(e) => {
                rollback(&previous);
                return Err(unavailable(e));
            }
        }
        let group_masters = {
            let mut reg = self.write();
            let Some(entry) = reg.nodes.get_mut(&id) else {
                return Err(refusal(
                    RefusalCode::Unavailable,
                    "node removed during enrollment",
                ));
            };
            entry.record = record;
            let member = entry.member();
            if let Some(g) = reg.groups.get(&group) {
                g.notify(ClusterToGroup::MemberAdded(member));
            }
            reg.group_master_addrs(&group)
        };
        debug!(node_id = %id, group = %group, reenrolled = previous.is_some(), "node enrolled");
        Ok(Enrolled {
            id,
            group: Some(group),
            group_masters,
            cert_pem: signed.cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
        })
    }

    /// Make sure a group record exists with `master_addr`; creates the group.
    pub(crate) async fn ensure_group(
        &self,
        group: &str,
        master_addr: Option<SocketAddr>,
    ) -> Result<(), KeyMasterError> {
        let current = self.read().groups.get(group).map(|g| g.record.clone());
        let record = match current {
            Some(record) if master_addr.is_none() || record.master_addr == master_addr => {
                return Ok(())
            }
            Some(record) => GroupRecord {
                master_addr,
                ..record
            },
            None => GroupRecord {
                v: RECORD_VERSION,
                id: group.to_string(),
                master_addr,
                created_ms: glory_protocol::now_ms(),
            },
        };
        self.km_txn(Txn {
            success: vec![TxnOp::put(
                schema::group_key(group),
                schema::encode(&record),
            )],
            ..Default::default()
        })
        .await?;
        let mut reg = self.write();
        match reg.groups.get_mut(group) {
            Some(entry) => entry.record = record,
            None => {
                info!(group = %group, "group created");
                reg.groups
                    .insert(group.to_string(), GroupEntry::new(record));
            }
        }
        Ok(())
    }

    /// Enroll a group master: check the token, create its group, sign its key.
    pub(crate) async fn enroll_group_master(
        &self,
        token: &str,
        group: &str,
        listen: SocketAddr,
        csr_pem: &str,
    ) -> Result<Enrolled, Refusal> {
        if group.is_empty()
            || group.len() > 64
            || !group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(refusal(
                RefusalCode::BadRequest,
                "group name must be 1-64 letters, digits, '-' or '_'",
            ));
        }
        self.bootstrap_token(token, BootstrapScope::GroupMaster)
            .await?;
        let subject = CertSubject {
            id: group.to_string(),
            role: CertRole::GroupMaster,
            group: None,
        };
        let signed = self
            .ca
            .sign_csr(csr_pem, &subject, self.settings.cert_validity)
            .map_err(|e| refusal(RefusalCode::BadRequest, e.to_string()))?;
        // The address is recorded when the master registers and the cluster master knows
        // whether it leads or stands by.
        self.ensure_group(group, None).await.map_err(unavailable)?;
        info!(group = %group, %listen, "group master enrolled");
        Ok(Enrolled {
            id: group.to_string(),
            group: Some(group.to_string()),
            group_masters: vec![listen],
            cert_pem: signed.cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
        })
    }

    /// Issue a group master identity directly (masters started in the same process).
    pub fn issue_group_master_identity(
        &self,
        group: &str,
    ) -> anyhow::Result<glory_protocol::TlsIdentity> {
        let subject = CertSubject {
            id: group.to_string(),
            role: CertRole::GroupMaster,
            group: None,
        };
        Ok(self.ca.issue(&subject, self.settings.cert_validity)?.0)
    }

    // -----------------------------------------------------------------------------
    // Group links
    // -----------------------------------------------------------------------------

    /// A group master registered. The first of a group leads; later ones stand by
    /// (a re-registration from the active master's own address replaces its old link).
    /// Returns the session id and the messages to send it first.
    pub(crate) async fn group_connected(
        &self,
        group: &str,
        listen: SocketAddr,
        conn: quinn::Connection,
        tx: mpsc::Sender<ClusterToGroup>,
    ) -> Result<(u64, Vec<ClusterToGroup>), KeyMasterError> {
        let becomes_active = {
            let reg = self.read();
            reg.groups
                .get(group)
                .is_none_or(|g| g.link.as_ref().is_none_or(|l| l.listen == listen))
        };
        let recorded = self
            .ensure_group(group, becomes_active.then_some(listen))
            .await;
        if let Err(e) = recorded {
            // Without the key master a known group keeps working from memory.
            if !self.read().groups.contains_key(group) {
                return Err(e);
            }
            warn!(group = %group, error = %e, "group master address not recorded; serving from memory");
        }
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        {
            let mut remotes = self
                .group_master_remotes
                .write()
                .unwrap_or_else(|p| p.into_inner());
            // Bounded: a few per group is normal; a flood of registrations is not.
            if remotes.len() < 4096 {
                remotes.insert(conn.remote_address());
            }
        }
        let link = GroupLink {
            session,
            listen,
            tx,
            conn,
            since_ms: glory_protocol::now_ms(),
        };
        let mut reg = self.write();
        let Some(entry) = reg.groups.get_mut(group) else {
            return Err(KeyMasterError::Internal(format!("group {group} vanished")));
        };
        // A master that comes back replaces its own stale links.
        entry.standbys.retain(|s| s.listen != listen);
        let active = entry.link.as_ref().is_none_or(|l| l.listen == listen);
        if active {
            if let Some(old) = entry.link.replace(link) {
                old.conn.close(
                    quinn::VarInt::from_u32(glory_protocol::close::REPLACED),
                    b"replaced by a newer connection",
                );
            }
        } else {
            entry.standbys.push(link);
        }
        let masters = reg.group_master_addrs(group);
        let mut first = vec![ClusterToGroup::Role {
            active,
            masters: masters.clone(),
        }];
        if active {
            first.push(self.members_message(&reg, group));
        }
        if let Some(entry) = reg.groups.get(group) {
            // Everyone else of the group learns the new list of masters.
            for other in entry
                .link
                .iter()
                .chain(entry.standbys.iter())
                .filter(|l| l.session != session)
            {
                let is_active = entry
                    .link
                    .as_ref()
                    .is_some_and(|l| l.session == other.session);
                let _ = other.tx.try_send(ClusterToGroup::Role {
                    active: is_active,
                    masters: masters.clone(),
                });
            }
        }
        info!(group = %group, %listen, active, "group master connected");
        Ok((session, first))
    }

    fn members_message(&self, reg: &Registry, group: &str) -> ClusterToGroup {
        let members: Vec<_> = reg
            .groups
            .get(group)
            .map(|g| {
                g.members
                    .iter()
                    .filter_map(|id| reg.nodes.get(id))
                    .map(NodeEntry::member)
                    .collect()
            })
            .unwrap_or_default();
        let revoked: Vec<String> = reg.revoked.keys().cloned().collect();
        ClusterToGroup::Members { members, revoked }
    }

    /// A group master link ended. A lost standby is just forgotten. A lost active
    /// master makes its live nodes `unreachable` and promotes the first standby;
    /// returns the promoted master's address, to be recorded.
    pub(crate) fn group_disconnected(&self, group: &str, session: u64) -> Option<SocketAddr> {
        let now = glory_protocol::now_ms();
        let mut reg = self.write();
        let entry = reg.groups.get_mut(group)?;
        if entry.standbys.iter().any(|s| s.session == session) {
            entry.standbys.retain(|s| s.session != session);
            info!(group = %group, "standby group master disconnected");
            let masters = reg.group_master_addrs(group);
            if let Some(entry) = reg.groups.get(group) {
                entry.announce_roles(&masters);
            }
            return None;
        }
        if entry.link.as_ref().is_none_or(|l| l.session != session) {
            return None; // an older link; a newer one is in place
        }
        entry.link = None;
        let promoted = if entry.standbys.is_empty() {
            None
        } else {
            Some(entry.standbys.remove(0))
        };
        let members: Vec<String> = entry.members.iter().cloned().collect();
        let mut changed = 0;
        let mut happened = Vec::new();
        for id in members {
            if let Some(node) = reg.nodes.get_mut(&id) {
                if matches!(
                    node.status.state,
                    NodeState::Up | NodeState::Suspect | NodeState::Joining
                ) && node.status.transition(
                    NodeState::Unreachable,
                    now,
                    "group master unreachable",
                ) {
                    changed += 1;
                    if let Some(prev) = node.status.history.iter().rev().nth(1) {
                        happened.push((id.clone(), prev.state));
                    }
                    self.count_transition(NodeState::Unreachable);
                    let _ = self.status_tx.send((id, node.status.clone()));
                }
            }
        }
        let notify_pools = |happened: Vec<(String, NodeState)>| {
            for (node, from) in happened {
                self.node_transitioned(&node, from, NodeState::Unreachable);
            }
        };
        let Some(promoted) = promoted else {
            drop(reg);
            notify_pools(happened);
            warn!(group = %group, nodes_unreachable = changed, "group master disconnected; no standby");
            return None;
        };
        let addr = promoted.listen;
        let members = self.members_message(&reg, group);
        if let Some(entry) = reg.groups.get_mut(group) {
            entry.record.master_addr = Some(addr);
            entry.link = Some(promoted);
        }
        let masters = reg.group_master_addrs(group);
        if let Some(entry) = reg.groups.get(group) {
            entry.announce_roles(&masters);
            entry.notify(members);
        }
        drop(reg);
        notify_pools(happened);
        warn!(group = %group, nodes_unreachable = changed, promoted = %addr, "group master lost; standby promoted");
        Some(addr)
    }

    /// Record a promoted standby as the group's master (after `group_disconnected`).
    pub(crate) async fn record_promotion(&self, group: &str, addr: SocketAddr) {
        let record = self.read().groups.get(group).map(|g| GroupRecord {
            master_addr: Some(addr),
            ..g.record.clone()
        });
        if let Some(record) = record {
            let txn = Txn {
                success: vec![TxnOp::put(
                    schema::group_key(group),
                    schema::encode(&record),
                )],
                ..Default::default()
            };
            if let Err(e) = self.km_txn(txn).await {
                warn!(group = %group, error = %e, "could not record the promoted group master; kept in memory");
            }
        }
    }

    /// Where a node's group is led now (agents that lost their group master ask).
    pub(crate) fn locate(&self, node: &str) -> Option<glory_protocol::GroupLocation> {
        let reg = self.read();
        let group = reg.nodes.get(node)?.record.group.clone();
        let masters = reg.group_master_addrs(&group);
        Some(glory_protocol::GroupLocation { group, masters })
    }

    /// Apply a group master's state transitions.
    pub(crate) fn apply_changes(&self, group: &str, changes: Vec<StateChange>) {
        let mut happened = Vec::new();
        let mut reg = self.write();
        for change in changes {
            let Some(node) = reg.nodes.get_mut(&change.node) else {
                continue;
            };
            if node.record.group != group {
                warn!(node_id = %change.node, group = %group, "state change for a node of another group ignored");
                continue;
            }
            if node
                .status
                .transition(change.to, change.at_ms, &change.reason)
            {
                self.count_transition(change.to);
                if change.to == NodeState::Down {
                    warn!(node_id = %change.node, group = %group, "node down");
                } else if change.from == NodeState::Joining && change.to == NodeState::Up {
                    debug!(node_id = %change.node, group = %group, "node joined");
                } else {
                    info!(node_id = %change.node, group = %group, from = %change.from, to = %change.to, "node state changed");
                }
                let _ = self
                    .status_tx
                    .send((change.node.clone(), node.status.clone()));
                happened.push((change.node, change.from, change.to));
            }
        }
        drop(reg);
        for (node, from, to) in happened {
            self.node_transitioned(&node, from, to);
        }
    }

    /// Apply a group report: loads and heartbeat statistics (memory only), inventory
    /// changes (written).
    pub(crate) async fn apply_report(&self, group: &str, report: GroupReport) {
        let now = glory_protocol::now_ms();
        let mut changed_records = Vec::new();
        {
            let mut reg = self.write();
            if let Some(entry) = reg.groups.get_mut(group) {
                entry.heartbeats_received = report.heartbeats_received;
                entry.heartbeats_lost = report.heartbeats_lost;
                entry.last_report_ms = now;
            }
            for load in report.loads {
                if let Some(node) = reg.nodes.get_mut(&load.node) {
                    if node.record.group == group {
                        node.load = Some(load.load);
                        node.load_ms = now;
                    }
                }
            }
            for (id, inventory) in report.inventories {
                if let Some(node) = reg.nodes.get_mut(&id) {
                    if node.record.group == group && node.record.inventory != inventory {
                        node.record.hostname = inventory.hostname.clone();
                        node.record.inventory = inventory;
                        changed_records.push(node.record.clone());
                    }
                }
            }
        }
        for chunk in changed_records.chunks(TXN_CHUNK) {
            let txn = Txn {
                success: chunk
                    .iter()
                    .map(|r| TxnOp::put(schema::node_key(&r.id), schema::encode(r)))
                    .collect(),
                ..Default::default()
            };
            if let Err(e) = self.km_txn(txn).await {
                warn!(group = %group, error = %e, "could not store changed inventories");
            }
        }
    }

    // -----------------------------------------------------------------------------
    // Node removal
    // -----------------------------------------------------------------------------

    /// Remove a node: its certificate is refused from now on.
    pub async fn remove_node(&self, id: &str) -> Result<Option<String>, KeyMasterError> {
        let Some(record) = self.read().nodes.get(id).map(|n| n.record.clone()) else {
            return Ok(None);
        };
        match self.release_everywhere(id).await {
            Ok(()) => {}
            Err(crate::pools::OpError::KeyMaster(e)) => return Err(e),
            Err(e) => warn!(node_id = %id, error = %e, "could not release the node from its pool"),
        }
        let revoked = RevokedRecord {
            v: RECORD_VERSION,
            serial: record.serial.clone(),
            node: id.to_string(),
            at_ms: glory_protocol::now_ms(),
        };
        let txn = Txn {
            compares: vec![],
            success: vec![
                TxnOp::delete(schema::node_key(id)),
                TxnOp::delete(schema::node_status_key(id)),
                TxnOp::delete(schema::machine_key(&record.machine_id)),
                TxnOp::put(
                    schema::revoked_key(&record.serial),
                    schema::encode(&revoked),
                ),
            ],
            failure: vec![],
        };
        self.km_txn(txn).await?;
        let mut reg = self.write();
        reg.remove_node(id);
        reg.revoked.insert(record.serial.clone(), id.to_string());
        if let Some(group) = reg.groups.get(&record.group) {
            group.notify(ClusterToGroup::MemberRemoved {
                node: id.to_string(),
                serial: record.serial.clone(),
            });
        }
        info!(node_id = %id, group = %record.group, "node removed");
        Ok(Some(record.group))
    }

    /// Whether the last key master call succeeded.
    pub fn keymaster_available(&self) -> bool {
        self.km_available.load(Ordering::Relaxed)
    }

    /// Probe the key master (a read), remembering whether it answered.
    pub(crate) async fn probe_keymaster(&self, timeout: Duration) -> bool {
        let ok = matches!(
            tokio::time::timeout(timeout, self.km.get(schema::CA_KEY)).await,
            Ok(Ok(_))
        );
        let was = self.km_available.swap(ok, Ordering::Relaxed);
        if was && !ok {
            warn!("key master unavailable: serving from memory, refusing changes that need it");
        } else if !was && ok {
            info!("key master available again");
        }
        ok
    }

    /// Key master writes (operations) made by this master since it started.
    pub fn keymaster_writes(&self) -> u64 {
        self.km_writes.load(Ordering::Relaxed)
    }

    fn count_transition(&self, to: NodeState) {
        if let Some(i) = NodeState::ALL.iter().position(|s| *s == to) {
            self.transitions[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Transitions into each state since this master started.
    pub fn transition_counts(&self) -> Vec<(NodeState, u64)> {
        NodeState::ALL
            .iter()
            .zip(&self.transitions)
            .map(|(s, n)| (*s, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Forget every group master link (shutdown): their connection handles would keep
    /// the endpoint, and its address, alive.
    pub(crate) fn drop_links(&self) {
        for group in self.write().groups.values_mut() {
            group.link = None;
        }
    }

    /// The key master this cluster master writes to.
    pub fn keymaster(&self) -> Arc<dyn KeyMaster> {
        self.km.clone()
    }

    /// How many group masters (active and standby) of `group` are connected now.
    pub fn group_master_count(&self, group: &str) -> usize {
        self.read()
            .groups
            .get(group)
            .map(|g| g.link.iter().count() + g.standbys.len())
            .unwrap_or(0)
    }

    /// Whether `remote` is where a group master's link (active, standby, or one seen
    /// since this master started) comes from.
    pub(crate) fn is_group_master_address(&self, remote: SocketAddr) -> bool {
        self.group_master_remotes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&remote)
    }

    /// How many group masters are connected now.
    pub fn connected_groups(&self) -> usize {
        self.read()
            .groups
            .values()
            .filter(|g| g.link.is_some())
            .count()
    }

    /// The cluster CA certificate (PEM), for agents to trust.
    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem().to_string()
    }

    /// A node's current state, if it exists.
    pub fn node_state(&self, id: &str) -> Option<NodeState> {
        self.read().nodes.get(id).map(|n| n.status.state)
    }

    pub(crate) fn is_revoked(&self, serial: &str) -> bool {
        self.read().revoked.contains_key(serial)
    }
}

/// Load the cluster CA from the key master, creating it on first start. Two masters
/// racing to create it agree through a create-if-absent transaction.
pub(crate) async fn load_or_create_ca(
    km: &dyn KeyMaster,
    cluster_name: &str,
) -> anyhow::Result<ClusterCa> {
    use anyhow::Context;
    if let Some(kv) = km.get(schema::CA_KEY).await.context("read cluster CA")? {
        let record: schema::CaRecord = schema::decode(&kv.key, &kv.value)?;
        return ClusterCa::from_pem(&record.cert_pem, &record.key_pem).context("load cluster CA");
    }
    let ca = ClusterCa::generate(cluster_name)?;
    let record = schema::CaRecord {
        v: RECORD_VERSION,
        cert_pem: ca.cert_pem().to_string(),
        key_pem: ca.key_pem().to_string(),
    };
    let resp = km
        .txn(Txn {
            compares: vec![Compare::absent(schema::CA_KEY)],
            success: vec![TxnOp::put(schema::CA_KEY, schema::encode(&record))],
            failure: vec![TxnOp::Get {
                key: schema::CA_KEY.to_string(),
            }],
        })
        .await
        .context("store cluster CA")?;
    if resp.succeeded {
        info!("cluster CA created");
        return Ok(ca);
    }
    match resp.results.first() {
        Some(glory_keymaster::OpResult::Get(kvs)) if !kvs.is_empty() => {
            let record: schema::CaRecord = schema::decode(&kvs[0].key, &kvs[0].value)?;
            ClusterCa::from_pem(&record.cert_pem, &record.key_pem).context("load cluster CA")
        }
        _ => anyhow::bail!("cluster CA vanished while creating it"),
    }
}

/// Write queued status changes, coalesced per node and batched per transaction, until
/// the channel closes. Failed writes are retried with backoff (the key master may be
/// briefly away); memory already has the new state.
pub(crate) async fn status_writer(
    cluster: Arc<Cluster>,
    mut rx: mpsc::UnboundedReceiver<(String, NodeStatus)>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut pending: HashMap<String, NodeStatus> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    let mut stopping = false;
    loop {
        if pending.is_empty() {
            if stopping {
                return;
            }
            tokio::select! {
                item = rx.recv() => match item {
                    Some((id, status)) => {
                        pending.insert(id, status);
                    }
                    None => return,
                },
                _ = shutdown.cancelled() => {
                    // Flush what is queued, once, then stop.
                    stopping = true;
                }
            }
        }
        while let Ok((id, status)) = rx.try_recv() {
            pending.insert(id, status);
        }
        let ids: Vec<String> = pending.keys().take(TXN_CHUNK).cloned().collect();
        // Nodes removed meanwhile must not be resurrected by a late status write.
        let live: HashSet<String> = {
            let reg = cluster.read();
            ids.iter()
                .filter(|id| reg.nodes.contains_key(*id))
                .cloned()
                .collect()
        };
        let ops: Vec<TxnOp> = ids
            .iter()
            .filter(|id| live.contains(*id))
            .filter_map(|id| {
                pending
                    .get(id)
                    .map(|s| TxnOp::put(schema::node_status_key(id), schema::encode(s)))
            })
            .collect();
        let result = if ops.is_empty() {
            Ok(())
        } else {
            cluster
                .km_txn(Txn {
                    success: ops,
                    ..Default::default()
                })
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => {
                for id in &ids {
                    pending.remove(id);
                }
                backoff = Duration::from_millis(100);
            }
            Err(e) if stopping => {
                warn!(error = %e, pending = pending.len(), "node states not written before shutdown");
                return;
            }
            Err(e) => {
                warn!(error = %e, pending = pending.len(), "cannot write node states; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
