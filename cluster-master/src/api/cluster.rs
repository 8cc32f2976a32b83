//! The cluster at a glance: `GET /cluster` (counts, heartbeats, transitions, the key
//! master) and `GET /healthz`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::Active;
use crate::role::Node;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new().route("/cluster", get(get_cluster))
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

async fn get_cluster(Active(cluster): Active) -> Json<Value> {
    let reg = cluster.read();
    let connected = reg.groups.values().filter(|g| g.link.is_some()).count();
    let (received, lost) = reg.groups.values().fold((0u64, 0u64), |acc, g| {
        (acc.0 + g.heartbeats_received, acc.1 + g.heartbeats_lost)
    });
    Json(json!({
        "name": cluster.settings.cluster_name,
        "nodes": reg.nodes.len(),
        "nodes_by_state": counts_json(&reg.counts()),
        "groups": reg.groups.len(),
        "groups_connected": connected,
        "group_size_limit": cluster.settings.group_size_limit,
        "heartbeats": {"received": received, "lost": lost},
        "alerts_firing": cluster.monitoring.alerts().count_firing(),
        "transitions": cluster
            .transition_counts()
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect::<BTreeMap<_, _>>(),
        "keymaster": {
            "backend": cluster.km.backend(),
            "available": cluster.keymaster_available(),
            "writes": cluster.km_writes.load(Ordering::Relaxed),
        },
        "uptime_seconds": cluster.started.elapsed().as_secs(),
        "simulation": cluster.sim.is_some(),
    }))
}
