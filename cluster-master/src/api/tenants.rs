//! Tenants and API tokens. Operators manage everything; a tenant token sees its own
//! tenant and may mint tenant and component tokens for it; component tokens manage
//! neither.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use glory_keymaster::schema::{ApiTokenRecord, Quota, TenantRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Active, ApiError, ApiResult, ApiRole, Caller, J};
use crate::role::Node;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(get_tenant, delete_tenant))
        .routes(routes!(get_quota, put_quota))
        .routes(routes!(sharing))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
}

/// A tenant.
#[derive(Serialize, ToSchema)]
#[schema(as = Tenant)]
struct TenantView {
    name: String,
    description: String,
    /// When the tenant was created.
    created_ms: u64,
}

impl From<&TenantRecord> for TenantView {
    fn from(t: &TenantRecord) -> Self {
        TenantView {
            name: t.name.clone(),
            description: t.description.clone(),
            created_ms: t.created_ms,
        }
    }
}

/// A tenant with the names of its pools.
#[derive(Serialize, ToSchema)]
struct TenantDetail {
    #[serde(flatten)]
    tenant: TenantView,
    /// Names of its pools.
    pools: Vec<String>,
}

#[derive(Serialize, ToSchema)]
struct TenantList {
    items: Vec<TenantView>,
    /// Number of tenants.
    total: usize,
}

#[derive(Serialize, ToSchema)]
struct TenantDeleted {
    /// Name of the deleted tenant.
    deleted: String,
}

/// Nodes, CPUs and GiB of memory.
#[derive(Serialize, ToSchema)]
struct Resources {
    nodes: u64,
    cpus: u64,
    memory_gib: u64,
}

impl From<crate::pools::quota::Usage> for Resources {
    fn from(u: crate::pools::quota::Usage) -> Self {
        Resources {
            nodes: u.nodes,
            cpus: u.cpus,
            memory_gib: u.memory_gib,
        }
    }
}

/// A tenant's quota and what it holds.
#[derive(Serialize, ToSchema)]
struct QuotaView {
    tenant: String,
    guaranteed_nodes: u64,
    #[schema(required = true)]
    max_nodes: Option<u64>,
    #[schema(required = true)]
    max_cpus: Option<u64>,
    #[schema(required = true)]
    max_memory_gib: Option<u64>,
    used: Resources,
}

fn quota_view(cluster: &crate::cluster::Cluster, t: &TenantRecord) -> QuotaView {
    let q = t.quota.clone().unwrap_or_default();
    QuotaView {
        tenant: t.name.clone(),
        guaranteed_nodes: q.guaranteed_nodes,
        max_nodes: q.max_nodes,
        max_cpus: q.max_cpus,
        max_memory_gib: q.max_memory_gib,
        used: cluster.tenant_usage(&t.name).into(),
    }
}

const NAME: &str = "Tenant name.";

#[utoipa::path(get, path = "/tenants/{name}/quota", tag = "tenants", operation_id = "getQuota",
    summary = "A tenant's guarantee and limits, and what it holds (operators).",
    params(("name" = String, Path, description = NAME)),
    responses((status = 200, description = "The quota and what the tenant holds.", body = QuotaView)))]
async fn get_quota(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<QuotaView>> {
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

#[utoipa::path(put, path = "/tenants/{name}/quota", tag = "tenants", operation_id = "setQuota",
    summary = "Set a tenant's quota (operators).",
    description = "Creating or growing a pool past a limit is then a 409 `quota_exceeded` with `quota`, `limit`, `used` and `requested`. 409 when the guarantees would exceed the cluster's nodes (the message names the shortfall).",
    params(("name" = String, Path, description = NAME)),
    request_body = Quota,
    responses((status = 200, description = "The quota and what the tenant holds.", body = QuotaView)))]
async fn put_quota(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
    J(quota): J<Quota>,
) -> ApiResult<Json<QuotaView>> {
    if !caller.is_operator() {
        return Err(ApiError::forbidden("only operators see and set quotas"));
    }
    let t = cluster.set_quota(&name, quota).await?;
    Ok(Json(quota_view(&cluster, &t)))
}

/// Reclaims under way: nodes coming to the tenant, and nodes leaving it.
#[derive(Serialize, ToSchema)]
struct ReclaimCounts {
    incoming: usize,
    outgoing: usize,
}

/// A tenant's share of the cluster.
#[derive(Serialize, ToSchema)]
struct TenantShare {
    tenant: String,
    reclaims: ReclaimCounts,
    guaranteed_nodes: u64,
    used: Resources,
    /// Nodes held beyond the guarantee.
    borrowed_nodes: u64,
    /// max(share of the cluster's CPUs, share of its memory).
    dominant_share: f64,
    /// dominant_share / max(guaranteed_nodes, 1).
    weighted_share: f64,
    /// Dominant Resource Fairness order: 1 is served first.
    drf_rank: usize,
}

