//! The cluster master's state (`Cluster`), loaded from the key master at start, and
//! the registry's locks. Its operations are in the submodules: durable changes go to
//! the key master first and to memory after, so what the API shows was acknowledged by
//! the store; state transitions are queued to a writer that coalesces and batches them.

mod api_tokens;
pub(crate) mod bootstrap_tokens;
mod ca;
mod group_links;
mod groups;
mod keymaster;
mod removal;
pub(crate) mod renewal;
mod states;
mod txn_batch;
mod users;

pub(crate) use ca::load_or_create_ca;
pub(crate) use states::status_writer;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use glory_keymaster::schema::{
    self, ApiTokenRecord, GroupRecord, NodeRecord, NodeStatus, RemovedRecord, RevokedRecord,
};
use glory_keymaster::{KeyMaster, KeyMasterError, Txn, TxnOp};
use glory_protocol::{ClusterCa, NodeState, Refusal, RefusalCode};
use tokio::sync::mpsc;
use tracing::info;

use crate::registry::{GroupEntry, NodeEntry, Registry};
use crate::ClusterMasterSettings;

/// Hooks into a simulation (only `glory up` and `glory sim` provide one): the API's
/// `/api/v1/sim/...` routes call it. Real deployments have none and those routes 404.
#[async_trait::async_trait]
pub trait SimControl: Send + Sync + 'static {
    /// Cut a simulated node's power: it stops sending anything.
    async fn kill(&self, node: &str) -> Result<(), String>;
    /// Power a simulated node back on with its old identity.
    async fn restart(&self, node: &str) -> Result<(), String>;
    /// Hold a simulated node's CPU at `cpu_percent` for `seconds` (its metrics and
    /// heartbeat load say so).
    async fn load(&self, node: &str, cpu_percent: f64, seconds: u64) -> Result<(), String>;
    /// Kill (`start` false) or start one of a simulated node's daemons.
    async fn process(&self, node: &str, name: &str, start: bool) -> Result<(), String>;
}

pub(crate) fn refusal(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal::new(code, message)
}

pub(crate) fn unavailable(e: KeyMasterError) -> Refusal {
    refusal(RefusalCode::Unavailable, format!("key master: {e}"))
}

/// Keys per transaction: etcd's default limit is 128 operations.
pub(crate) const TXN_CHUNK: usize = 100;

