//! The boot table (`/boot`: each MAC's way from power-on to enrolled) and the
//! provisioners that serve boot networks (`/provisioners`).

use std::sync::Arc;

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Active, ApiError, ApiResult, Q};
use crate::provisioning::normalize_mac;
use crate::role::Node;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/boot", get(list_boots))
        .route("/boot/{mac}", get(get_boot))
        .route("/provisioners", get(list_provisioners))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default = "default_limit")]
    limit: usize,
    /// The `next` of the previous page.
    #[serde(default)]
    after: usize,
}

fn default_limit() -> usize {
    500
}

const STATES: [&str; 5] = ["discovered", "booting", "enrolling", "enrolled", "failed"];

fn boot_view(b: &glory_keymaster::schema::BootRecord) -> Value {
    json!({
        "mac": b.mac,
        "state": b.state,
        "node": b.node,
        "ip": b.ip,
        "since": b.since_ms,
        "detail": b.detail,
        "provisioner": b.provisioner,
    })
}

pub(super) fn mac_param(mac: &str) -> ApiResult<String> {
    normalize_mac(mac).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{mac:?} is not a MAC address (six hex bytes, e.g. 52:54:00:12:34:56)"
        ))
    })
}

async fn list_boots(Active(cluster): Active, Q(q): Q<BootQuery>) -> ApiResult<Json<Value>> {
    if let Some(s) = &q.state {
        if !STATES.contains(&s.as_str()) {
            return Err(ApiError::bad_request(format!(
                "state: {s:?} is not one of {}",
                STATES.join(", ")
            )));
        }
    }
    if !(1..=5000).contains(&q.limit) {
        return Err(ApiError::bad_request("limit: between 1 and 5000"));
    }
    let matching: Vec<_> = cluster
        .provisioning
        .boots()
        .into_iter()
        .filter(|b| q.state.as_deref().is_none_or(|s| s == b.state))
        .collect();
    let total = matching.len();
    let items: Vec<Value> = matching
        .iter()
        .skip(q.after)
        .take(q.limit)
        .map(boot_view)
        .collect();
    let end = q.after + items.len();
    let next = (end < total).then(|| end.to_string());
    Ok(Json(json!({"items": items, "total": total, "next": next})))
}

async fn get_boot(Active(cluster): Active, Path(mac): Path<String>) -> ApiResult<Json<Value>> {
    let mac = mac_param(&mac)?;
    let boot = cluster
        .provisioning
        .boot(&mac)
        .ok_or_else(|| ApiError::not_found(format!("no boot of {mac} is known")))?;
    Ok(Json(boot_view(&boot)))
}

async fn list_provisioners(Active(cluster): Active) -> Json<Value> {
    let items: Vec<Value> = cluster
        .provisioning
        .provisioners()
        .iter()
        .map(|p| json!({"name": p.name, "http": p.http, "enrolled_ms": p.enrolled_ms}))
        .collect();
    Json(json!({"items": items, "total": items.len()}))
}
