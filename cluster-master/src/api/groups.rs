//! Groups: each with its master, standbys, counts by state and heartbeats.

use std::sync::Arc;

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::cluster::counts_json;
use super::{Active, ApiError, ApiResult};
use crate::registry::{GroupEntry, Registry};
use crate::role::Node;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/groups", get(list_groups))
        .route("/groups/{id}", get(get_group))
}

/// The group's load from its nodes' last heartbeats: mean and highest CPU %, mean
/// memory use %, and how many nodes reported one.
fn group_load(reg: &Registry, group: &GroupEntry) -> Value {
    let loads: Vec<&glory_protocol::Load> = group
        .members
        .iter()
        .filter_map(|id| reg.nodes.get(id)?.load.as_ref())
        .collect();
    if loads.is_empty() {
        return json!({"nodes_reporting": 0, "cpu_avg": null, "cpu_max": null, "mem_avg": null});
    }
    let n = loads.len() as f64;
    let cpu_avg = loads.iter().map(|l| l.cpu as f64).sum::<f64>() / n;
    let cpu_max = loads.iter().map(|l| l.cpu as f64).fold(0.0, f64::max);
    let mem_avg = loads
        .iter()
        .map(|l| l.mem_used as f64 * 100.0 / l.mem_total.max(1) as f64)
        .sum::<f64>()
        / n;
    json!({"nodes_reporting": loads.len(), "cpu_avg": cpu_avg, "cpu_max": cpu_max, "mem_avg": mem_avg})
}

fn group_view(reg: &Registry, group: &GroupEntry) -> Value {
    json!({
        "load": group_load(reg, group),
        "id": group.record.id,
        "master": group.record.master_addr,
        "connected": group.link.is_some(),
        "standbys": group.standbys.iter().map(|l| l.listen).collect::<Vec<_>>(),
        "connected_since_ms": group.link.as_ref().map(|l| l.since_ms),
        "nodes": group.members.len(),
        "nodes_by_state": counts_json(&reg.group_counts(group)),
        "heartbeats": {"received": group.heartbeats_received, "lost": group.heartbeats_lost},
        "samples": {"ingested": group.samples_ingested, "dropped": group.samples_dropped,
                    "store_bytes": group.stats_store_bytes},
        "last_report_ms": group.last_report_ms,
        "created_ms": group.record.created_ms,
    })
}

async fn list_groups(Active(cluster): Active) -> Json<Value> {
    let reg = cluster.read();
    let items: Vec<Value> = reg.groups.values().map(|g| group_view(&reg, g)).collect();
    Json(json!({"items": items, "total": items.len()}))
}

async fn get_group(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let reg = cluster.read();
    let group = reg
        .groups
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("group {id} does not exist")))?;
    let mut view = group_view(&reg, group);
    view["members"] = json!(group.members);
    Ok(Json(view))
}
