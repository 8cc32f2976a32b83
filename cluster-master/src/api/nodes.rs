//! Nodes: listing (paged, filtered), one node with its history, labels, removal, and
//! the removed nodes that an operator may admit again.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use glory_protocol::NodeState;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::node_filter::NodeFilter;
use super::openapi::{array_of, named, nullable, string_enum};
use super::{Active, ApiError, ApiResult, Caller, J, Q};
use crate::registry::NodeEntry;
use crate::role::Node;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(list_nodes))
        .routes(routes!(bulk))
        .routes(routes!(get_node, remove_node))
        .routes(routes!(put_labels))
        .routes(routes!(admit_node))
        .routes(routes!(list_removed_nodes))
}

// The wire types a node's view carries (its state, inventory, load and history) are
// the protocol's and the key master's, which carry no schemas of their own (the agent
// does not need them): their schemas are kept with the hand-written part of the
// description (openapi_shared.json) and referenced by name.
fn node_state() -> RefOr<Schema> {
    named("NodeState")
}

fn inventory() -> RefOr<Schema> {
    named("Inventory")
}

fn nullable_load() -> Schema {
    let load = nullable("Load").description(Some("Null until a heartbeat was heard."));
    Schema::OneOf(load.build())
}

fn history() -> Schema {
    let history = array_of("StateEntry").description(Some(
        "Only in `GET /nodes/{id}`: the last transitions, newest last.",
    ));
    Schema::Array(history.build())
}

/// A node as the API shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = Node)]
struct NodeView<'a> {
    id: &'a str,
    hostname: &'a str,
    #[schema(schema_with = node_state)]
    state: NodeState,
    /// Since when the node is in `state`.
    state_since_ms: u64,
    /// Id of the node's group.
    group: &'a str,
    /// When the node enrolled.
    enrolled_ms: u64,
    /// Serial of its current certificate.
    serial: &'a str,
    /// When its certificate expires (it is renewed at about two thirds of its life);
    /// null in records from before renewal.
    cert_expires_ms: Option<u64>,
    /// `cert_expires_ms` in RFC 3339 (UTC).
    #[schema(format = DateTime)]
    cert_expires_at: Option<String>,
    /// Labels (pool selectors match on them).
    labels: &'a BTreeMap<String, String>,
    /// Left out of `view=summary` listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = inventory)]
    inventory: Option<&'a glory_protocol::Inventory>,
    #[schema(schema_with = nullable_load, required = true)]
    load: Option<&'a glory_protocol::Load>,
    /// When `load` was received; null without load.
    #[schema(required = true)]
    load_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = history)]
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

/// Any node state, or nothing.
fn state_values() -> Schema {
    string_enum(NodeState::ALL.iter().map(|s| s.as_str()).chain([""]))
}

fn view_values() -> Schema {
    string_enum(["full", "summary"])
}

fn sort_values() -> Schema {
    string_enum(["id", "hostname", "group", "state", "cpu", ""])
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct NodeQuery {
    /// Only nodes in this state (empty: any).
    #[param(schema_with = state_values)]
    state: Option<String>,
    /// Only nodes of this group (404 if the group does not exist).
    group: Option<String>,
    /// Case-insensitive substring of the node id or hostname.
    q: Option<String>,
    /// Page size (default 500).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
    /// The previous page's `next`: the page starts after this node id.
    cursor: Option<String>,
    /// `full` (default) or `summary`: without each node's inventory (about a tenth of
    /// the bytes).
    #[param(schema_with = view_values)]
    view: Option<String>,
    /// Terms that must all hold: state:S, group:G, label:K=V, label:K, q:TEXT (or bare
    /// TEXT), cpu>N, cpu<=N, mem>N ... (400 naming a bad term).
    filter: Option<String>,
    /// Order (cpu: busiest first); pages then by offset, not cursor.
    #[param(schema_with = sort_values)]
    sort: Option<String>,
    /// Nodes to skip (with sort).
    offset: Option<usize>,
}

/// One page of nodes, serialised straight from the registry.
#[derive(Serialize, ToSchema)]
struct NodePage<'a> {
    /// Nodes in id order (without `history`).
    items: Vec<NodeView<'a>>,
    /// How many nodes match the filters (all pages).
    total: usize,
    /// Cursor of the next page (pass as `cursor`); null on the last page.
    #[schema(required = true)]
    next: Option<&'a str>,
}

