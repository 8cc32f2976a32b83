//! Console users (operators only): `POST /api/v1/users` `{name, password, role,
//! tenant?}`, `GET /api/v1/users`, `DELETE /api/v1/users/{name}`. Passwords are kept
//! only as Argon2id hashes and never shown.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use glory_keymaster::schema::UserRecord;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Active, ApiResult, J};
use crate::role::Node;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{name}", delete(delete_user))
}

fn user_view(u: &UserRecord) -> Value {
    json!({"name": u.name, "role": u.role, "tenant": u.tenant, "created_ms": u.created_ms})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
    role: String,
    #[serde(default)]
    tenant: Option<String>,
}

async fn create_user(
    Active(cluster): Active,
    J(body): J<NewUser>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let user = cluster
        .create_user(
            &body.name,
            &body.password,
            &body.role,
            body.tenant.as_deref(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user_view(&user))))
}

async fn list_users(Active(cluster): Active) -> ApiResult<Json<Value>> {
    let users = cluster.users().await?;
    let items: Vec<Value> = users.iter().map(user_view).collect();
    Ok(Json(json!({"total": items.len(), "items": items})))
}

async fn delete_user(Active(cluster): Active, Path(name): Path<String>) -> ApiResult<StatusCode> {
    cluster.delete_user(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
