//! Bootstrap tokens, with which nodes and group masters enroll: created (the token is
//! shown once), listed, deleted.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use glory_keymaster::schema::{BootstrapScope, BootstrapTokenRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Active, ApiError, ApiResult, J};
use crate::role::Node;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(list_bootstrap_tokens, create_bootstrap_token))
        .routes(routes!(delete_bootstrap_token))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BootstrapTokenRequest)]
struct NewBootstrapToken {
    /// Lifetime in seconds (at most ten years); 0: never expires; absent or null: the
    /// configured default.
    #[schema(maximum = 315360000)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    single_use: bool,
    /// `node` (default), `group_master`, `any` or `provisioner`.
    scope: Option<BootstrapScope>,
    #[serde(default)]
    #[schema(max_length = 256)]
    description: String,
}

/// A bootstrap token, without its secret.
#[derive(Serialize, ToSchema)]
#[schema(as = BootstrapToken)]
struct TokenView {
    id: String,
    /// When the token was created.
    created_ms: u64,
    /// When it expires; null: never.
    #[schema(required = true)]
    expires_ms: Option<u64>,
    single_use: bool,
    /// Whether a single-use token was used.
    used: bool,
    scope: BootstrapScope,
    description: String,
}

impl From<&BootstrapTokenRecord> for TokenView {
    fn from(record: &BootstrapTokenRecord) -> Self {
        TokenView {
            id: record.id.clone(),
            created_ms: record.created_ms,
            expires_ms: record.expires_ms,
            single_use: record.single_use,
            used: record.used,
            scope: record.scope,
            description: record.description.clone(),
        }
    }
}

/// A new bootstrap token, with its secret.
#[derive(Serialize, ToSchema)]
#[schema(as = NewBootstrapToken)]
struct NewTokenView {
    #[serde(flatten)]
    view: TokenView,
    /// The token `<id>.<secret>`; shown only here.
    token: String,
    /// Hex SHA-256 of the cluster CA certificate, to pin it when enrolling.
    #[schema(required = true)]
    ca_cert_hash: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct BootstrapTokenList {
    items: Vec<TokenView>,
    /// Number of tokens.
    total: usize,
}

#[derive(Serialize, ToSchema)]
struct BootstrapTokenDeleted {
    /// Id of the deleted token.
    deleted: String,
}

#[utoipa::path(post, path = "/bootstrap-tokens", tag = "bootstrap-tokens",
    operation_id = "createBootstrapToken",
    summary = "Create a bootstrap token for enrolling nodes or group masters.",
    request_body(content = NewBootstrapToken, example = json!({"ttl_seconds": 3600,
        "single_use": false, "description": "rack 12 enrollment"})),
    responses((status = 201, description = "The token, shown only in this answer.",
        body = NewTokenView, links(
        ("DeleteBootstrapToken" = (operation_id = "deleteBootstrapToken",
            parameters(("id" = "$response.body#/id")))),
    ))))]
async fn create_bootstrap_token(
    Active(cluster): Active,
    J(body): J<NewBootstrapToken>,
) -> ApiResult<(StatusCode, Json<NewTokenView>)> {
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
    Ok((
        StatusCode::CREATED,
        Json(NewTokenView {
            view: TokenView::from(&record),
            token,
            ca_cert_hash: cluster.ca.cert_hash().ok(),
        }),
    ))
}

#[utoipa::path(get, path = "/bootstrap-tokens", tag = "bootstrap-tokens",
    operation_id = "listBootstrapTokens",
    summary = "List bootstrap (enrollment) tokens.",
    responses((status = 200, description = "Every bootstrap token (without secrets).",
        body = BootstrapTokenList)))]
async fn list_bootstrap_tokens(Active(cluster): Active) -> ApiResult<Json<BootstrapTokenList>> {
    let items: Vec<TokenView> = cluster
        .list_bootstrap_tokens()
        .await?
        .iter()
        .map(TokenView::from)
        .collect();
    Ok(Json(BootstrapTokenList {
        total: items.len(),
        items,
    }))
}

#[utoipa::path(delete, path = "/bootstrap-tokens/{id}", tag = "bootstrap-tokens",
    operation_id = "deleteBootstrapToken",
    summary = "Delete a bootstrap token.",
    params(("id" = String, Path, description = "Bootstrap token id.")),
    responses((status = 200, description = "Deleted.", body = BootstrapTokenDeleted)))]
async fn delete_bootstrap_token(
    Active(cluster): Active,
    Path(id): Path<String>,
) -> ApiResult<Json<BootstrapTokenDeleted>> {
    if cluster.delete_bootstrap_token(&id).await? {
        Ok(Json(BootstrapTokenDeleted { deleted: id }))
    } else {
        Err(ApiError::not_found(format!(
            "bootstrap token {id} does not exist"
        )))
    }
}
