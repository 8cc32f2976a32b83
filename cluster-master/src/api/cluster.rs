//! The cluster at a glance: `GET /cluster` (counts, heartbeats, transitions, the key
//! master) and `GET /healthz`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Active;
use crate::role::Node;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default().routes(routes!(get_cluster))
}

/// `GET /healthz`: whether this master leads, and who does.
pub(super) async fn healthz(State(node): State<Arc<Node>>) -> Json<Value> {
    let active = node.active();
    Json(json!({
        "status": "ok",
        "role": if active.is_some() { "active" } else { "standby" },
        "leader": node.leader(),
        "keymaster_available": active.map(|c| c.keymaster_available()),
    }))
}

/// Counts by state, keyed by the state's name.
pub(super) fn counts_json<K: std::fmt::Display>(
    counts: &BTreeMap<K, usize>,
) -> BTreeMap<String, usize> {
    counts.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[derive(Serialize, ToSchema)]
pub(super) struct Heartbeats {
    /// Heartbeats received.
    pub received: u64,
    /// Heartbeats detected missing.
    pub lost: u64,
}

#[derive(Serialize, ToSchema)]
struct KeyMasterState {
    /// `embedded` or `etcd`.
    backend: &'static str,
    /// Whether the last key master call succeeded.
    available: bool,
    /// Key master writes by this master since it started.
    writes: u64,
}

/// The cluster at a glance.
#[derive(Serialize, ToSchema)]
#[schema(as = Cluster)]
struct ClusterView {
    /// Cluster name.
    name: String,
    /// Number of nodes.
    nodes: usize,
    /// Node count per state (only states that occur).
    nodes_by_state: BTreeMap<String, usize>,
    /// Number of groups.
    groups: usize,
    /// Groups whose active group master is connected.
    groups_connected: usize,
    /// Most nodes a group takes.
    group_size_limit: usize,
    heartbeats: Heartbeats,
    /// Alerts firing now.
    alerts_firing: usize,
    /// Transitions into each state since this master started (every state).
    transitions: BTreeMap<String, u64>,
    keymaster: KeyMasterState,
    /// Seconds since this master became active.
    uptime_seconds: u64,
    /// Whether the `/sim` routes work (glory up / glory sim).
    simulation: bool,
}

#[utoipa::path(get, path = "/cluster", tag = "cluster", operation_id = "getCluster",
    summary = "Cluster summary: node and group counts, heartbeats, key master status.",
    responses((status = 200, description = "The cluster summary.", body = ClusterView)))]
async fn get_cluster(Active(cluster): Active) -> Json<ClusterView> {
    let reg = cluster.read();
    let connected = reg.groups.values().filter(|g| g.link.is_some()).count();
    let (received, lost) = reg.groups.values().fold((0u64, 0u64), |acc, g| {
        (acc.0 + g.heartbeats_received, acc.1 + g.heartbeats_lost)
    });
    Json(ClusterView {
        name: cluster.settings.cluster_name.clone(),
        nodes: reg.nodes.len(),
        nodes_by_state: counts_json(&reg.counts()),
        groups: reg.groups.len(),
        groups_connected: connected,
        group_size_limit: cluster.settings.group_size_limit,
        heartbeats: Heartbeats { received, lost },
        alerts_firing: cluster.monitoring.alerts().count_firing(),
        transitions: cluster
            .transition_counts()
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect(),
        keymaster: KeyMasterState {
            backend: cluster.km.backend(),
            available: cluster.keymaster_available(),
            writes: cluster.km_writes.load(Ordering::Relaxed),
        },
        uptime_seconds: cluster.started.elapsed().as_secs(),
        simulation: cluster.sim.is_some(),
    })
}
