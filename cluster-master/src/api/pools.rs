//! Pools and their component masters. A tenant or component token sees only its own
//! tenant's pools; another tenant's pool is answered like a pool that does not exist.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use glory_keymaster::schema::{Elastic, MasterSpec, PoolMaster, PoolRecord, PoolSelector, Spread};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Active, ApiError, ApiResult, ApiRole, Caller, J, Q};
use crate::cluster::Cluster;
use crate::role::Node;

/// Default wait before a down pool node is replaced (`replace_failed`).
const DEFAULT_REPLACE_DELAY_S: f64 = 30.0;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/pools", get(list_pools).post(create_pool))
        .route("/pools/{name}", get(get_pool).delete(delete_pool))
        .route("/pools/{name}/nodes", post(add_nodes))
        .route("/pools/{name}/nodes/{node}", delete(remove_node))
        .route(
            "/pools/{name}/candidates",
            get(list_candidates).post(add_candidates),
        )
        .route("/pools/{name}/candidates/{node}", delete(remove_candidate))
        .route("/pools/{name}/master", get(get_master))
        .route("/pools/{name}/master/failover", post(failover))
        .route("/pools/{name}/events", get(super::events::pool_events))
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("pool {name} does not exist"))
}

/// The pool, if the caller may see it (otherwise it does not exist for them).
pub(super) fn visible_pool(
    cluster: &Cluster,
    caller: &Caller,
    name: &str,
) -> ApiResult<PoolRecord> {
    cluster
        .pools
        .book()
        .get(name)
        .filter(|p| caller.sees(&p.tenant))
        .cloned()
        .ok_or_else(|| not_found(name))
}

pub(super) fn master_view(cluster: &Cluster, pool: &str, m: &PoolMaster) -> Value {
    let process = cluster.master_process(pool, m);
    let mut view = json!({
        "node": m.node,
        "address": m.address,
        "epoch": m.epoch,
        "since": m.since_ms,
        "process": process.state,
        "restarts": process.restarts,
        "failures": process.failures,
    });
    if let Some(exit) = process.last_exit {
        view["last_exit"] = json!({
            "code": exit.code,
            "signal": exit.signal,
            "ran_ms": exit.ran_ms,
            "detail": exit.detail,
        });
    }
    if !process.output.is_empty() {
        view["output"] = json!(process.output);
    }
    view
}

fn pool_view(cluster: &Cluster, p: &PoolRecord, details: bool) -> Value {
    let (nodes, candidates) = {
        let reg = cluster.read();
        let state = |id: &str| {
            reg.nodes
                .get(id)
                .map(|n| n.status.state.as_str())
                .unwrap_or("removed")
        };
        let nodes: Vec<Value> = p
            .nodes
            .iter()
            .map(|id| {
                let group = reg
                    .nodes
                    .get(id)
                    .map(|n| n.record.group.as_str())
                    .unwrap_or("");
                json!({"id": id, "group": group, "state": state(id)})
            })
            .collect();
        let candidates: Vec<Value> = p
            .candidates
            .iter()
            .enumerate()
            .map(|(i, id)| {
                json!({
                    "node": id,
                    "order": i + 1,
                    "state": state(id),
                    "master": p.master.as_ref().is_some_and(|m| &m.node == id),
                })
            })
            .collect();
        (nodes, candidates)
    };
    let mut by_group: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &nodes {
        *by_group
            .entry(n["group"].as_str().unwrap_or(""))
            .or_default() += 1;
    }
    let by_group: BTreeMap<String, usize> = by_group
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut view = json!({
        "name": p.name,
        "tenant": p.tenant,
        "component": p.component,
        "size": p.nodes.len(),
        "elastic": p.elastic,
        "selector": p.selector,
        "spread": p.spread,
        "replace_failed": p.replace_failed,
        "replace_delay_seconds": p.replace_delay_ms as f64 / 1000.0,
        "master_spec": p.master_spec,
        "nodes": nodes,
        "nodes_by_group": by_group,
        "candidates": candidates,
        "master": p.master.as_ref().map(|m| master_view(cluster, &p.name, m)),
        "epoch": p.epoch,
        "created_ms": p.created_ms,
        // Nodes of this pool being reclaimed, and nodes on their way to it.
        "reclaims": p.reclaims,
        "incoming": incoming(cluster, &p.name),
    });
    if details {
        let events: Vec<Value> = cluster
            .events
            .recent(50, |e| e.pool.as_deref() == Some(&p.name))
            .iter()
            .map(|e| serde_json::to_value(&**e).unwrap_or(Value::Null))
            .collect();
        view["events"] = json!(events);
    }
    view
}