/// How the tenants share the cluster.
#[derive(Serialize, ToSchema)]
struct Sharing {
    capacity: Resources,
    /// Jain's index of the tenants' weighted dominant shares (1.0: equal); null when
    /// nobody holds anything.
    #[schema(required = true)]
    fairness: Option<f64>,
    items: Vec<TenantShare>,
    total: usize,
}

/// Per tenant: guarantee, use, borrowed nodes, dominant share and DRF rank, with the
/// cluster's capacity and Jain's index of the weighted shares. A tenant token sees
/// its own tenant's row (and the totals).
#[utoipa::path(get, path = "/sharing", tag = "tenants", operation_id = "getSharing",
    summary = "How the tenants share the cluster (a tenant token sees its own row).",
    responses((status = 200, description = "Per tenant, and the cluster's capacity.", body = Sharing)))]
async fn sharing(Active(cluster): Active, caller: Caller) -> Json<Sharing> {
    let (shares, capacity) = cluster.sharing();
    let weighted: Vec<f64> = shares.iter().map(|s| s.weighted_share).collect();
    let items: Vec<TenantShare> = shares
        .into_iter()
        .filter(|s| caller.sees(&s.tenant))
        .map(|s| {
            let (incoming, outgoing) = cluster.pending_reclaims(&s.tenant);
            TenantShare {
                reclaims: ReclaimCounts { incoming, outgoing },
                guaranteed_nodes: s.guaranteed_nodes,
                used: s.used.into(),
                borrowed_nodes: s.borrowed_nodes,
                dominant_share: s.dominant_share,
                weighted_share: s.weighted_share,
                drf_rank: s.drf_rank,
                tenant: s.tenant,
            }
        })
        .collect();
    Json(Sharing {
        capacity: Resources {
            nodes: capacity.nodes,
            cpus: capacity.cpus,
            memory_gib: capacity.memory_gib,
        },
        fairness: crate::pools::sharing::jain(&weighted),
        total: items.len(),
        items,
    })
}

/// What an API token may do.
#[derive(Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = ApiRole)]
pub(super) enum RoleName {
    Operator,
    Tenant,
    Component,
}

impl RoleName {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RoleName::Operator => "operator",
            RoleName::Tenant => "tenant",
            RoleName::Component => "component",
        }
    }
}

/// An API token, without its secret.
#[derive(Serialize, ToSchema)]
#[schema(as = ApiToken)]
struct TokenView {
    id: String,
    /// One of `operator`, `tenant` or `component`.
    #[schema(value_type = RoleName)]
    role: String,
    /// Null for operator tokens.
    #[schema(required = true)]
    tenant: Option<String>,
    description: String,
    /// When the token was created.
    created_ms: u64,
}

impl From<&ApiTokenRecord> for TokenView {
    fn from(t: &ApiTokenRecord) -> Self {
        TokenView {
            id: t.id.clone(),
            role: t.role.clone(),
            tenant: t.tenant.clone(),
            description: t.description.clone(),
            created_ms: t.created_ms,
        }
    }
}

/// A new API token, with its secret.
#[derive(Serialize, ToSchema)]
struct NewApiToken {
    #[serde(flatten)]
    view: TokenView,
    /// The bearer token `<id>.<secret>`; shown only here.
    token: String,
}

#[derive(Serialize, ToSchema)]
struct ApiTokenList {
    items: Vec<TokenView>,
    /// Number of tokens.
    total: usize,
}

#[derive(Serialize, ToSchema)]
struct ApiTokenRevoked {
    /// Id of the revoked token.
    revoked: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TenantRequest)]
struct NewTenant {
    /// 1-63 lowercase letters, digits or `-`.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    name: String,
    #[serde(default)]
    #[schema(max_length = 256)]
    description: String,
}

#[utoipa::path(post, path = "/tenants", tag = "tenants", operation_id = "createTenant",
    summary = "Create a tenant (operators only).",
    request_body(content = NewTenant,
        example = json!({"name": "analytics", "description": "The analytics team"})),
    responses((status = 201, description = "The tenant.", body = TenantView, links(
        ("GetTenant" = (operation_id = "getTenant", parameters(("name" = "$response.body#/name")))),
        ("DeleteTenant" = (operation_id = "deleteTenant", parameters(("name" = "$response.body#/name")))),
        ("GetQuota" = (operation_id = "getQuota", parameters(("name" = "$response.body#/name")))),
        ("SetQuota" = (operation_id = "setQuota", parameters(("name" = "$response.body#/name")))),
        ("CreatePoolOfTenant" = (operation_id = "createPool",
            request_body = json!({"tenant": "$response.body#/name"}))),
        ("CreateTokenOfTenant" = (operation_id = "createApiToken",
            request_body = json!({"tenant": "$response.body#/name", "role": "tenant"}))),
        ("CreateUserOfTenant" = (operation_id = "createUser",
            request_body = json!({"tenant": "$response.body#/name", "role": "tenant"}))),
        ("RegisterFrameworkOfTenant" = (operation_id = "registerFramework",
            request_body = json!({"tenant": "$response.body#/name"}))),
    ))))]
