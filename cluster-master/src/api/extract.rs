//! What handlers take from a request: query strings and JSON bodies that fail with a
//! 400 naming the problem, the active cluster (a standby answers 503 naming the
//! leader), and the caller that `auth` recognised.

use std::sync::Arc;

use axum::extract::{Query, Request};
use axum::http::StatusCode;

use super::ApiError;
use crate::cluster::Cluster;
use crate::role::Node;

/// A query string; a bad one is a 400 naming the problem.
pub(crate) struct Q<T>(pub(super) T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// A JSON object body; a bad one is a 400 naming the problem. Every body the API takes
/// is an object: an array is refused too, though serde would read a struct's fields
/// from one, in order.
pub(crate) struct J<T>(pub(super) T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for J<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .is_some_and(|m| {
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !json {
            return Err(ApiError::bad_request(
                "Expected request with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(format!("Failed to parse the request body as JSON: {e}"))
        })?;
        integral_floats(&mut value);
        serde_path_to_error::deserialize(value).map(J).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ApiError::bad_request(if path == "." {
                format!("Failed to deserialize the JSON body into the target type: {inner}")
            } else {
                format!("Failed to deserialize the JSON body into the target type: {path}: {inner}")
            })
        })
    }
}

/// `3.0` is the integer 3: JSON has one kind of number, and the API's description
/// (OpenAPI 3.1, JSON Schema 2020-12) says an integer is any number without a
/// fraction, while serde refuses a float for an integer field.
fn integral_floats(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                if f.fract() == 0.0 {
                    if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                        *n = (f as u64).into();
                    } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                        *n = (f as i64).into();
                    }
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats),
        Value::Object(map) => map.values_mut().for_each(integral_floats),
        _ => {}
    }
}

/// Who is calling: the role and tenant of a valid bearer token.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub role: ApiRole,
    pub tenant: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApiRole {
    Operator,
    Tenant,
    Component,
}

impl Caller {
    pub fn is_operator(&self) -> bool {
        self.role == ApiRole::Operator
    }
    /// Whether this caller may see objects of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.is_operator() || self.tenant.as_deref() == Some(tenant)
    }
    /// Whether this caller may see (list, revoke) an API token: operators all of them,
    /// others those of their own tenant.
    pub fn sees_token(&self, token: &glory_keymaster::schema::ApiTokenRecord) -> bool {
        self.is_operator() || (token.tenant.is_some() && token.tenant == self.tenant)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no bearer token")
        })
    }
}

/// The cluster, for routes that need this master to lead; a standby answers 503
/// naming the leader.
pub struct Active(pub Arc<Cluster>);

impl axum::extract::FromRequestParts<Arc<Node>> for Active {
    type Rejection = ApiError;
    async fn from_request_parts(
        _: &mut axum::http::request::Parts,
        node: &Arc<Node>,
    ) -> Result<Self, ApiError> {
        node.active()
            .cloned()
            .map(Active)
            .ok_or_else(|| ApiError::standby(node))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::integral_floats;

    #[test]
    fn numbers_without_a_fraction_are_integers() {
        let mut v = json!({"a": 3.0, "b": [1.5, -2.0, 18446744073709551615u64], "c": {"d": 0.0}, "e": 1e300});
        integral_floats(&mut v);
        assert_eq!(v["a"].as_u64(), Some(3));
        assert_eq!(v["b"][0].as_f64(), Some(1.5));
        assert_eq!(v["b"][1].as_i64(), Some(-2));
        assert_eq!(v["b"][2].as_u64(), Some(u64::MAX));
        assert_eq!(v["c"]["d"].as_u64(), Some(0));
        // Beyond any integer type: left a float, for serde to refuse.
        assert!(v["e"].is_f64());
    }
}