#[utoipa::path(get, path = "/nodes", tag = "nodes", operation_id = "listNodes",
    summary = "List nodes, filtered and paged by id.",
    description = "Unknown query parameters are a 400.",
    params(NodeQuery),
    responses((status = 200, description = "One page of nodes.", body = NodePage)))]
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

#[utoipa::path(get, path = "/nodes/{id}", tag = "nodes", operation_id = "getNode",
    summary = "A node with its inventory, last load and state history.",
    params(("id" = String, Path, description = "Node id.")),
    responses((status = 200, description = "The node.", body = NodeView)))]
async fn get_node(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Response> {
    let reg = cluster.read();
    let node = reg
        .nodes
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("node {id} does not exist")))?;
    Ok(Json(node_view(node, true, true)).into_response())
}

/// Label name to value. Names: 1-63 characters of letters, digits, `-`, `_`, `.`,
/// `/`; values: at most 63 printable characters; at most 64 labels.
#[derive(Deserialize)]
#[serde(transparent)]
struct Labels(BTreeMap<String, String>);

impl utoipa::PartialSchema for Labels {
    fn schema() -> RefOr<Schema> {
        labels_schema().into()
    }
}

impl ToSchema for Labels {}

fn labels_schema() -> Schema {
    use utoipa::openapi::schema::AdditionalProperties;
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(63));
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .max_properties(Some(64))
            .additional_properties(Some(AdditionalProperties::RefOr(value.into())))
            .description(Some(
                "Label name to value. Names: 1-63 characters of letters, digits, `-`, \
                 `_`, `.`, `/`; values: at most 63 printable characters; at most 64 labels.",
            ))
            .build(),
    )
}

#[derive(Serialize, ToSchema)]
struct NodeLabels {
    node: String,
    /// The node's labels now.
    labels: BTreeMap<String, String>,
}

#[utoipa::path(put, path = "/nodes/{id}/labels", tag = "nodes", operation_id = "putNodeLabels",
    summary = "Replace a node's labels.",
    params(("id" = String, Path, description = "Node id.")),
    request_body = Labels,
    responses((status = 200, description = "The node's labels now.", body = NodeLabels)))]
async fn put_labels(
    Active(cluster): Active,
    Path(id): Path<String>,
    J(Labels(labels)): J<Labels>,
) -> ApiResult<Json<NodeLabels>> {
    let labels = cluster.set_labels(&id, labels).await?;
    Ok(Json(NodeLabels { node: id, labels }))
}

#[derive(Serialize, ToSchema)]
struct NodeRemoved {
    /// Id of the removed node.
    removed: String,
    /// The group it belonged to.
    group: String,
}

#[utoipa::path(delete, path = "/nodes/{id}", tag = "nodes", operation_id = "removeNode",
    summary = "Remove a node; its certificate is refused from then on.",
    params(("id" = String, Path, description = "Node id.")),
    responses((status = 200, description = "The node was removed (and released from its pool).",
        body = NodeRemoved)))]
