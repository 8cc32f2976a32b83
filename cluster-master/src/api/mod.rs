//! The REST API (JSON over HTTP). Every route but `/healthz` needs a bearer token.
//! Errors are `{"error": {"code", "message"}}` with a fitting status.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use glory_keymaster::schema::{BootstrapScope, BootstrapTokenRecord};
use glory_keymaster::KeyMasterError;
use glory_protocol::NodeState;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::registry::{GroupEntry, NodeEntry, Registry};
use crate::role::{LeaderInfo, Node};

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// A standby names the leader.
    leader: Option<LeaderInfo>,
    /// More fields of the error object (e.g. `fit` on a 409 for too few nodes).
    extra: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            leader: None,
            extra: None,
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl From<crate::pools::OpError> for ApiError {
    fn from(e: crate::pools::OpError) -> Self {
        use crate::pools::OpError;
        match e {
            OpError::Invalid(m) => Self::bad_request(m),
            OpError::NotFound(m) => Self::not_found(m),
            OpError::Conflict { message, fit } => {
                let mut err = Self::conflict(message);
                if let Some(fit) = fit {
                    err.code = "not_enough_nodes";
                    err.extra = Some(json!({ "fit": fit }));
                }
                err
            }
            OpError::KeyMaster(e) => e.into(),
        }
    }
}

impl From<KeyMasterError> for ApiError {
    fn from(e: KeyMasterError) -> Self {
        match e {
            KeyMasterError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "keymaster_unavailable",
                e.to_string(),
            ),
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(leader) = self.leader {
            error["leader"] = json!(leader);
        }
        if let Some(Value::Object(extra)) = self.extra {
            for (k, v) in extra {
                error[k] = v;
            }
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

mod events;
mod openapi;
mod pools;
mod tenants;

/// Query strings and bodies parse into these; a bad one is a 400 naming the problem.
pub(crate) struct Q<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

pub(crate) struct J<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for J<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| J(v))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

pub fn router(node: Arc<Node>) -> Router {
    let operator = Router::new()
        .route("/cluster", get(get_cluster))
        .route("/nodes", get(list_nodes))
        .route("/nodes/{id}", get(get_node).delete(remove_node))
        .route("/groups", get(list_groups))
        .route("/groups/{id}", get(get_group))
        .route(
            "/bootstrap-tokens",
            get(list_bootstrap_tokens).post(create_bootstrap_token),
        )
        .route("/bootstrap-tokens/{id}", delete(delete_bootstrap_token))
        .route("/sim/nodes/{id}/kill", post(sim_kill))
        .route("/sim/nodes/{id}/restart", post(sim_restart))
        .route("/nodes/{id}/labels", axum::routing::put(put_labels))
        .route("/nodes/{id}/admit", post(admit_node))
        .route("/removed-nodes", get(list_removed_nodes))
        .route("/events", get(events::cluster_events))
        .route_layer(axum::middleware::from_fn(operator_only));
    let api = operator
        .merge(tenants::routes())
        .merge(pools::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            node.clone(),
            authenticate,
        ))
        .route("/openapi.json", get(openapi::spec))
        .fallback(|| async { ApiError::not_found("no such API route") });
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/api/v1", api)
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(node)
}

/// Who is calling: the role and tenant of a valid bearer token.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub role: ApiRole,
    pub tenant: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApiRole {
    Operator,
    Tenant,
    Component,
}

impl Caller {
    pub fn is_operator(&self) -> bool {
        self.role == ApiRole::Operator
    }
    /// Whether this caller may see objects of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.is_operator() || self.tenant.as_deref() == Some(tenant)
    }
    /// Whether this caller may see (list, revoke) an API token: operators all of them,
    /// others those of their own tenant.
    pub fn sees_token(&self, token: &glory_keymaster::schema::ApiTokenRecord) -> bool {
        self.is_operator() || (token.tenant.is_some() && token.tenant == self.tenant)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no bearer token")
        })
    }
}

async fn operator_only(req: Request, next: Next) -> Response {
    match req.extensions().get::<Caller>() {
        Some(c) if c.is_operator() => next.run(req).await,
        _ => ApiError::forbidden("this route needs an operator token").into_response(),
    }
}

/// Check the bearer token and remember the caller for the handlers.
async fn authenticate(State(node): State<Arc<Node>>, mut req: Request, next: Next) -> Response {
    let Some(cluster) = node.active() else {
        return standby_error(&node).into_response();
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token.and_then(|t| cluster.check_api_token(t)) {
        Some(record) => {
            let role = match record.role.as_str() {
                "operator" => ApiRole::Operator,
                "tenant" => ApiRole::Tenant,
                _ => ApiRole::Component,
            };
            req.extensions_mut().insert(Caller {
                role,
                tenant: record.tenant,
            });
            next.run(req).await
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token (Authorization: Bearer <token>)",
        )
        .into_response(),
    }
}

fn standby_error(node: &Node) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "standby",
        node.standby_message(),
    );
    e.leader = node.leader();
    e
}