/// What the active cluster master knows and does. Its operations are in the
/// submodules, one job each; a subsystem keeps its own state in a field of its own
/// (like `pools`) and reaches the rest through the crate-visible methods here.
pub struct Cluster {
    /// When this master took over: for a grace after it, a group's recorded master is
    /// preferred over others that register first (`group_roles`).
    pub(crate) took_over: std::time::Instant,
    pub(crate) settings: ClusterMasterSettings,
    pub(crate) km: Arc<dyn KeyMaster>,
    pub(crate) ca: ClusterCa,
    registry: RwLock<Registry>,
    api_tokens: RwLock<HashMap<String, ApiTokenRecord>>,
    /// Console sessions (signed in with a token or a user's password).
    pub(crate) sessions: crate::sessions::Sessions,
    status_tx: mpsc::UnboundedSender<(String, NodeStatus)>,
    pub(crate) sim: Option<Arc<dyn SimControl>>,
    pub(crate) started: Instant,
    pub(crate) km_writes: AtomicU64,
    /// Node certificates renewed since this master took over.
    pub(crate) renewals: AtomicU64,
    pub(crate) km_available: AtomicBool,
    /// Our leadership key and its create revision: every write through `km_txn` holds
    /// only while it is still there (a master whose lease ran out cannot write over
    /// its successor).
    pub(crate) fence: std::sync::RwLock<Option<(String, glory_keymaster::Revision)>>,
    /// A write was fenced off: the leadership loop checks at once whether we lead.
    pub(crate) fenced: tokio::sync::Notify,
    /// Why this master stopped leading, when it did (its process then exits with an
    /// error, so that a supervisor restarts it as a standby).
    pub(crate) deposed: std::sync::OnceLock<&'static str>,
    /// Enrollment writes waiting for a group commit.
    txn_batch: txn_batch::TxnBatch,
    /// Multi-use bootstrap tokens read from the key master in the last second.
    pub(crate) token_cache: bootstrap_tokens::TokenCache,
    next_session: AtomicU64,
    /// Transitions into each state since start, indexed like `NodeState::ALL`.
    transitions: [AtomicU64; 6],
    pub(crate) pools: crate::pools::PoolState,
    pub(crate) monitoring: crate::monitoring::MonitoringState,
    pub(crate) events: crate::events::EventBus,
    /// The ids of the key master's event ring when this master took over, for the
    /// event log's writer (`event_log::writer` takes them).
    pub(crate) event_ring: Mutex<std::collections::VecDeque<u64>>,
    /// Wakes the pool reconciler (a pool node changed state, a candidate changed...).
    pub(crate) pool_changed: tokio::sync::Notify,
    /// Addresses group master links came from (they reconnect from the same one).
    group_master_remotes: RwLock<HashSet<SocketAddr>>,
    /// Identity conflicts already reported to operators.
    pub(crate) conflicts: crate::enroll::ConflictLog,
    /// Boot table and provisioners.
    pub(crate) provisioning: crate::provisioning::ProvisioningState,
    /// Seals BMC passwords in the key master.
    pub(crate) secrets: crate::provisioning::SecretsKey,
    /// Last power state seen per target.
    pub(crate) power: crate::provisioning::power::PowerStates,
    /// Services, their balancers and autoscalers.
    pub(crate) services: crate::services::ServiceState,
    /// OS images, profiles, software packages and the content store.
    pub(crate) images: crate::provisioning::images::ImageState,
    /// What each node was sent of its configuration and packages, and what it said.
    pub(crate) setup: crate::provisioning::setup::SetupState,
    /// Images' torrents, their seeders and the tracker.
    pub(crate) distribution: glory_content::swarm::Swarms,
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
        // The previous leader's events first: ours continue after them.
        let events = crate::events::EventBus::default();
        let (past, event_ring) = crate::event_log::load(km.as_ref())
            .await
            .context("load events")?;
        events.restore(past);
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
        let (removed, _) = km
            .get_prefix(schema::REMOVED_PREFIX)
            .await
            .context("load removed nodes")?;
        for kv in removed {
            let record: RemovedRecord = schema::decode(&kv.key, &kv.value)?;
            registry.removed.insert(record.identity.clone(), record);
        }
        migrate_identities(km.as_ref(), &mut registry).await?;
        let api_tokens = api_tokens::load(km.as_ref()).await?;
        let book = crate::pools::load_book(km.as_ref())
            .await
            .context("load pools")?;
        let tenants = crate::pools::load_tenants(km.as_ref())
            .await
            .context("load tenants")?;
        let frameworks = crate::pools::load_frameworks(km.as_ref())
            .await
            .context("load frameworks")?;
        let monitoring = crate::monitoring::MonitoringState::load(km.as_ref())
            .await
            .context("load monitors")?;
        let provisioning = crate::provisioning::ProvisioningState::load(km.as_ref())
            .await
            .context("load boot records")?;
        let secrets = crate::provisioning::SecretsKey::load_or_create(&settings.secrets_key_file)
            .context("secrets key")?;
        let services =
            crate::services::ServiceState::load(km.as_ref(), settings.balancer_dir.clone())
                .await
                .context("load services")?;
        let distribution = glory_content::swarm::Swarms::new(
            settings.tracker_interval_seconds,
            settings.content_dir.join("torrents"),
            settings.content_dir.join("sha256"),
            settings.seed_upload_kib,
        )
        .trusting(match settings.api_tls {
            crate::config::ApiTls::Plain => None,
            _ => Some(settings.ca_file.clone()),
        });
        let content = glory_content::ContentStore::open(&settings.content_dir)
            .with_context(|| format!("content store {}", settings.content_dir.display()))?;
        let images = crate::provisioning::images::ImageState::load(km.as_ref(), content)
            .await
            .context("load images, profiles and software")?;
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
            sessions: Default::default(),
            status_tx,
            sim,
            started: Instant::now(),
            km_writes: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            km_available: AtomicBool::new(true),
            fence: std::sync::RwLock::new(None),
            fenced: tokio::sync::Notify::new(),
            deposed: std::sync::OnceLock::new(),
            txn_batch: Default::default(),
            token_cache: Default::default(),
            next_session: AtomicU64::new(1),
            transitions: Default::default(),
            pools: crate::pools::PoolState::new(book, tenants, frameworks),
            monitoring,
            events,
            event_ring: Mutex::new(event_ring),
            pool_changed: tokio::sync::Notify::new(),
            group_master_remotes: RwLock::new(HashSet::new()),
            conflicts: Default::default(),
            provisioning,
            secrets,
            power: Default::default(),
            services,
            distribution,
            images,
            setup: Default::default(),
            took_over: std::time::Instant::now(),
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
}

/// Node records written before server identities existed get theirs (the machine id
/// they were enrolled by) and the identity key, once, at load.
async fn migrate_identities(km: &dyn KeyMaster, registry: &mut Registry) -> anyhow::Result<()> {
    use anyhow::Context;
    let old: Vec<String> = registry
        .nodes
        .values()
        .filter(|n| n.record.server_identity.is_empty())
        .map(|n| n.record.id.clone())
        .collect();
    for chunk in old.chunks(TXN_CHUNK / 2) {
        let mut txn = Txn::default();
        for id in chunk {
            let Some(node) = registry.nodes.get_mut(id) else {
                continue;
            };
            node.record.server_identity = node.record.identity();
            txn.success.push(TxnOp::put(
                schema::node_key(id),
                schema::encode(&node.record),
            ));
            txn.success.push(TxnOp::put(
                schema::identity_key(&node.record.server_identity),
                id.clone().into_bytes(),
            ));
        }
        km.txn(txn).await.context("record node identities")?;
    }
    if !old.is_empty() {
        info!(
            nodes = old.len(),
            "recorded the identities of nodes enrolled by an older version"
        );
    }
    Ok(())
}