/// Reclaims that bring nodes to `pool`.
fn incoming(cluster: &Cluster, pool: &str) -> Vec<Value> {
    let book = cluster.pools.book();
    crate::pools::reclaim::incoming_from(&book, pool)
        .map(|(from, r)| json!({"node": r.node, "from_pool": from, "deadline_ms": r.deadline_ms}))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPool {
    name: String,
    component: String,
    /// Default: the caller's tenant (required for operators).
    tenant: Option<String>,
    size: Option<PoolSize>,
    selector: Option<PoolSelector>,
    #[serde(default)]
    spread: Spread,
    #[serde(default)]
    replace_failed: bool,
    replace_delay_seconds: Option<f64>,
    master: Option<MasterSpec>,
}

/// A fixed size, or the bounds of an elastic pool.
#[derive(Deserialize)]
#[serde(untagged)]
enum PoolSize {
    Fixed(usize),
    Elastic(Elastic),
}

fn check_master_spec(spec: &MasterSpec) -> ApiResult<()> {
    if spec.command.len() > 64 || spec.command.iter().any(|a| a.len() > 4096) {
        return Err(ApiError::bad_request(
            "master.command: at most 64 arguments of at most 4096 bytes",
        ));
    }
    if spec.command.first().is_some_and(|p| p.is_empty()) {
        return Err(ApiError::unprocessable(
            "master.command: the program is empty",
        ));
    }
    for (k, v) in &spec.env {
        let ok = !k.is_empty()
            && k.len() <= 128
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok || v.len() > 4096 || v.contains('\0') {
            return Err(ApiError::unprocessable(format!(
                "master.env: {k:?} must be a variable name ([A-Za-z_][A-Za-z0-9_]*) with a value of at most 4096 bytes"
            )));
        }
    }
    if spec.port == Some(0) {
        return Err(ApiError::bad_request("master.port: must be 1-65535"));
    }
    crate::pools::launch::check_placeholders(spec).map_err(ApiError::bad_request)
}

async fn create_pool(
    Active(cluster): Active,
    caller: Caller,
    J(body): J<NewPool>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant = match caller.role {
        ApiRole::Component => {
            return Err(ApiError::forbidden("component tokens cannot create pools"))
        }
        ApiRole::Tenant => match body.tenant {
            Some(t) if !caller.sees(&t) => {
                return Err(ApiError::forbidden(
                    "a tenant token creates pools of its own tenant only",
                ))
            }
            _ => caller.tenant.clone().unwrap_or_default(),
        },
        ApiRole::Operator => body
            .tenant
            .ok_or_else(|| ApiError::unprocessable("tenant: required for operators"))?,
    };
    if body.size.is_none() && body.selector.is_none() {
        return Err(ApiError::unprocessable(
            "size: give a size, a selector (every free node that fits), or both",
        ));
    }
    let (count, elastic) = match body.size {
        Some(PoolSize::Fixed(size)) => {
            if size == 0 || size > 100_000 {
                return Err(ApiError::bad_request("size: must be between 1 and 100000"));
            }
            (Some(size), None)
        }
        Some(PoolSize::Elastic(e)) => {
            if e.max == 0 || e.max > 100_000 {
                return Err(ApiError::bad_request(
                    "size.max: must be between 1 and 100000",
                ));
            }
            if e.min > e.max {
                return Err(ApiError::unprocessable(format!(
                    "size.min: {} is above max {}",
                    e.min, e.max
                )));
            }
            (Some(e.min), Some(e))
        }
        None => (None, None),
    };
    let delay = body
        .replace_delay_seconds
        .unwrap_or(DEFAULT_REPLACE_DELAY_S);
    if !(0.0..=86_400.0).contains(&delay) {
        return Err(ApiError::bad_request(
            "replace_delay_seconds: must be between 0 and 86400",
        ));
    }
    let master_spec = body.master.unwrap_or_default();
    check_master_spec(&master_spec)?;
    let record = PoolRecord {
        v: glory_keymaster::schema::RECORD_VERSION,
        name: body.name,
        tenant,
        component: body.component,
        selector: body.selector.unwrap_or_default(),
        spread: body.spread,
        replace_failed: body.replace_failed,
        replace_delay_ms: (delay * 1000.0) as u64,
        master_spec,
        nodes: vec![],
        candidates: vec![],
        master: None,
        epoch: 0,
        created_ms: glory_protocol::now_ms(),
        elastic,
        reclaims: vec![],
    };
    let pool = cluster.create_pool(record, count).await?;
    Ok((StatusCode::CREATED, Json(pool_view(&cluster, &pool, false))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolQuery {
    tenant: Option<String>,
    component: Option<String>,
}

async fn list_pools(
    Active(cluster): Active,
    caller: Caller,
    Q(query): Q<PoolQuery>,
) -> Json<Value> {
    let pools: Vec<PoolRecord> = cluster
        .pools
        .book()
        .pools()
        .filter(|p| caller.sees(&p.tenant))
        .filter(|p| query.tenant.as_ref().is_none_or(|t| &p.tenant == t))
        .filter(|p| query.component.as_ref().is_none_or(|c| &p.component == c))
        .cloned()
        .collect();
    let items: Vec<Value> = pools
        .iter()
        .map(|p| pool_view(&cluster, p, false))
        .collect();
    Json(json!({"total": items.len(), "items": items}))
}

async fn get_pool(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let pool = visible_pool(&cluster, &caller, &name)?;
    Ok(Json(pool_view(&cluster, &pool, true)))
}

async fn delete_pool(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    visible_pool(&cluster, &caller, &name)?;
    if caller.role == ApiRole::Component {
        return Err(ApiError::forbidden("component tokens cannot delete pools"));
    }
    let old = cluster.delete_pool(&name).await?;
    Ok(Json(json!({"deleted": name, "released": old.nodes.len()})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNodes {
    count: Option<usize>,
    nodes: Option<Vec<String>>,
}

async fn add_nodes(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
    J(body): J<AddNodes>,
) -> ApiResult<Json<Value>> {
    visible_pool(&cluster, &caller, &name)?;
    let (pool, added) = match (body.count, body.nodes) {
        (Some(count), None) => {
            if count == 0 || count > 100_000 {
                return Err(ApiError::bad_request("count: must be between 1 and 100000"));
            }
            cluster.grow_pool(&name, count).await?
        }
        (None, Some(nodes)) => {
            if nodes.is_empty() || nodes.len() > 100_000 {
                return Err(ApiError::bad_request("nodes: give 1 to 100000 node ids"));
            }
            cluster.add_pool_nodes(&name, &nodes).await?
        }
        _ => {
            return Err(ApiError::unprocessable(
                "count: give either count or nodes (a list of node ids)",
            ))
        }
    };
    let mut view = pool_view(&cluster, &pool, false);
    view["added"] = json!(added);
    Ok(Json(view))
}

async fn remove_node(
    Active(cluster): Active,
    caller: Caller,
    Path((name, node)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    visible_pool(&cluster, &caller, &name)?;
    let pool = cluster.release_pool_node(&name, &node).await?;
    let mut view = pool_view(&cluster, &pool, false);
    view["removed"] = json!(node);
    Ok(Json(view))
}

async fn list_candidates(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let pool = visible_pool(&cluster, &caller, &name)?;
    let view = pool_view(&cluster, &pool, false);
    Ok(Json(
        json!({"items": view["candidates"], "total": pool.candidates.len()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCandidates {
    /// Node ids in election order.
    nodes: Vec<String>,
    /// Replace the current list instead of appending to it.
    #[serde(default)]
    replace: bool,
}

async fn add_candidates(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
    J(body): J<NewCandidates>,
) -> ApiResult<Json<Value>> {
    visible_pool(&cluster, &caller, &name)?;
    if body.nodes.is_empty() && !body.replace {
        return Err(ApiError::unprocessable("nodes: give at least one node id"));
    }
    if body.nodes.len() > 64 {
        return Err(ApiError::bad_request("nodes: at most 64 candidates"));
    }
    let pool = cluster
        .set_candidates(&name, &body.nodes, body.replace)
        .await?;
    let view = pool_view(&cluster, &pool, false);
    Ok(Json(
        json!({"items": view["candidates"], "total": pool.candidates.len()}),
    ))
}

async fn remove_candidate(
    Active(cluster): Active,
    caller: Caller,
    Path((name, node)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    visible_pool(&cluster, &caller, &name)?;
    let pool = cluster.remove_candidate(&name, &node).await?;
    let view = pool_view(&cluster, &pool, false);
    Ok(Json(
        json!({"items": view["candidates"], "total": pool.candidates.len()}),
    ))
}

async fn get_master(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let pool = visible_pool(&cluster, &caller, &name)?;
    match &pool.master {
        Some(m) => Ok(Json(master_view(&cluster, &name, m))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_master",
            if pool.candidates.is_empty() {
                format!("pool {name} has no master: register candidates first")
            } else {
                format!(
                    "pool {name} has no master now: none of its {} candidates was up and in the pool at the last election; one is elected as soon as one is",
                    pool.candidates.len()
                )
            },
        )),
    }
}

async fn failover(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    visible_pool(&cluster, &caller, &name)?;
    let m = cluster.failover_master(&name).await?;
    Ok(Json(master_view(&cluster, &name, &m)))
}