/// The cluster, for routes that need this master to lead; a standby answers 503
/// naming the leader.
pub struct Active(pub Arc<Cluster>);

impl axum::extract::FromRequestParts<Arc<Node>> for Active {
    type Rejection = ApiError;
    async fn from_request_parts(
        _: &mut axum::http::request::Parts,
        node: &Arc<Node>,
    ) -> Result<Self, ApiError> {
        node.active()
            .cloned()
            .map(Active)
            .ok_or_else(|| standby_error(node))
    }
}

async fn healthz(State(node): State<Arc<Node>>) -> Json<Value> {
    let active = node.active();
    Json(json!({
        "status": "ok",
        "role": if active.is_some() { "active" } else { "standby" },
        "leader": node.leader(),
        "keymaster_available": active.map(|c| c.keymaster_available()),
    }))
}

fn counts_json<K: std::fmt::Display>(counts: &BTreeMap<K, usize>) -> BTreeMap<String, usize> {
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

fn group_view(reg: &Registry, group: &GroupEntry) -> Value {
    json!({
        "id": group.record.id,
        "master": group.record.master_addr,
        "connected": group.link.is_some(),
        "standbys": group.standbys.iter().map(|l| l.listen).collect::<Vec<_>>(),
        "connected_since_ms": group.link.as_ref().map(|l| l.since_ms),
        "nodes": group.members.len(),
        "nodes_by_state": counts_json(&reg.group_counts(group)),
        "heartbeats": {"received": group.heartbeats_received, "lost": group.heartbeats_lost},
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBootstrapToken {
    /// Lifetime in seconds; default from the configuration; 0 = never expires.
    ttl_seconds: Option<u64>,
    #[serde(default)]
    single_use: bool,
    /// `node` (default), `group_master` or `any`.
    scope: Option<BootstrapScope>,
    #[serde(default)]
    description: String,
}

fn token_view(record: &BootstrapTokenRecord) -> Value {
    json!({
        "id": record.id,
        "created_ms": record.created_ms,
        "expires_ms": record.expires_ms,
        "single_use": record.single_use,
        "used": record.used,
        "scope": record.scope,
        "description": record.description,
    })
}

async fn create_bootstrap_token(
    Active(cluster): Active,
    J(body): J<NewBootstrapToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if body.description.len() > 256 {
        return Err(ApiError::bad_request("description: at most 256 characters"));
    }
    let ttl = match body.ttl_seconds {
        Some(0) => None,
        Some(s) if s > 10 * 365 * 24 * 3600 => {
            return Err(ApiError::bad_request("ttl_seconds: at most ten years"))
        }
        Some(s) => Some(Duration::from_secs(s)),
        None => cluster.settings.bootstrap_token_ttl,
    };
    let (token, record) = cluster
        .create_bootstrap_token(
            ttl,
            body.single_use,
            body.scope.unwrap_or(BootstrapScope::Node),
            &body.description,
        )
        .await?;
    let mut view = token_view(&record);
    view["token"] = json!(token);
    view["ca_cert_hash"] = json!(cluster.ca.cert_hash().ok());
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list_bootstrap_tokens(Active(cluster): Active) -> ApiResult<Json<Value>> {
    let tokens = cluster.list_bootstrap_tokens().await?;
    let items: Vec<Value> = tokens.iter().map(token_view).collect();
    Ok(Json(json!({"items": items, "total": items.len()})))
}

async fn delete_bootstrap_token(
    Active(cluster): Active,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if cluster.delete_bootstrap_token(&id).await? {
        Ok(Json(json!({"deleted": id})))
    } else {
        Err(ApiError::not_found(format!(
            "bootstrap token {id} does not exist"
        )))
    }
}

async fn sim_action(cluster: &Cluster, id: &str, kill: bool) -> ApiResult<Json<Value>> {
    let sim = cluster.sim.as_ref().ok_or_else(|| {
        ApiError::not_found("simulation routes exist only in glory up / glory sim")
    })?;
    if !cluster.read().nodes.contains_key(id) {
        return Err(ApiError::not_found(format!("node {id} does not exist")));
    }
    let result = if kill {
        sim.kill(id).await
    } else {
        sim.restart(id).await
    };
    result.map_err(|e| ApiError::new(StatusCode::CONFLICT, "conflict", e))?;
    Ok(Json(
        json!({"node": id, "action": if kill { "killed" } else { "restarted" }}),
    ))
}

async fn sim_kill(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    sim_action(&cluster, &id, true).await
}

async fn sim_restart(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    sim_action(&cluster, &id, false).await
}
