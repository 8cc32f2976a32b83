//! Tenants and API tokens. Operators manage everything; a tenant token sees its own
//! tenant and may mint tenant and component tokens for it; component tokens manage
//! neither.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use glory_keymaster::schema::{ApiTokenRecord, Quota, TenantRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Active, ApiError, ApiResult, ApiRole, Caller, J};
use crate::role::Node;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/tenants", get(list_tenants).post(create_tenant))
        .route("/tenants/{name}", get(get_tenant).delete(delete_tenant))
        .route("/tenants/{name}/quota", get(get_quota).put(put_quota))
        .route("/sharing", get(sharing))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", delete(revoke_token))
}

fn tenant_view(t: &TenantRecord) -> Value {
    json!({"name": t.name, "description": t.description, "created_ms": t.created_ms})
}

/// A tenant's quota and what it holds.
fn quota_view(cluster: &crate::cluster::Cluster, t: &TenantRecord) -> Value {
    let usage = cluster.tenant_usage(&t.name);
    let q = t.quota.clone().unwrap_or_default();
    json!({
        "tenant": t.name,
        "guaranteed_nodes": q.guaranteed_nodes,
        "max_nodes": q.max_nodes,
        "max_cpus": q.max_cpus,
        "max_memory_gib": q.max_memory_gib,
        "used": {"nodes": usage.nodes, "cpus": usage.cpus, "memory_gib": usage.memory_gib},
    })
}

async fn get_quota(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    if !caller.is_operator() {
        return Err(ApiError::forbidden("only operators see and set quotas"));
    }
    let t = cluster
        .pools
        .tenants()
        .get(&name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("tenant {name} does not exist")))?;
    Ok(Json(quota_view(&cluster, &t)))
}

async fn put_quota(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
    J(quota): J<Quota>,
) -> ApiResult<Json<Value>> {
    if !caller.is_operator() {
        return Err(ApiError::forbidden("only operators see and set quotas"));
    }
    let t = cluster.set_quota(&name, quota).await?;
    Ok(Json(quota_view(&cluster, &t)))
}

/// Per tenant: guarantee, use, borrowed nodes, dominant share and DRF rank, with the
/// cluster's capacity and Jain's index of the weighted shares. A tenant token sees
/// its own tenant's row (and the totals).
async fn sharing(Active(cluster): Active, caller: Caller) -> Json<Value> {
    let (shares, capacity) = cluster.sharing();
    let weighted: Vec<f64> = shares.iter().map(|s| s.weighted_share).collect();
    let items: Vec<Value> = shares
        .iter()
        .filter(|s| caller.sees(&s.tenant))
        .map(|s| {
            let (incoming, outgoing) = cluster.pending_reclaims(&s.tenant);
            json!({
                "tenant": s.tenant,
                "reclaims": {"incoming": incoming, "outgoing": outgoing},
                "guaranteed_nodes": s.guaranteed_nodes,
                "used": {"nodes": s.used.nodes, "cpus": s.used.cpus, "memory_gib": s.used.memory_gib},
                "borrowed_nodes": s.borrowed_nodes,
                "dominant_share": s.dominant_share,
                "weighted_share": s.weighted_share,
                "drf_rank": s.drf_rank,
            })
        })
        .collect();
    Json(json!({
        "capacity": {"nodes": capacity.nodes, "cpus": capacity.cpus, "memory_gib": capacity.memory_gib},
        "fairness": crate::pools::sharing::jain(&weighted),
        "items": items,
        "total": items.len(),
    }))
}

fn token_view(t: &ApiTokenRecord) -> Value {
    json!({
        "id": t.id,
        "role": t.role,
        "tenant": t.tenant,
        "description": t.description,
        "created_ms": t.created_ms,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    #[serde(default)]
    description: String,
}

async fn create_tenant(
    Active(cluster): Active,
    caller: Caller,
    J(body): J<NewTenant>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if !caller.is_operator() {
        return Err(ApiError::forbidden("only operators create tenants"));
    }
    let t = cluster.create_tenant(&body.name, &body.description).await?;
    Ok((StatusCode::CREATED, Json(tenant_view(&t))))
}

async fn list_tenants(Active(cluster): Active, caller: Caller) -> Json<Value> {
    let items: Vec<Value> = cluster
        .pools
        .tenants()
        .values()
        .filter(|t| caller.sees(&t.name))
        .map(tenant_view)
        .collect();
    Json(json!({"total": items.len(), "items": items}))
}

async fn get_tenant(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let tenants = cluster.pools.tenants();
    let t = tenants
        .get(&name)
        .filter(|t| caller.sees(&t.name))
        .ok_or_else(|| ApiError::not_found(format!("tenant {name} does not exist")))?;
    let pools = cluster.pools.book().tenant_pools(&name);
    let mut view = tenant_view(t);
    view["pools"] = json!(pools);
    Ok(Json(view))
}

async fn delete_tenant(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    if !caller.is_operator() {
        return Err(ApiError::forbidden("only operators delete tenants"));
    }
    cluster.delete_tenant(&name).await?;
    Ok(Json(json!({"deleted": name})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    role: String,
    tenant: Option<String>,
    #[serde(default)]
    description: String,
}

async fn create_token(
    Active(cluster): Active,
    caller: Caller,
    J(body): J<NewToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant = match caller.role {
        ApiRole::Operator => body.tenant,
        ApiRole::Tenant => {
            if body.role == "operator" {
                return Err(ApiError::forbidden(
                    "a tenant token cannot create operator tokens",
                ));
            }
            match body.tenant {
                None => caller.tenant.clone(),
                Some(t) if caller.sees(&t) => Some(t),
                Some(_) => {
                    return Err(ApiError::forbidden(
                        "a tenant token creates tokens of its own tenant only",
                    ))
                }
            }
        }
        ApiRole::Component => {
            return Err(ApiError::forbidden("component tokens cannot create tokens"))
        }
    };
    let (token, record) = cluster
        .create_api_token(&body.role, tenant.as_deref(), &body.description)
        .await?;
    let mut view = token_view(&record);
    view["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list_tokens(Active(cluster): Active, caller: Caller) -> ApiResult<Json<Value>> {
    if caller.role == ApiRole::Component {
        return Err(ApiError::forbidden("component tokens cannot list tokens"));
    }
    let items: Vec<Value> = cluster
        .api_tokens()
        .iter()
        .filter(|t| caller.sees_token(t))
        .map(token_view)
        .collect();
    Ok(Json(json!({"total": items.len(), "items": items})))
}

async fn revoke_token(
    Active(cluster): Active,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if caller.role == ApiRole::Component {
        return Err(ApiError::forbidden("component tokens cannot revoke tokens"));
    }
    let visible = cluster
        .api_tokens()
        .iter()
        .any(|t| t.id == id && caller.sees_token(t));
    if !visible {
        return Err(ApiError::not_found(format!("token {id} does not exist")));
    }
    cluster.revoke_api_token(&id).await?;
    Ok(Json(json!({"revoked": id})))
}
