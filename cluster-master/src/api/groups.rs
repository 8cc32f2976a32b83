//! Groups: each with its master, standbys, counts by state and heartbeats.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::Path;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::cluster::{counts_json, Heartbeats};
use super::{Active, ApiError, ApiResult};
use crate::registry::{GroupEntry, Registry};
use crate::role::Node;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(list_groups))
        .routes(routes!(get_group))
}

/// From the nodes' last heartbeats: mean and highest CPU %, mean memory use %.
#[derive(Serialize, ToSchema)]
struct GroupLoad {
    nodes_reporting: usize,
    #[schema(required = true)]
    cpu_avg: Option<f64>,
    #[schema(required = true)]
    cpu_max: Option<f64>,
    #[schema(required = true)]
    mem_avg: Option<f64>,
}

/// Monitoring samples the group master stored, batches it dropped because it fell
/// behind, and the bytes its statistics store holds.
#[derive(Serialize, ToSchema)]
struct Samples {
    ingested: u64,
    dropped: u64,
    store_bytes: u64,
}

/// A group and its group masters.
#[derive(Serialize, ToSchema)]
#[schema(as = Group)]
struct GroupView {
    id: String,
    /// Where the group's active master serves agents (`ip:port`), once one registered.
    #[schema(required = true)]
    master: Option<String>,
    /// Whether the active group master is connected.
    connected: bool,
    /// Addresses of connected standby group masters, in promotion order.
    standbys: Vec<String>,
    /// Since when the active group master is connected; null when none is.
    #[schema(required = true)]
    connected_since_ms: Option<u64>,
    /// Member nodes.
    nodes: usize,
    /// Member count per state (only states that occur).
    nodes_by_state: BTreeMap<String, usize>,
    heartbeats: Heartbeats,
    samples: Samples,
    load: GroupLoad,
    /// When the last group report arrived (0: none yet).
    last_report_ms: u64,
    /// When the group was created.
    created_ms: u64,
}

/// A group with its member node ids.
#[derive(Serialize, ToSchema)]
struct GroupDetail {
    #[serde(flatten)]
    group: GroupView,
    /// Member node ids, sorted.
    members: Vec<String>,
}

#[derive(Serialize, ToSchema)]
struct GroupList {
    items: Vec<GroupView>,
    /// Number of groups.
    total: usize,
}

/// The group's load from its nodes' last heartbeats, and how many nodes reported one.
fn group_load(reg: &Registry, group: &GroupEntry) -> GroupLoad {
    let loads: Vec<&glory_protocol::Load> = group
        .members
        .iter()
        .filter_map(|id| reg.nodes.get(id)?.load.as_ref())
        .collect();
    if loads.is_empty() {
        return GroupLoad {
            nodes_reporting: 0,
            cpu_avg: None,
            cpu_max: None,
            mem_avg: None,
        };
    }
    let n = loads.len() as f64;
    let cpu_avg = loads.iter().map(|l| l.cpu as f64).sum::<f64>() / n;
    let cpu_max = loads.iter().map(|l| l.cpu as f64).fold(0.0, f64::max);
    let mem_avg = loads
        .iter()
        .map(|l| l.mem_used as f64 * 100.0 / l.mem_total.max(1) as f64)
        .sum::<f64>()
        / n;
    GroupLoad {
        nodes_reporting: loads.len(),
        cpu_avg: Some(cpu_avg),
        cpu_max: Some(cpu_max),
        mem_avg: Some(mem_avg),
    }
}

fn group_view(reg: &Registry, group: &GroupEntry) -> GroupView {
    GroupView {
        load: group_load(reg, group),
        id: group.record.id.clone(),
        master: group.record.master_addr.map(|a| a.to_string()),
        connected: group.link.is_some(),
        standbys: group
            .standbys
            .iter()
            .map(|l| l.listen.to_string())
            .collect(),
        connected_since_ms: group.link.as_ref().map(|l| l.since_ms),
        nodes: group.members.len(),
        nodes_by_state: counts_json(&reg.group_counts(group)),
        heartbeats: Heartbeats {
            received: group.heartbeats_received,
            lost: group.heartbeats_lost,
        },
        samples: Samples {
            ingested: group.samples_ingested,
            dropped: group.samples_dropped,
            store_bytes: group.stats_store_bytes,
        },
        last_report_ms: group.last_report_ms,
        created_ms: group.record.created_ms,
    }
}

#[utoipa::path(get, path = "/groups", tag = "groups", operation_id = "listGroups",
    summary = "List groups with their masters and counts.",
    responses((status = 200, description = "Every group.", body = GroupList)))]
async fn list_groups(Active(cluster): Active) -> Json<GroupList> {
    let reg = cluster.read();
    let items: Vec<GroupView> = reg.groups.values().map(|g| group_view(&reg, g)).collect();
    Json(GroupList {
        total: items.len(),
        items,
    })
}

#[utoipa::path(get, path = "/groups/{id}", tag = "groups", operation_id = "getGroup",
    summary = "A group with its member node ids.",
    params(("id" = String, Path, description = "Group id.")),
    responses((status = 200, description = "The group.", body = GroupDetail)))]
async fn get_group(
    Active(cluster): Active,
    Path(id): Path<String>,
) -> ApiResult<Json<GroupDetail>> {
    let reg = cluster.read();
    let group = reg
        .groups
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("group {id} does not exist")))?;
    Ok(Json(GroupDetail {
        group: group_view(&reg, group),
        members: group.members.iter().cloned().collect(),
    }))
}
