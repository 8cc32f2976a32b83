//! Nodes: listing (paged, filtered), one node with its history, labels, removal, and
//! the removed nodes that an operator may admit again.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use glory_protocol::NodeState;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Active, ApiError, ApiResult, J, Q};
use crate::registry::NodeEntry;
use crate::role::Node;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/nodes", get(list_nodes))
        .route("/nodes/{id}", get(get_node).delete(remove_node))
        .route("/nodes/{id}/labels", put(put_labels))
        .route("/nodes/{id}/admit", post(admit_node))
        .route("/removed-nodes", get(list_removed_nodes))
}

/// A node as the API shows it.
#[derive(Serialize)]
struct NodeView<'a> {
    id: &'a str,
    hostname: &'a str,
    state: NodeState,
    state_since_ms: u64,
    group: &'a str,
    enrolled_ms: u64,
    serial: &'a str,
    labels: &'a BTreeMap<String, String>,
    /// Left out of `view=summary` listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    inventory: Option<&'a glory_protocol::Inventory>,
    load: Option<&'a glory_protocol::Load>,
    load_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<&'a [glory_keymaster::schema::StateEntry]>,
}

fn node_view(node: &NodeEntry, with_history: bool, with_inventory: bool) -> NodeView<'_> {
    NodeView {
        id: &node.record.id,
        hostname: &node.record.hostname,
        state: node.status.state,
        state_since_ms: node.status.since_ms,
        group: &node.record.group,
        enrolled_ms: node.record.enrolled_ms,
        serial: &node.record.serial,
        labels: &node.record.labels,
        inventory: with_inventory.then_some(&node.record.inventory),
        load: node.load.as_ref(),
        load_ms: node.load.is_some().then_some(node.load_ms),
        history: with_history.then_some(node.status.history.as_slice()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeQuery {
    state: Option<String>,
    group: Option<String>,
    q: Option<String>,
    /// Page size (default 500, at most 10,000).
    limit: Option<usize>,
    /// Opaque cursor from the previous page's `next`.
    cursor: Option<String>,
    /// `full` (default) or `summary` (without inventories: a tenth of the bytes).
    view: Option<String>,
}

/// One page of nodes, serialised straight from the registry.
#[derive(Serialize)]
struct NodePage<'a> {
    items: Vec<NodeView<'a>>,
    total: usize,
    next: Option<&'a str>,
}

async fn list_nodes(Active(cluster): Active, Q(query): Q<NodeQuery>) -> ApiResult<Response> {
    let with_inventory = match query.view.as_deref() {
        None | Some("") | Some("full") => true,
        Some("summary") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "view: {other:?} is not one of full, summary"
            )))
        }
    };
    let state = match query.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(NodeState::parse(s).ok_or_else(|| {
            let known: Vec<_> = NodeState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(format!(
                "state: unknown state {s:?} (one of {})",
                known.join(", ")
            ))
        })?),
    };
    let limit = query.limit.unwrap_or(500);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::bad_request("limit: must be between 1 and 10000"));
    }
    let needle = query.q.as_deref().unwrap_or("").to_lowercase();
    let reg = cluster.read();
    if let Some(group) = &query.group {
        if !reg.groups.contains_key(group) {
            return Err(ApiError::not_found(format!("group {group} does not exist")));
        }
    }
    let matches = |n: &&NodeEntry| {
        state.is_none_or(|s| n.status.state == s)
            && query.group.as_deref().is_none_or(|g| n.record.group == g)
            && (needle.is_empty()
                || n.record.id.to_lowercase().contains(&needle)
                || n.record.hostname.to_lowercase().contains(&needle))
    };
    let total = reg.nodes.values().filter(matches).count();
    let start = query.cursor.as_deref().unwrap_or("");
    let mut items = Vec::with_capacity(limit.min(total));
    let mut next = None;
    let range = reg.nodes.range::<str, _>((
        if start.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(start)
        },
        std::ops::Bound::Unbounded,
    ));
    for (_, node) in range.filter(|(_, n)| matches(n)) {
        if items.len() == limit {
            next = items.last().map(|v: &NodeView| v.id);
            break;
        }
        items.push(node_view(node, false, with_inventory));
    }
    // Serialised under the read lock straight into bytes: building a JSON value tree
    // of 10,000 nodes first cost as much again.
    let body = serde_json::to_vec(&NodePage { items, total, next })
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    drop(reg);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn get_node(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let reg = cluster.read();
    let node = reg
        .nodes
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("node {id} does not exist")))?;
    Ok(Json(
        serde_json::to_value(node_view(node, true, true)).unwrap_or(Value::Null),
    ))
}

async fn put_labels(
    Active(cluster): Active,
    Path(id): Path<String>,
    J(labels): J<BTreeMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let labels = cluster.set_labels(&id, labels).await?;
    Ok(Json(json!({"node": id, "labels": labels})))
}

async fn remove_node(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    match cluster.remove_node(&id).await? {
        Some(group) => Ok(Json(json!({"removed": id, "group": group}))),
        None => Err(ApiError::not_found(format!("node {id} does not exist"))),
    }
}

fn removed_view(r: &glory_keymaster::schema::RemovedRecord) -> Value {
    json!({"node": r.node, "identity": r.identity, "hostname": r.hostname, "removed_ms": r.at_ms})
}

async fn list_removed_nodes(Active(cluster): Active) -> Json<Value> {
    let items: Vec<Value> = cluster.removed_nodes().iter().map(removed_view).collect();
    Json(json!({"total": items.len(), "items": items}))
}

async fn admit_node(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    match cluster.admit_node(&id).await? {
        Some(record) => Ok(Json(removed_view(&record))),
        None => Err(ApiError::not_found(format!(
            "no removed node {id} (nodes that were never removed need no admission)"
        ))),
    }
}
