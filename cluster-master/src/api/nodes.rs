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

use super::node_filter::NodeFilter;
use super::{Active, ApiError, ApiResult, Caller, J, Q};
use crate::registry::NodeEntry;
use crate::role::Node;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/nodes", get(list_nodes))
        .route("/nodes/bulk", post(bulk))
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
    /// When the node's certificate expires (null in records from before renewal).
    cert_expires_ms: Option<u64>,
    cert_expires_at: Option<String>,
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
        cert_expires_ms: Some(node.record.cert_expires_ms).filter(|ms| *ms > 0),
        cert_expires_at: Some(node.record.cert_expires_ms)
            .filter(|ms| *ms > 0)
            .map(crate::monitoring::rfc3339),
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
    /// The filter grammar of `node_filter` (`state:down group:g03 cpu>80 ...`).
    filter: Option<String>,
    /// `id` (default), `hostname`, `group`, `state` or `cpu` (busiest first); with
    /// `offset` instead of `cursor`.
    sort: Option<String>,
    offset: Option<usize>,
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
    let filter =
        NodeFilter::parse(query.filter.as_deref().unwrap_or("")).map_err(ApiError::bad_request)?;
    let sort = match query.sort.as_deref() {
        None | Some("") => None,
        Some(s @ ("id" | "hostname" | "group" | "state" | "cpu")) => Some(s),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "sort: {other:?} is not one of id, hostname, group, state, cpu"
            )))
        }
    };
    if query.cursor.is_some() && (sort.is_some() || query.offset.is_some()) {
        return Err(ApiError::unprocessable(
            "cursor: pages by cursor are in id order; with sort or offset, page by offset",
        ));
    }
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
            && filter.matches(n)
    };
    if sort.is_some() || query.offset.is_some() {
        let mut all: Vec<&NodeEntry> = reg.nodes.values().filter(matches).collect();
        let total = all.len();
        match sort.unwrap_or("id") {
            "hostname" => all.sort_by(|a, b| a.record.hostname.cmp(&b.record.hostname)),
            "group" => all.sort_by(|a, b| a.record.group.cmp(&b.record.group)),
            "state" => all.sort_by_key(|n| n.status.state.as_str()),
            "cpu" => all.sort_by(|a, b| {
                let cpu = |n: &NodeEntry| n.load.as_ref().map_or(-1.0, |l| l.cpu);
                cpu(b).total_cmp(&cpu(a))
            }),
            _ => {}
        }
        let offset = query.offset.unwrap_or(0);
        let items = all
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|n| node_view(n, false, with_inventory))
            .collect();
        let body = serde_json::to_vec(&NodePage {
            items,
            total,
            next: None,
        })
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
        drop(reg);
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
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

/// A bulk action: on the nodes named, or on every node a filter matches.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bulk {
    #[serde(default)]
    nodes: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<String>,
    /// `label` (add `labels`), `unlabel` (remove `keys`) or `remove` (the nodes).
    action: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    keys: Vec<String>,
    /// Only say how many nodes it would touch.
    #[serde(default)]
    dry_run: bool,
}

/// Most nodes one bulk action touches.
const BULK_MAX: usize = 10_000;

/// `POST /api/v1/nodes/bulk`: `{matched, dry_run, results: [{node, ok, error?}]}`.
async fn bulk(
    Active(cluster): Active,
    _caller: Caller,
    J(body): J<Bulk>,
) -> ApiResult<Json<Value>> {
    match body.action.as_str() {
        "label" if body.labels.is_empty() => {
            return Err(ApiError::unprocessable(
                "labels: give at least one name=value",
            ))
        }
        "unlabel" if body.keys.is_empty() => {
            return Err(ApiError::unprocessable(
                "keys: give at least one label name",
            ))
        }
        "label" | "unlabel" | "remove" => {}
        other => {
            return Err(ApiError::bad_request(format!(
                "action: {other:?} is not one of label, unlabel, remove"
            )))
        }
    }
    let targets: Vec<String> = match (&body.nodes, &body.filter) {
        (Some(nodes), None) => nodes.clone(),
        (None, Some(text)) => {
            let filter = NodeFilter::parse(text).map_err(ApiError::bad_request)?;
            let reg = cluster.read();
            reg.nodes
                .values()
                .filter(|n| filter.matches(n))
                .map(|n| n.record.id.clone())
                .collect()
        }
        _ => {
            return Err(ApiError::unprocessable(
                "give either nodes (a list of ids) or filter",
            ))
        }
    };
    if targets.len() > BULK_MAX {
        return Err(ApiError::bad_request(format!(
            "nodes: {} nodes; at most {BULK_MAX} in one bulk action",
            targets.len()
        )));
    }
    if body.dry_run {
        return Ok(Json(
            json!({"matched": targets.len(), "dry_run": true, "results": []}),
        ));
    }
    let mut results = Vec::with_capacity(targets.len());
    for node in &targets {
        let outcome: Result<(), ApiError> = async {
            match body.action.as_str() {
                "remove" => match cluster.remove_node(node).await? {
                    Some(_) => Ok(()),
                    None => Err(ApiError::not_found(format!("node {node} does not exist"))),
                },
                action => {
                    let current = cluster
                        .read()
                        .nodes
                        .get(node)
                        .map(|n| n.record.labels.clone())
                        .ok_or_else(|| {
                            ApiError::not_found(format!("node {node} does not exist"))
                        })?;
                    let mut labels = current;
                    if action == "label" {
                        labels.extend(body.labels.clone());
                    } else {
                        labels.retain(|k, _| !body.keys.contains(k));
                    }
                    cluster.set_labels(node, labels).await?;
                    Ok(())
                }
            }
        }
        .await;
        results.push(match outcome {
            Ok(()) => json!({"node": node, "ok": true}),
            Err(e) => json!({"node": node, "ok": false, "error": e.message()}),
        });
    }
    Ok(Json(
        json!({"matched": targets.len(), "dry_run": false, "results": results}),
    ))
}