async fn remove_node(
    Active(cluster): Active,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeRemoved>> {
    match cluster.remove_node(&id).await? {
        Some(group) => Ok(Json(NodeRemoved { removed: id, group })),
        None => Err(ApiError::not_found(format!("node {id} does not exist"))),
    }
}

/// A node an operator removed: its server is refused at enrollment until admitted.
#[derive(Serialize, ToSchema)]
struct RemovedNode {
    /// Node id it had.
    node: String,
    /// The server identity that is refused (`uuid:…`, `mac:…`, `name:…`,
    /// `machine-id:…`).
    identity: String,
    hostname: String,
    /// When it was removed (Unix milliseconds).
    removed_ms: u64,
}

impl From<&glory_keymaster::schema::RemovedRecord> for RemovedNode {
    fn from(r: &glory_keymaster::schema::RemovedRecord) -> Self {
        RemovedNode {
            node: r.node.clone(),
            identity: r.identity.clone(),
            hostname: r.hostname.clone(),
            removed_ms: r.at_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct RemovedNodeList {
    items: Vec<RemovedNode>,
    total: usize,
}

#[utoipa::path(get, path = "/removed-nodes", tag = "nodes", operation_id = "listRemovedNodes",
    summary = "Nodes removed by an operator and not re-admitted, oldest first: their servers are refused at enrollment.",
    responses((status = 200, description = "The removed nodes.", body = RemovedNodeList)))]
async fn list_removed_nodes(Active(cluster): Active) -> Json<RemovedNodeList> {
    let items: Vec<RemovedNode> = cluster
        .removed_nodes()
        .iter()
        .map(RemovedNode::from)
        .collect();
    Json(RemovedNodeList {
        total: items.len(),
        items,
    })
}

#[utoipa::path(post, path = "/nodes/{id}/admit", tag = "nodes", operation_id = "admitNode",
    summary = "Let a removed node enroll again (by node id or identity). Until then its server is refused at enrollment, even with a valid bootstrap token.",
    params(("id" = String, Path, description = "Node id or identity.")),
    responses((status = 200, description = "The node may enroll again.", body = RemovedNode)))]
async fn admit_node(
    Active(cluster): Active,
    Path(id): Path<String>,
) -> ApiResult<Json<RemovedNode>> {
    match cluster.admit_node(&id).await? {
        Some(record) => Ok(Json(RemovedNode::from(&record))),
        None => Err(ApiError::not_found(format!(
            "no removed node {id} (nodes that were never removed need no admission)"
        ))),
    }
}

/// A bulk action: on the nodes named, or on every node a filter matches (either nodes
/// or filter).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BulkRequest)]
struct Bulk {
    #[serde(default)]
    #[schema(max_items = 10000)]
    nodes: Option<Vec<String>>,
    /// The filter grammar of GET /nodes?filter=.
    #[serde(default)]
    filter: Option<String>,
    /// `label` (add `labels`), `unlabel` (remove `keys`) or `remove` (the nodes).
    #[schema(schema_with = bulk_actions)]
    action: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    keys: Vec<String>,
    /// Only say how many nodes it would touch.
    #[serde(default)]
    dry_run: bool,
}

fn bulk_actions() -> Schema {
    string_enum(["label", "unlabel", "remove"])
}

/// One node's outcome.
#[derive(Serialize, ToSchema)]
struct BulkOutcome {
    node: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct BulkResult {
    matched: usize,
    dry_run: bool,
    results: Vec<BulkOutcome>,
}

/// Most nodes one bulk action touches.
const BULK_MAX: usize = 10_000;

/// `POST /api/v1/nodes/bulk`: `{matched, dry_run, results: [{node, ok, error?}]}`.
#[utoipa::path(post, path = "/nodes/bulk", tag = "nodes", operation_id = "bulkNodes",
    summary = "Label, unlabel or remove every node named or matching a filter (operators only); dry_run says how many.",
    request_body = Bulk,
    responses((status = 200, description = "Per-node results.", body = BulkResult)))]
async fn bulk(
    Active(cluster): Active,
    _caller: Caller,
    J(body): J<Bulk>,
) -> ApiResult<Json<BulkResult>> {
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
        return Ok(Json(BulkResult {
            matched: targets.len(),
            dry_run: true,
            results: vec![],
        }));
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
        results.push(BulkOutcome {
            node: node.clone(),
            ok: outcome.is_ok(),
            error: outcome.err().map(|e| e.message().to_string()),
        });
    }
    Ok(Json(BulkResult {
        matched: targets.len(),
        dry_run: false,
        results,
    }))
}
