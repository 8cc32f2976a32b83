//! Pools and their component masters. A tenant or component token sees only its own
//! tenant's pools; another tenant's pool is answered like a pool that does not exist.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use glory_keymaster::schema::{Elastic, MasterSpec, PoolRecord, PoolSelector, Spread};
use serde::Deserialize;
use serde_json::Value;
use utoipa::openapi::Ref;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Active, ApiError, ApiResult, ApiRole, Caller, J, Q};
use crate::cluster::Cluster;
use crate::role::Node;

mod views;

pub(super) use views::master_view;
use views::{
    pool_view, CandidateList, MasterView, PoolDeleted, PoolDetail, PoolList, PoolNodeRemoved,
    PoolNodesAdded, PoolView,
};

/// Default wait before a down pool node is replaced (`replace_failed`).
const DEFAULT_REPLACE_DELAY_S: f64 = 30.0;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(list_pools, create_pool))
        .routes(routes!(get_pool, delete_pool))
        .routes(routes!(add_nodes))
        .routes(routes!(remove_node))
        .routes(routes!(list_candidates, add_candidates))
        .routes(routes!(remove_candidate))
        .routes(routes!(get_master))
        .routes(routes!(failover))
        .routes(routes!(super::events::pool_events))
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

/// Give `size`, `selector` (every free node that fits), or both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PoolRequest)]
struct NewPool {
    /// 1-63 lowercase letters, digits or `-`.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    name: String,
    /// `fs`, `db`, `dp` or `custom:<name>`.
    #[schema(pattern = "^(fs|db|dp|custom:[a-z0-9][a-z0-9-]{0,62})$")]
    component: String,
    /// Owning tenant (must exist): required for operators; a tenant token may omit it
    /// or name its own tenant.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    tenant: Option<String>,
    #[schema(schema_with = pool_size_schema)]
    size: Option<PoolSize>,
    selector: Option<PoolSelector>,
    #[serde(default)]
    spread: Spread,
    #[serde(default)]
    replace_failed: bool,
    /// How long a node must stay down before it is replaced; default 30.
    #[schema(minimum = 0, maximum = 86400)]
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

/// [`PoolSize`], with the bounds `create_pool` holds a fixed size to.
fn pool_size_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let size = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(100_000)),
        )
        .item(Ref::from_schema_name("Elastic"))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "A fixed number of nodes, or {min, max} for an elastic pool: min allocated \
             now, growth (POST /pools/{name}/nodes) up to max, release not below min. \
             Absent: every free node that fits the selector.",
        ))
        .build();
    Schema::OneOf(size)
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

#[utoipa::path(post, path = "/pools", tag = "pools", operation_id = "createPool",
    summary = "Create a pool of free nodes (operators and tenant tokens).",
    description = "409 `conflict` when the pool exists, 409 `not_enough_nodes` (with `fit`) when too few free nodes fit; component tokens get 403.",
    request_body(content = NewPool, example = json!({"name": "analytics-db", "component": "db",
        "tenant": "analytics", "size": 3, "spread": "groups", "replace_failed": true})),
    responses((status = 201, description = "The pool.", body = PoolView, links(
        ("GetPool" = (operation_id = "getPool", parameters(("name" = "$response.body#/name")))),
        ("DeletePool" = (operation_id = "deletePool", parameters(("name" = "$response.body#/name")))),
        ("AddPoolNodes" = (operation_id = "addPoolNodes", parameters(("name" = "$response.body#/name")))),
        ("ListPoolCandidates" = (operation_id = "listPoolCandidates", parameters(("name" = "$response.body#/name")))),
        ("AddPoolCandidates" = (operation_id = "addPoolCandidates", parameters(("name" = "$response.body#/name")))),
        ("GetPoolMaster" = (operation_id = "getPoolMaster", parameters(("name" = "$response.body#/name")))),
        ("FailoverPoolMaster" = (operation_id = "failoverPoolMaster", parameters(("name" = "$response.body#/name")))),
        ("StreamPoolEvents" = (operation_id = "streamPoolEvents", parameters(("name" = "$response.body#/name")))),
        ("CreateServiceInPool" = (operation_id = "createService",
            request_body = json!({"pool": "$response.body#/name"}))),
        ("RegisterFrameworkOnPool" = (operation_id = "registerFramework",
            request_body = json!({"pool": "$response.body#/name", "tenant": "$response.body#/tenant"}))),
    ))))]
