//! Authentication: the bearer token names the caller (role and tenant) for the
//! handlers; operator-only families are guarded by one more layer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{session, ApiError, ApiRole, Caller};
use crate::role::Node;

/// Let only operators through.
pub(super) async fn operator_only(req: Request, next: Next) -> Response {
    match req.extensions().get::<Caller>() {
        Some(c) if c.is_operator() => next.run(req).await,
        _ => ApiError::forbidden("this route needs an operator token").into_response(),
    }
}

fn role_of(role: &str) -> ApiRole {
    match role {
        "operator" => ApiRole::Operator,
        "tenant" => ApiRole::Tenant,
        _ => ApiRole::Component,
    }
}

/// Check the bearer token, or else the console's session cookie (with its CSRF token
/// on every change), and remember the caller for the handlers.
pub(super) async fn authenticate(
    State(node): State<Arc<Node>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(cluster) = node.active() else {
        return ApiError::standby(&node).into_response();
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let caller = match token {
        Some(token) => cluster.check_api_token(token).map(|record| Caller {
            role: role_of(&record.role),
            tenant: record.tenant,
        }),
        None => match session::current(cluster, req.headers()) {
            Some((_, s)) => {
                let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
                let csrf = req
                    .headers()
                    .get(session::CSRF_HEADER)
                    .and_then(|v| v.to_str().ok());
                if !safe && csrf != Some(s.csrf.as_str()) {
                    return ApiError::new(
                        StatusCode::FORBIDDEN,
                        "csrf",
                        "a change made with the session cookie needs its X-CSRF-Token",
                    )
                    .into_response();
                }
                Some(Caller {
                    role: role_of(&s.role),
                    tenant: s.tenant,
                })
            }
            None => None,
        },
    };
    match caller {
        Some(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token (Authorization: Bearer <token>) or session",
        )
        .into_response(),
    }
}
