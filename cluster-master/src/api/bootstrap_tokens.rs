//! Bootstrap tokens, with which nodes and group masters enroll: created (the token is
//! shown once), listed, deleted.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use glory_keymaster::schema::{BootstrapScope, BootstrapTokenRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Active, ApiError, ApiResult, J};
use crate::role::Node;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route(
            "/bootstrap-tokens",
            get(list_bootstrap_tokens).post(create_bootstrap_token),
        )
        .route("/bootstrap-tokens/{id}", delete(delete_bootstrap_token))
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