async fn create_tenant(
    Active(cluster): Active,
    caller: Caller,
    J(body): J<NewTenant>,
) -> ApiResult<(StatusCode, Json<TenantView>)> {
    if !caller.is_operator() {
        return Err(ApiError::forbidden("only operators create tenants"));
    }
    let t = cluster.create_tenant(&body.name, &body.description).await?;
    Ok((StatusCode::CREATED, Json(TenantView::from(&t))))
}

#[utoipa::path(get, path = "/tenants", tag = "tenants", operation_id = "listTenants",
    summary = "List the tenants the caller may see.",
    responses((status = 200, description = "Every tenant (operators) or the caller's own.", body = TenantList)))]
async fn list_tenants(Active(cluster): Active, caller: Caller) -> Json<TenantList> {
    let items: Vec<TenantView> = cluster
        .pools
        .tenants()
        .values()
        .filter(|t| caller.sees(&t.name))
        .map(TenantView::from)
        .collect();
    Json(TenantList {
        total: items.len(),
        items,
    })
}

#[utoipa::path(get, path = "/tenants/{name}", tag = "tenants", operation_id = "getTenant",
    summary = "A tenant with the names of its pools.",
    description = "Another tenant answers 404.",
    params(("name" = String, Path, description = NAME, pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses((status = 200, description = "The tenant.", body = TenantDetail)))]
async fn get_tenant(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<TenantDetail>> {
    let tenants = cluster.pools.tenants();
    let t = tenants
        .get(&name)
        .filter(|t| caller.sees(&t.name))
        .ok_or_else(|| ApiError::not_found(format!("tenant {name} does not exist")))?;
    Ok(Json(TenantDetail {
        tenant: t.into(),
        pools: cluster.pools.book().tenant_pools(&name),
    }))
}

#[utoipa::path(delete, path = "/tenants/{name}", tag = "tenants", operation_id = "deleteTenant",
    summary = "Delete a tenant without pools; its API tokens are revoked (operators only).",
    description = "409 while the tenant still has pools.",
    params(("name" = String, Path, description = NAME, pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses((status = 200, description = "Deleted.", body = TenantDeleted)))]
async fn delete_tenant(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<TenantDeleted>> {
    if !caller.is_operator() {
        return Err(ApiError::forbidden("only operators delete tenants"));
    }
    cluster.delete_tenant(&name).await?;
    Ok(Json(TenantDeleted { deleted: name }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ApiTokenRequest)]
struct NewToken {
    role: RoleName,
    /// Required for `tenant` and `component` tokens (a tenant caller defaults to its
    /// own), absent for `operator` tokens.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    tenant: Option<String>,
    #[serde(default)]
    #[schema(max_length = 256)]
    description: String,
}

#[utoipa::path(post, path = "/tokens", tag = "tokens", operation_id = "createApiToken",
    summary = "Create an API token.",
    description = "Operators create any token; a tenant token creates tenant and component tokens of its own tenant; component tokens get 403.",
    request_body(content = NewToken,
        example = json!({"role": "tenant", "tenant": "analytics", "description": "the analytics team's CI"})),
    responses((status = 201, description = "The token, shown only in this answer.", body = NewApiToken, links(
        ("RevokeApiToken" = (operation_id = "revokeApiToken", parameters(("id" = "$response.body#/id")))),
    ))))]
async fn create_token(
    Active(cluster): Active,
    caller: Caller,
    J(body): J<NewToken>,
) -> ApiResult<(StatusCode, Json<NewApiToken>)> {
    let tenant = match caller.role {
        ApiRole::Operator => body.tenant,
        ApiRole::Tenant => {
            if matches!(body.role, RoleName::Operator) {
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
        .create_api_token(body.role.as_str(), tenant.as_deref(), &body.description)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewApiToken {
            view: TokenView::from(&record),
            token,
        }),
    ))
}

#[utoipa::path(get, path = "/tokens", tag = "tokens", operation_id = "listApiTokens",
    summary = "List API tokens (operators: all; tenant tokens: their tenant's).",
    description = "Component tokens get 403.",
    responses((status = 200, description = "The visible tokens (without secrets).", body = ApiTokenList)))]
async fn list_tokens(Active(cluster): Active, caller: Caller) -> ApiResult<Json<ApiTokenList>> {
    if caller.role == ApiRole::Component {
        return Err(ApiError::forbidden("component tokens cannot list tokens"));
    }
    let items: Vec<TokenView> = cluster
        .api_tokens()
        .iter()
        .filter(|t| caller.sees_token(t))
        .map(TokenView::from)
        .collect();
    Ok(Json(ApiTokenList {
        total: items.len(),
        items,
    }))
}

#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens", operation_id = "revokeApiToken",
    summary = "Revoke an API token.",
    description = "Operators revoke any token, tenant tokens those of their tenant (others answer 404); component tokens get 403.",
    params(("id" = String, Path, description = "API token id.")),
    responses((status = 200, description = "Revoked.", body = ApiTokenRevoked)))]
async fn revoke_token(
    Active(cluster): Active,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiTokenRevoked>> {
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
    Ok(Json(ApiTokenRevoked { revoked: id }))
}
