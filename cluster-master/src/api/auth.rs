//! Authentication: the bearer token names the caller (role and tenant) for the
//! handlers; operator-only families are guarded by one more layer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiRole, Caller};
use crate::role::Node;

/// Let only operators through.
pub(super) async fn operator_only(req: Request, next: Next) -> Response {
    match req.extensions().get::<Caller>() {
        Some(c) if c.is_operator() => next.run(req).await,
        _ => ApiError::forbidden("this route needs an operator token").into_response(),
    }
}

/// Check the bearer token and remember the caller for the handlers.
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
    match token.and_then(|t| cluster.check_api_token(t)) {
        Some(record) => {
            let role = match record.role.as_str() {
                "operator" => ApiRole::Operator,
                "tenant" => ApiRole::Tenant,
                _ => ApiRole::Component,
            };
            req.extensions_mut().insert(Caller {
                role,
                tenant: record.tenant,
            });
            next.run(req).await
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token (Authorization: Bearer <token>)",
        )
        .into_response(),
    }
}
