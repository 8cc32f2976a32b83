//! Console sign-in: `POST /api/v1/session` with an API token or a user's name and
//! password opens a session (the `glory_session` cookie) and answers its CSRF token;
//! `GET` tells who the cookie is, `DELETE` signs out. The routes themselves need no
//! bearer token; everything else takes the cookie as it takes a token
//! ([`super::auth::authenticate`]), changes only with `X-CSRF-Token`.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Active, ApiError, ApiResult, J};
use crate::role::Node;
use crate::sessions::{Session, SESSION_TTL_MS};

pub(super) const COOKIE: &str = "glory_session";
pub(super) const CSRF_HEADER: &str = "x-csrf-token";

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default().routes(routes!(sign_in, whoami, sign_out))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// Either token, or user and password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SessionRequest)]
struct SignIn {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// A console session.
#[derive(Serialize, ToSchema)]
#[schema(as = Session)]
struct SessionView {
    #[schema(value_type = super::tenants::RoleName)]
    role: String,
    #[schema(required = true)]
    tenant: Option<String>,
    #[schema(required = true)]
    user: Option<String>,
    /// Send it as X-CSRF-Token with every change made with the cookie.
    csrf_token: String,
    expires_ms: u64,
}

fn view(s: &Session) -> SessionView {
    SessionView {
        role: s.role.clone(),
        tenant: s.tenant.clone(),
        user: s.user.clone(),
        csrf_token: s.csrf.clone(),
        expires_ms: s.expires_ms,
    }
}

fn set_cookie(value: &str, max_age_s: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_s}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("glory_session=; Max-Age=0"))
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

#[utoipa::path(post, path = "/session", tag = "console", operation_id = "signIn",
    summary = "Sign in with an API token or a user's password: sets the glory_session cookie (HttpOnly, SameSite=Strict).",
    security(()),
    request_body = SignIn,
    responses((status = 200, description = "The session.", body = SessionView)))]
async fn sign_in(Active(cluster): Active, J(body): J<SignIn>) -> ApiResult<Response> {
    let now = glory_protocol::now_ms();
    let (id, session) = match (body.token, body.user, body.password) {
        (Some(token), None, None) => {
            let record = cluster
                .check_api_token(&token)
                .ok_or_else(|| unauthorized("invalid token"))?;
            cluster
                .sessions
                .open(&record.role, record.tenant, None, Some(record.id), now)
        }
        (None, Some(user), Some(password)) => {
            let record = cluster
                .check_user(&user, &password)
                .await?
                .ok_or_else(|| unauthorized("invalid user or password"))?;
            cluster
                .sessions
                .open(&record.role, record.tenant, Some(record.name), None, now)
        }
        _ => {
            return Err(ApiError::unprocessable(
                "give either token, or user and password",
            ))
        }
    };
    let mut resp = Json(view(&session)).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&id, SESSION_TTL_MS / 1000));
    Ok(resp)
}

/// The session the cookie names, if it still holds.
pub(super) fn current(
    cluster: &crate::cluster::Cluster,
    headers: &HeaderMap,
) -> Option<(String, Session)> {
    let id = cookie(headers, COOKIE)?;
    let session = cluster.sessions.get(id, glory_protocol::now_ms())?;
    // A session made from an API token ends with the token.
    if let Some(token) = &session.token_id {
        if !cluster.api_tokens().iter().any(|t| &t.id == token) {
            cluster.sessions.close(id);
            return None;
        }
    }
    Some((id.to_string(), session))
}

#[utoipa::path(get, path = "/session", tag = "console", operation_id = "getSession",
    summary = "Who the session cookie is.",
    security(("session" = [])),
    responses((status = 200, description = "The session.", body = SessionView)))]
async fn whoami(Active(cluster): Active, headers: HeaderMap) -> ApiResult<Json<SessionView>> {
    let (_, session) = current(&cluster, &headers).ok_or_else(|| unauthorized("not signed in"))?;
    Ok(Json(view(&session)))
}

#[utoipa::path(delete, path = "/session", tag = "console", operation_id = "signOut",
    summary = "Sign out (needs X-CSRF-Token).",
    security(("session" = [])),
    responses((status = 204, description = "Signed out; the cookie is cleared.")))]
async fn sign_out(Active(cluster): Active, headers: HeaderMap) -> ApiResult<Response> {
    let (id, session) = current(&cluster, &headers).ok_or_else(|| unauthorized("not signed in"))?;
    if headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) != Some(session.csrf.as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "X-CSRF-Token is missing or wrong",
        ));
    }
    cluster.sessions.close(&id);
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie("", 0));
    Ok(resp)
}