async fn create_pool(
    Active(cluster): Active,
    caller: Caller,
    J(body): J<NewPool>,
) -> ApiResult<(StatusCode, Json<PoolView>)> {
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
    Ok((StatusCode::CREATED, Json(pool_view(&cluster, &pool))))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PoolQuery {
    /// Only pools of this tenant.
    tenant: Option<String>,
    /// Only pools of this component.
    component: Option<String>,
}

#[utoipa::path(get, path = "/pools", tag = "pools", operation_id = "listPools",
    summary = "List the pools the caller may see.",
    description = "Unknown query parameters are a 400.",
    params(PoolQuery),
    responses((status = 200, description = "The visible pools.", body = PoolList)))]
async fn list_pools(
    Active(cluster): Active,
    caller: Caller,
    Q(query): Q<PoolQuery>,
) -> Json<PoolList> {
    let pools: Vec<PoolRecord> = cluster
        .pools
        .book()
        .pools()
        .filter(|p| caller.sees(&p.tenant))
        .filter(|p| query.tenant.as_ref().is_none_or(|t| &p.tenant == t))
        .filter(|p| query.component.as_ref().is_none_or(|c| &p.component == c))
        .cloned()
        .collect();
    let items: Vec<PoolView> = pools.iter().map(|p| pool_view(&cluster, p)).collect();
    Json(PoolList {
        total: items.len(),
        items,
    })
}

#[utoipa::path(get, path = "/pools/{name}", tag = "pools", operation_id = "getPool",
    summary = "A pool with its nodes, candidates, master and recent events.",
    params(("name" = String, Path, description = "Pool name.")),
    responses((status = 200, description = "The pool.", body = PoolDetail)))]
async fn get_pool(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<PoolDetail>> {
    let pool = visible_pool(&cluster, &caller, &name)?;
    let events = cluster
        .events
        .recent(50, |e| e.pool.as_deref() == Some(&pool.name))
        .iter()
        .map(|e| serde_json::to_value(&**e).unwrap_or(Value::Null))
        .collect();
    Ok(Json(PoolDetail {
        pool: pool_view(&cluster, &pool),
        events,
    }))
}

#[utoipa::path(delete, path = "/pools/{name}", tag = "pools", operation_id = "deletePool",
    summary = "Delete a pool; its nodes return to the free set.",
    description = "Component tokens get 403.",
    params(("name" = String, Path, description = "Pool name.")),
    responses((status = 200, description = "Deleted.", body = PoolDeleted)))]
async fn delete_pool(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<PoolDeleted>> {
    visible_pool(&cluster, &caller, &name)?;
    if caller.role == ApiRole::Component {
        return Err(ApiError::forbidden("component tokens cannot delete pools"));
    }
    let old = cluster.delete_pool(&name).await?;
    Ok(Json(PoolDeleted {
        deleted: name,
        released: old.nodes.len(),
    }))
}

/// Exactly one of `count` (nodes chosen by the pool's selector and spread) or
/// `nodes` (named nodes: each must exist, be free, up and fit the selector).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AddNodesRequest)]
struct AddNodes {
    #[schema(minimum = 1, maximum = 100000)]
    count: Option<usize>,
    #[schema(min_items = 1, max_items = 100000)]
    nodes: Option<Vec<String>>,
}

#[utoipa::path(post, path = "/pools/{name}/nodes", tag = "pools", operation_id = "addPoolNodes",
    summary = "Grow a pool by a count of nodes or by named nodes.",
    description = "404 for an unknown node, 409 when a node is taken, not up or does not fit, 409 `not_enough_nodes` (with `fit`) when too few free nodes fit.",
    params(("name" = String, Path, description = "Pool name.")),
    request_body = AddNodes,
    responses((status = 200, description = "The pool, with the ids of the nodes added.", body = PoolNodesAdded)))]
