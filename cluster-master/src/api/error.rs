//! The API's error: a status, a stable code and a message, answered as
//! `{"error": {"code", "message", ...}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use glory_keymaster::KeyMasterError;
use serde_json::{json, Value};

use crate::role::{LeaderInfo, Node};

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// A standby names the leader (boxed: errors travel in every handler's `Result`,
    /// and only a standby's carry it).
    leader: Option<Box<LeaderInfo>>,
    /// More fields of the error object (e.g. `fit` on a 409 for too few nodes).
    extra: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            leader: None,
            extra: None,
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// What went wrong, as the body's `message` says it.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
    /// 422: the request has the shape the API's schema describes but breaks a rule
    /// the schema cannot state (one field against another, against the caller, the
    /// clock or what exists).
    pub(crate) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 503 from a standby, naming the leader.
    pub(super) fn standby(node: &Node) -> Self {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "standby",
            node.standby_message(),
        );
        e.leader = node.leader().map(Box::new);
        e
    }
}

impl From<crate::pools::OpError> for ApiError {
    fn from(e: crate::pools::OpError) -> Self {
        use crate::pools::OpError;
        match e {
            OpError::Invalid(m) => Self::bad_request(m),
            OpError::Unprocessable(m) => Self::unprocessable(m),
            OpError::NotFound(m) => Self::not_found(m),
            OpError::Conflict { message, fit } => {
                let mut err = Self::conflict(message);
                if let Some(fit) = fit {
                    err.code = "not_enough_nodes";
                    err.extra = Some(json!({ "fit": fit }));
                }
                err
            }
            OpError::Quota(q) => {
                let mut err = Self::conflict(q.to_string());
                err.code = "quota_exceeded";
                err.extra = Some(json!({
                    "quota": q.limit_name,
                    "limit": q.limit,
                    "used": q.used,
                    "requested": q.requested,
                }));
                err
            }
            OpError::KeyMaster(e) => e.into(),
        }
    }
}

impl From<KeyMasterError> for ApiError {
    fn from(e: KeyMasterError) -> Self {
        match e {
            KeyMasterError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "keymaster_unavailable",
                e.to_string(),
            ),
            KeyMasterError::ElectionLost(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", e.to_string())
            }
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(leader) = self.leader {
            error["leader"] = json!(leader);
        }
        if let Some(Value::Object(extra)) = self.extra {
            for (k, v) in extra {
                error[k] = v;
            }
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;
