//! What the pool routes answer: pools, their nodes, candidates and master, as types
//! whose schemas the OpenAPI description is derived from.

use std::collections::BTreeMap;

use glory_keymaster::schema::{
    Elastic, MasterSpec, PoolMaster, PoolRecord, PoolSelector, Reclaim, Spread,
};
use glory_protocol::NodeState;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::schema::Schema;
use utoipa::ToSchema;

use crate::cluster::Cluster;

/// The state of a pool's node: its node's state, or `removed` when the node no
/// longer exists.
fn node_state_schema() -> Schema {
    let states = NodeState::ALL.iter().map(|s| s.as_str());
    super::super::openapi::string_enum(states.chain(["removed"]))
}

/// How the last run of a master's process ended.
#[derive(Serialize, ToSchema)]
pub(super) struct MasterExit {
    /// Exit status, when it exited by itself.
    #[schema(required = true)]
    code: Option<i32>,
    /// The signal that ended it, when one did.
    #[schema(required = true)]
    signal: Option<i32>,
    /// How long it ran (0: it could not be started).
    ran_ms: u64,
    /// The same for people, or why it could not start.
    detail: String,
}

/// A pool's elected master.
#[derive(Serialize, ToSchema)]
#[schema(as = Master)]
pub(in crate::api) struct MasterView {
    /// Node id of the master.
    node: String,
    /// `ip`, `ip:port` or `[ipv6]:port` of the master: by default the address its
    /// node reached its group master from, else the node's first address that is not
    /// loopback or link-local.
    address: String,
    /// The leadership term: grows with every election (not with restarts on the same
    /// node); fence older masters with it.
    epoch: u64,
    /// When it was elected.
    since: u64,
    /// What the master's agent last said about its process: `starting` (not confirmed
    /// yet), `running`, `restarting` (it exited; its agent starts it again after a
    /// backoff), `failing` (it keeps exiting quickly; still restarted at the longest
    /// backoff), `stopped` (ended and not restarted), `unknown` (its node is not heard
    /// from).
    #[schema(schema_with = process_state_schema)]
    process: &'static str,
    /// Restarts of this epoch's process on its node.
    restarts: u32,
    /// Consecutive quick failures (exits or failed starts before a 30 s run) before the
    /// current run or pending restart.
    failures: u32,
    /// How the last run of this epoch's process ended; absent until one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_exit: Option<MasterExit>,
    /// The last lines (at most 20, 4 KiB) the process wrote to stdout and stderr;
    /// absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    output: Vec<String>,
}

fn process_state_schema() -> Schema {
    super::super::openapi::string_enum([
        "starting",
        "running",
        "restarting",
        "failing",
        "stopped",
        "unknown",
    ])
}

pub(in crate::api) fn master_view(cluster: &Cluster, pool: &str, m: &PoolMaster) -> MasterView {
    let process = cluster.master_process(pool, m);
    MasterView {
        node: m.node.clone(),
        address: m.address.clone(),
        epoch: m.epoch,
        since: m.since_ms,
        process: process.state,
        restarts: process.restarts,
        failures: process.failures,
        last_exit: process.last_exit.map(|exit| MasterExit {
            code: exit.code,
            signal: exit.signal,
            ran_ms: exit.ran_ms,
            detail: exit.detail,
        }),
        output: process.output,
    }
}

/// A member node of a pool.
#[derive(Serialize, ToSchema)]
pub(super) struct PoolNode {
    id: String,
    /// The node's group (empty when the node was removed).
    group: String,
    #[schema(schema_with = node_state_schema)]
    state: &'static str,
}

/// A master candidate.
#[derive(Serialize, ToSchema)]
pub(super) struct Candidate {
    node: String,
    /// Election order, from 1.
    #[schema(minimum = 1)]
    order: usize,
    #[schema(schema_with = node_state_schema)]
    state: &'static str,
    /// Whether this candidate is the current master.
    master: bool,
}

/// A borrowed node on its way to this pool.
#[derive(Serialize, ToSchema)]
pub(super) struct IncomingReclaim {
    node: String,
    from_pool: String,
    deadline_ms: u64,
}

/// A pool.
#[derive(Serialize, ToSchema)]
#[schema(as = Pool)]
pub(super) struct PoolView {
    name: String,
    tenant: String,
    /// `fs`, `db`, `dp` or `custom:<name>`.
    component: String,
    /// Number of member nodes.
    size: usize,
    /// An elastic pool's bounds; null for a fixed size.
    #[schema(required = true)]
    elastic: Option<Elastic>,
    selector: PoolSelector,
    spread: Spread,
    /// Whether a node that stays down is replaced.
    replace_failed: bool,
    /// How long a node must stay down before it is replaced.
    #[schema(minimum = 0)]
    replace_delay_seconds: f64,
    master_spec: MasterSpec,
    /// Member nodes, sorted by id.
    nodes: Vec<PoolNode>,
    /// Member count per group.
    nodes_by_group: BTreeMap<String, usize>,
    /// Master candidates in election order.
    candidates: Vec<Candidate>,
    /// The elected master; null when none.
    #[schema(required = true)]
    master: Option<MasterView>,
    /// Highest epoch given out in this pool.
    epoch: u64,
    /// When the pool was created.
    created_ms: u64,
    /// Nodes of this pool being reclaimed.
    reclaims: Vec<Reclaim>,
    /// Nodes on their way to this pool by reclaim.
    incoming: Vec<IncomingReclaim>,
}