async fn add_nodes(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
    J(body): J<AddNodes>,
) -> ApiResult<Json<PoolNodesAdded>> {
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
    Ok(Json(PoolNodesAdded {
        pool: pool_view(&cluster, &pool),
        added,
    }))
}

#[utoipa::path(delete, path = "/pools/{name}/nodes/{node}", tag = "pools", operation_id = "removePoolNode",
    summary = "Release a node from a pool back to the free set.",
    description = "404 when the node is not in the pool.",
    params(("name" = String, Path, description = "Pool name."), ("node" = String, Path, description = "Node id.")),
    responses((status = 200, description = "The pool, with the id of the released node.", body = PoolNodeRemoved)))]
async fn remove_node(
    Active(cluster): Active,
    caller: Caller,
    Path((name, node)): Path<(String, String)>,
) -> ApiResult<Json<PoolNodeRemoved>> {
    visible_pool(&cluster, &caller, &name)?;
    let pool = cluster.release_pool_node(&name, &node).await?;
    Ok(Json(PoolNodeRemoved {
        pool: pool_view(&cluster, &pool),
        removed: node,
    }))
}

#[utoipa::path(get, path = "/pools/{name}/candidates", tag = "pools", operation_id = "listPoolCandidates",
    summary = "The pool's master candidates in election order.",
    params(("name" = String, Path, description = "Pool name.")),
    responses((status = 200, description = "The candidates.", body = CandidateList)))]
async fn list_candidates(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<CandidateList>> {
    let pool = visible_pool(&cluster, &caller, &name)?;
    Ok(Json(CandidateList::of(&cluster, &pool)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CandidatesRequest)]
struct NewCandidates {
    /// Pool member node ids in election order (at least one unless `replace`).
    #[schema(max_items = 64)]
    nodes: Vec<String>,
    /// Replace the current list instead of appending to it.
    #[serde(default)]
    replace: bool,
}

#[utoipa::path(post, path = "/pools/{name}/candidates", tag = "pools", operation_id = "addPoolCandidates",
    summary = "Register master candidates (appended, or replacing the list).",
    description = "Each node must be a member of the pool (else 400).",
    params(("name" = String, Path, description = "Pool name.")),
    request_body = NewCandidates,
    responses((status = 200, description = "The candidates now.", body = CandidateList)))]
async fn add_candidates(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
    J(body): J<NewCandidates>,
) -> ApiResult<Json<CandidateList>> {
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
    Ok(Json(CandidateList::of(&cluster, &pool)))
}

#[utoipa::path(delete, path = "/pools/{name}/candidates/{node}", tag = "pools", operation_id = "removePoolCandidate",
    summary = "Remove a master candidate.",
    description = "404 when the node is not a candidate.",
    params(("name" = String, Path, description = "Pool name."), ("node" = String, Path, description = "Node id.")),
    responses((status = 200, description = "The candidates now.", body = CandidateList)))]
async fn remove_candidate(
    Active(cluster): Active,
    caller: Caller,
    Path((name, node)): Path<(String, String)>,
) -> ApiResult<Json<CandidateList>> {
    visible_pool(&cluster, &caller, &name)?;
    let pool = cluster.remove_candidate(&name, &node).await?;
    Ok(Json(CandidateList::of(&cluster, &pool)))
}

#[utoipa::path(get, path = "/pools/{name}/master", tag = "pools", operation_id = "getPoolMaster",
    summary = "The pool's elected master.",
    description = "404 `no_master` when the pool has no master now.",
    params(("name" = String, Path, description = "Pool name.")),
    responses((status = 200, description = "The master.", body = MasterView)))]
async fn get_master(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<MasterView>> {
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

#[utoipa::path(post, path = "/pools/{name}/master/failover", tag = "pools", operation_id = "failoverPoolMaster",
    summary = "Move the master to the next live candidate.",
    description = "409 when no other candidate is live.",
    params(("name" = String, Path, description = "Pool name.")),
    responses((status = 200, description = "The new master (with a higher epoch).", body = MasterView)))]
async fn failover(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<MasterView>> {
    visible_pool(&cluster, &caller, &name)?;
    let m = cluster.failover_master(&name).await?;
    Ok(Json(master_view(&cluster, &name, &m)))
}
