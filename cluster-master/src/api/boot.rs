//! The boot table (`/boot`: each MAC's way from power-on to enrolled) and the
//! provisioners that serve boot networks (`/provisioners`).

use std::sync::Arc;

use axum::extract::Path;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Active, ApiError, ApiResult, Q};
use crate::provisioning::normalize_mac;
use crate::role::Node;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(list_boots))
        .routes(routes!(get_boot))
        .routes(routes!(list_provisioners))
}

const STATES: [&str; 5] = ["discovered", "booting", "enrolling", "enrolled", "failed"];

/// Where a MAC is on its way from power-on to enrolled.
fn boot_state() -> Schema {
    super::openapi::string_enum(STATES)
}

/// A MAC address in any of the usual spellings: six hex bytes, separated or not.
pub(super) fn mac_schema() -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[:.-]*([0-9A-Fa-f][:.-]*){12}$"))
            .description(Some("A MAC address, e.g. 52:54:00:12:34:56."))
            .build(),
    )
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct BootQuery {
    #[serde(default)]
    #[param(schema_with = boot_state)]
    state: Option<String>,
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 5000)]
    limit: usize,
    /// The `next` of the previous page.
    #[serde(default)]
    after: usize,
}

fn default_limit() -> usize {
    500
}

/// One MAC's boot.
#[derive(Serialize, ToSchema)]
#[schema(as = Boot)]
struct BootView {
    mac: String,
    #[schema(schema_with = boot_state)]
    state: String,
    node: Option<String>,
    ip: Option<String>,
    /// When it entered its state, ms since the epoch.
    since: u64,
    detail: String,
    provisioner: String,
}

impl From<&glory_keymaster::schema::BootRecord> for BootView {
    fn from(b: &glory_keymaster::schema::BootRecord) -> Self {
        BootView {
            mac: b.mac.clone(),
            state: b.state.clone(),
            node: b.node.clone(),
            ip: b.ip.clone(),
            since: b.since_ms,
            detail: b.detail.clone(),
            provisioner: b.provisioner.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
struct BootPage {
    items: Vec<BootView>,
    total: usize,
    /// Pass as `after` for the next page; null on the last page.
    #[schema(required = true)]
    next: Option<String>,
}

pub(super) fn mac_param(mac: &str) -> ApiResult<String> {
    normalize_mac(mac).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{mac:?} is not a MAC address (six hex bytes, e.g. 52:54:00:12:34:56)"
        ))
    })
}

#[utoipa::path(get, path = "/boot", tag = "provisioning", operation_id = "listBoots",
    summary = "Each MAC's way from power-on to enrolled (paged by next).",
    params(BootQuery),
    responses((status = 200, description = "Boots.", body = BootPage)))]
async fn list_boots(Active(cluster): Active, Q(q): Q<BootQuery>) -> ApiResult<Json<BootPage>> {
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
    let items: Vec<BootView> = matching
        .iter()
        .skip(q.after)
        .take(q.limit)
        .map(BootView::from)
        .collect();
    let end = q.after.saturating_add(items.len());
    let next = (end < total).then(|| end.to_string());
    Ok(Json(BootPage { items, total, next }))
}

#[utoipa::path(get, path = "/boot/{mac}", tag = "provisioning", operation_id = "getBoot",
    summary = "One MAC's boot.",
    params(("mac" = inline(MacPath), Path)),
    responses((status = 200, description = "The boot.", body = BootView)))]
async fn get_boot(Active(cluster): Active, Path(mac): Path<String>) -> ApiResult<Json<BootView>> {
    let mac = mac_param(&mac)?;
    let boot = cluster
        .provisioning
        .boot(&mac)
        .ok_or_else(|| ApiError::not_found(format!("no boot of {mac} is known")))?;
    Ok(Json(BootView::from(&boot)))
}

/// The `{mac}` of a path, for its schema.
pub(super) struct MacPath;

impl utoipa::PartialSchema for MacPath {
    fn schema() -> utoipa::openapi::RefOr<Schema> {
        mac_schema().into()
    }
}

impl ToSchema for MacPath {}

/// A provisioner that enrolled.
#[derive(Serialize, ToSchema)]
struct Provisioner {
    name: String,
    /// Its HTTP server (boot files, images).
    http: String,
    enrolled_ms: u64,
}

#[derive(Serialize, ToSchema)]
struct ProvisionerList {
    items: Vec<Provisioner>,
    total: usize,
}

#[utoipa::path(get, path = "/provisioners", tag = "provisioning", operation_id = "listProvisioners",
    summary = "Provisioners that enrolled.",
    responses((status = 200, description = "Provisioners.", body = ProvisionerList)))]
async fn list_provisioners(Active(cluster): Active) -> Json<ProvisionerList> {
    let items: Vec<Provisioner> = cluster
        .provisioning
        .provisioners()
        .iter()
        .map(|p| Provisioner {
            name: p.name.clone(),
            http: p.http.clone(),
            enrolled_ms: p.enrolled_ms,
        })
        .collect();
    Json(ProvisionerList {
        total: items.len(),
        items,
    })
}