/// Reclaims that bring nodes to `pool`.
fn incoming(cluster: &Cluster, pool: &str) -> Vec<IncomingReclaim> {
    let book = cluster.pools.book();
    crate::pools::reclaim::incoming_from(&book, pool)
        .map(|(from, r)| IncomingReclaim {
            node: r.node.clone(),
            from_pool: from.to_string(),
            deadline_ms: r.deadline_ms,
        })
        .collect()
}

fn candidates(cluster: &Cluster, p: &PoolRecord) -> Vec<Candidate> {
    let reg = cluster.read();
    p.candidates
        .iter()
        .enumerate()
        .map(|(i, id)| Candidate {
            node: id.clone(),
            order: i + 1,
            state: reg
                .nodes
                .get(id)
                .map_or("removed", |n| n.status.state.as_str()),
            master: p.master.as_ref().is_some_and(|m| &m.node == id),
        })
        .collect()
}

pub(super) fn pool_view(cluster: &Cluster, p: &PoolRecord) -> PoolView {
    let nodes: Vec<PoolNode> = {
        let reg = cluster.read();
        p.nodes
            .iter()
            .map(|id| {
                let node = reg.nodes.get(id);
                PoolNode {
                    id: id.clone(),
                    group: node.map(|n| n.record.group.clone()).unwrap_or_default(),
                    state: node.map_or("removed", |n| n.status.state.as_str()),
                }
            })
            .collect()
    };
    let mut nodes_by_group: BTreeMap<String, usize> = BTreeMap::new();
    for n in &nodes {
        *nodes_by_group.entry(n.group.clone()).or_default() += 1;
    }
    PoolView {
        name: p.name.clone(),
        tenant: p.tenant.clone(),
        component: p.component.clone(),
        size: p.nodes.len(),
        elastic: p.elastic,
        selector: p.selector.clone(),
        spread: p.spread,
        replace_failed: p.replace_failed,
        replace_delay_seconds: p.replace_delay_ms as f64 / 1000.0,
        master_spec: p.master_spec.clone(),
        nodes,
        nodes_by_group,
        candidates: candidates(cluster, p),
        master: p.master.as_ref().map(|m| master_view(cluster, &p.name, m)),
        epoch: p.epoch,
        created_ms: p.created_ms,
        reclaims: p.reclaims.clone(),
        incoming: incoming(cluster, &p.name),
    }
}

/// A pool with its recent events.
#[derive(Serialize, ToSchema)]
pub(super) struct PoolDetail {
    #[serde(flatten)]
    pub(super) pool: PoolView,
    /// The pool's last 50 kept events, oldest first.
    #[schema(schema_with = events_schema)]
    pub(super) events: Vec<Value>,
}

/// A list of `Event`s (a schema kept by hand in openapi_shared.json).
fn events_schema() -> utoipa::openapi::Array {
    super::super::openapi::array_of("Event").build()
}

/// A pool, with the ids of the nodes added.
#[derive(Serialize, ToSchema)]
pub(super) struct PoolNodesAdded {
    #[serde(flatten)]
    pub(super) pool: PoolView,
    /// Ids of the nodes added.
    pub(super) added: Vec<String>,
}

/// A pool, with the id of the node released.
#[derive(Serialize, ToSchema)]
pub(super) struct PoolNodeRemoved {
    #[serde(flatten)]
    pub(super) pool: PoolView,
    /// Id of the released node.
    pub(super) removed: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct PoolList {
    pub(super) items: Vec<PoolView>,
    /// Number of pools.
    pub(super) total: usize,
}

#[derive(Serialize, ToSchema)]
pub(super) struct PoolDeleted {
    /// Name of the deleted pool.
    pub(super) deleted: String,
    /// How many nodes returned to the free set.
    pub(super) released: usize,
}

#[derive(Serialize, ToSchema)]
pub(super) struct CandidateList {
    items: Vec<Candidate>,
    /// Number of candidates.
    total: usize,
}

impl CandidateList {
    pub(super) fn of(cluster: &Cluster, p: &PoolRecord) -> Self {
        let items = candidates(cluster, p);
        CandidateList {
            total: items.len(),
            items,
        }
    }
}
