//! Console users (operators only): `POST /api/v1/users` `{name, password, role,
//! tenant?}`, `GET /api/v1/users`, `DELETE /api/v1/users/{name}`. Passwords are kept
//! only as Argon2id hashes and never shown.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use glory_keymaster::schema::UserRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::tenants::RoleName;
use super::{Active, ApiResult, J};
use crate::role::Node;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(list_users, create_user))
        .routes(routes!(delete_user))
}

/// A console user (never its password).
#[derive(Serialize, ToSchema)]
#[schema(as = User)]
struct UserView {
    name: String,
    #[schema(value_type = RoleName)]
    role: String,
    #[schema(required = true)]
    tenant: Option<String>,
    created_ms: u64,
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        UserView {
            name: u.name.clone(),
            role: u.role.clone(),
            tenant: u.tenant.clone(),
            created_ms: u.created_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct UserList {
    total: usize,
    items: Vec<UserView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UserRequest)]
struct NewUser {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    name: String,
    #[schema(min_length = 12, max_length = 256)]
    password: String,
    role: RoleName,
    /// The user's tenant: required for `tenant` and `component` users.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    tenant: Option<String>,
}

#[utoipa::path(post, path = "/users", tag = "console", operation_id = "createUser",
    summary = "Add a console user (operators only); the password is kept as an Argon2id hash.",
    request_body(content = NewUser, example = json!({"name": "alice",
        "password": "correct-horse-battery", "role": "tenant", "tenant": "analytics"})),
    responses((status = 201, description = "The user.", body = UserView, links(
        ("DeleteUser" = (operation_id = "deleteUser", parameters(("name" = "$response.body#/name")))),
    ))))]
async fn create_user(
    Active(cluster): Active,
    J(body): J<NewUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let user = cluster
        .create_user(
            &body.name,
            &body.password,
            body.role.as_str(),
            body.tenant.as_deref(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

#[utoipa::path(get, path = "/users", tag = "console", operation_id = "listUsers",
    summary = "Console users (operators only); never their passwords.",
    responses((status = 200, description = "Every user.", body = UserList)))]
async fn list_users(Active(cluster): Active) -> ApiResult<Json<UserList>> {
    let items: Vec<UserView> = cluster.users().await?.iter().map(UserView::from).collect();
    Ok(Json(UserList {
        total: items.len(),
        items,
    }))
}

#[utoipa::path(delete, path = "/users/{name}", tag = "console", operation_id = "deleteUser",
    summary = "Remove a console user (operators only).",
    params(("name" = String, Path, description = "User name.")),
    responses((status = 204, description = "Removed.")))]
async fn delete_user(Active(cluster): Active, Path(name): Path<String>) -> ApiResult<StatusCode> {
    cluster.delete_user(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
