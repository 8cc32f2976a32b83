//! Remote power control: BMC settings (`/nodes/{id}/bmc`, `/boot/{mac}/bmc` for
//! machines not enrolled yet), power actions and state (`/nodes/{id}/power`,
//! `/boot/{mac}/power`) and bulk actions (`/power`, rate-limited per group).

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use glory_provisioner::power::PowerAction;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::boot::mac_param;
use super::node_filter::NodeFilter;
use super::{Active, ApiError, ApiResult, J};
use crate::cluster::Cluster;
use crate::provisioning::power::{BmcInput, BulkResult, PowerFailure, PowerView};
use crate::role::Node;
use glory_keymaster::schema::BmcRecord;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(get_node_bmc, put_node_bmc, delete_node_bmc))
        .routes(routes!(node_power, node_power_action))
        .routes(routes!(get_mac_bmc, put_mac_bmc, delete_mac_bmc))
        .routes(routes!(mac_power, mac_power_action))
        .routes(routes!(bulk_power))
}

impl From<PowerFailure> for ApiError {
    fn from(e: PowerFailure) -> Self {
        match e {
            PowerFailure::NoBmc(m) => ApiError::new(StatusCode::CONFLICT, "no_bmc", m),
            PowerFailure::Bmc(m) => ApiError::new(StatusCode::BAD_GATEWAY, "bmc_failed", m),
            PowerFailure::Store(e) => e.into(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PowerRequest)]
struct ActionBody {
    action: PowerAction,
}

/// BMC settings as the API shows them: never the password, only whether one is set.
#[derive(Serialize, ToSchema)]
#[schema(as = Bmc)]
struct BmcView {
    /// `ipmi`, `redfish` or `qemu`.
    driver: String,
    address: String,
    #[schema(required = true)]
    port: Option<u16>,
    #[schema(required = true)]
    user: Option<String>,
    password_set: bool,
    #[schema(required = true)]
    system_id: Option<String>,
    insecure_tls: bool,
    updated_ms: u64,
}

fn bmc_view(record: &BmcRecord) -> BmcView {
    BmcView {
        driver: record.driver.clone(),
        address: record.address.clone(),
        port: record.port,
        user: record.user.clone(),
        password_set: record.password_sealed.is_some(),
        system_id: record.system_id.clone(),
        insecure_tls: record.insecure_tls,
        updated_ms: record.updated_ms,
    }
}

fn known_node(cluster: &Cluster, id: &str) -> ApiResult<String> {
    if cluster.read().nodes.contains_key(id) {
        Ok(id.to_string())
    } else {
        Err(ApiError::not_found(format!("node {id} does not exist")))
    }
}

fn mac_target(mac: &str) -> ApiResult<String> {
    Ok(format!("mac:{}", mac_param(mac)?))
}

async fn get_bmc(cluster: &Cluster, target: &str) -> ApiResult<Json<BmcView>> {
    let record = cluster
        .bmc_record(target)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{target} has no BMC settings")))?;
    Ok(Json(bmc_view(&record)))
}

async fn put_bmc(cluster: &Cluster, target: &str, body: BmcInput) -> ApiResult<Json<BmcView>> {
    let record = cluster.set_bmc(target, body).await.map_err(|e| match e {
        // Settings that break a driver's rules (an IPMI user that is empty...).
        PowerFailure::Bmc(m) => ApiError::unprocessable(m),
        other => other.into(),
    })?;
    Ok(Json(bmc_view(&record)))
}

async fn delete_bmc(cluster: &Cluster, target: &str) -> ApiResult<StatusCode> {
    if cluster.delete_bmc(target).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("{target} has no BMC settings")))
    }
}

#[utoipa::path(get, path = "/nodes/{id}/bmc", tag = "power", operation_id = "getNodeBmc",
    summary = "BMC settings (never the password).", params(("id" = String, Path, description = "Node id.")),
    responses((status = 200, description = "The settings.", body = BmcView)))]
async fn get_node_bmc(Active(c): Active, Path(id): Path<String>) -> ApiResult<Json<BmcView>> {
    get_bmc(&c, &known_node(&c, &id)?).await
}

#[utoipa::path(put, path = "/nodes/{id}/bmc", tag = "power", operation_id = "setNodeBmc",
    summary = "Set BMC settings; the password is sealed in the key master.", params(("id" = String, Path, description = "Node id.")),
    request_body = BmcInput,
    responses((status = 200, description = "Stored.", body = BmcView)))]
async fn put_node_bmc(
    Active(c): Active,
    Path(id): Path<String>,
    J(body): J<BmcInput>,
) -> ApiResult<Json<BmcView>> {
    put_bmc(&c, &known_node(&c, &id)?, body).await
}

#[utoipa::path(delete, path = "/nodes/{id}/bmc", tag = "power", operation_id = "deleteNodeBmc",
    summary = "Forget BMC settings.", params(("id" = String, Path, description = "Node id.")),
    responses((status = 204, description = "Removed.")))]
async fn delete_node_bmc(Active(c): Active, Path(id): Path<String>) -> ApiResult<StatusCode> {
    delete_bmc(&c, &known_node(&c, &id)?).await
}

#[utoipa::path(get, path = "/boot/{mac}/bmc", tag = "power", operation_id = "getMacBmc",
    summary = "BMC settings (never the password).", params(("mac" = inline(super::boot::MacPath), Path)),
    responses((status = 200, description = "The settings.", body = BmcView)))]
async fn get_mac_bmc(Active(c): Active, Path(mac): Path<String>) -> ApiResult<Json<BmcView>> {
    get_bmc(&c, &mac_target(&mac)?).await
}

#[utoipa::path(put, path = "/boot/{mac}/bmc", tag = "power", operation_id = "setMacBmc",
    summary = "Set BMC settings; the password is sealed in the key master.", params(("mac" = inline(super::boot::MacPath), Path)),
    request_body = BmcInput,
    responses((status = 200, description = "Stored.", body = BmcView)))]
async fn put_mac_bmc(
    Active(c): Active,
    Path(mac): Path<String>,
    J(body): J<BmcInput>,
) -> ApiResult<Json<BmcView>> {
    put_bmc(&c, &mac_target(&mac)?, body).await
}

#[utoipa::path(delete, path = "/boot/{mac}/bmc", tag = "power", operation_id = "deleteMacBmc",
    summary = "Forget BMC settings.", params(("mac" = inline(super::boot::MacPath), Path)),
    responses((status = 204, description = "Removed.")))]
async fn delete_mac_bmc(Active(c): Active, Path(mac): Path<String>) -> ApiResult<StatusCode> {
    delete_bmc(&c, &mac_target(&mac)?).await
}

#[utoipa::path(get, path = "/nodes/{id}/power", tag = "power", operation_id = "getNodePower",
    summary = "Ask the BMC for the power state.", params(("id" = String, Path, description = "Node id.")),
    responses((status = 200, description = "The state.", body = PowerView)))]
async fn node_power(Active(c): Active, Path(id): Path<String>) -> ApiResult<Json<PowerView>> {
    Ok(Json(c.power_status(&known_node(&c, &id)?).await?))
}

#[utoipa::path(post, path = "/nodes/{id}/power", tag = "power", operation_id = "nodePowerAction",
    summary = "Power on, off, cycle, reset, or boot from the network (pxe).", params(("id" = String, Path, description = "Node id.")),
    request_body = ActionBody,
    responses((status = 200, description = "The state after.", body = PowerView)))]
async fn node_power_action(
    Active(c): Active,
    Path(id): Path<String>,
    J(body): J<ActionBody>,
) -> ApiResult<Json<PowerView>> {
    Ok(Json(
        c.power_action(&known_node(&c, &id)?, body.action).await?,
    ))
}

#[utoipa::path(get, path = "/boot/{mac}/power", tag = "power", operation_id = "getMacPower",
    summary = "Ask the BMC for the power state.", params(("mac" = inline(super::boot::MacPath), Path)),
    responses((status = 200, description = "The state.", body = PowerView)))]
async fn mac_power(Active(c): Active, Path(mac): Path<String>) -> ApiResult<Json<PowerView>> {
    Ok(Json(c.power_status(&mac_target(&mac)?).await?))
}

#[utoipa::path(post, path = "/boot/{mac}/power", tag = "power", operation_id = "macPowerAction",
    summary = "Power on, off, cycle, reset, or boot from the network (pxe).", params(("mac" = inline(super::boot::MacPath), Path)),
    request_body = ActionBody,
    responses((status = 200, description = "The state after.", body = PowerView)))]
async fn mac_power_action(
    Active(c): Active,
    Path(mac): Path<String>,
    J(body): J<ActionBody>,
) -> ApiResult<Json<PowerView>> {
    Ok(Json(c.power_action(&mac_target(&mac)?, body.action).await?))
}

/// Which nodes: every given field must hold.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct BulkFilter {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

/// One power action on the nodes named or matching a filter (either nodes or filter).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BulkPowerRequest)]
struct BulkBody {
    action: PowerAction,
    #[serde(default)]
    nodes: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<BulkFilter>,
}

/// Most nodes one bulk request may name.
const BULK_LIMIT: usize = 20_000;

/// Every node's outcome of one bulk power action.
#[derive(Serialize, ToSchema)]
#[schema(as = BulkPower)]
struct BulkPowerView {
    action: &'static str,
    total: usize,
    succeeded: usize,
    failed: usize,
    items: Vec<BulkResult>,
}

#[utoipa::path(post, path = "/power", tag = "power", operation_id = "bulkPower",
    summary = "One power action on many nodes (a list or a filter), rate-limited per group; every node's result.",
    request_body = BulkBody,
    responses((status = 200, description = "Per-node results.", body = BulkPowerView)))]
async fn bulk_power(Active(c): Active, J(body): J<BulkBody>) -> ApiResult<Json<BulkPowerView>> {
    let nodes: Vec<String> = match (body.nodes, body.filter) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::unprocessable(
                "give either nodes (a list of node ids) or filter ({state, group, labels})",
            ))
        }
        (Some(nodes), None) => {
            let reg = c.read();
            let unknown: Vec<&String> = nodes
                .iter()
                .filter(|n| !reg.nodes.contains_key(*n))
                .collect();
            if !unknown.is_empty() {
                return Err(ApiError::not_found(format!(
                    "no such nodes: {}",
                    unknown
                        .iter()
                        .take(20)
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            nodes
        }
        (None, Some(f)) => {
            let mut terms = Vec::new();
            if let Some(s) = &f.state {
                terms.push(format!("state:{s}"));
            }
            if let Some(g) = &f.group {
                terms.push(format!("group:{g}"));
            }
            for (k, v) in &f.labels {
                terms.push(format!("label:{k}={v}"));
            }
            if terms.iter().any(|t| t.chars().any(char::is_whitespace)) {
                return Err(ApiError::bad_request(
                    "filter: values may not contain spaces",
                ));
            }
            let filter = NodeFilter::parse(&terms.join(" ")).map_err(ApiError::bad_request)?;
            let reg = c.read();
            reg.nodes
                .values()
                .filter(|n| filter.matches(n))
                .map(|n| n.record.id.clone())
                .collect()
        }
    };
    if nodes.len() > BULK_LIMIT {
        return Err(ApiError::bad_request(format!(
            "{} nodes: at most {BULK_LIMIT} per request",
            nodes.len()
        )));
    }
    let results = c.power_bulk(body.action, nodes).await;
    let failed = results.iter().filter(|r| !r.ok).count();
    Ok(Json(BulkPowerView {
        action: crate::provisioning::power::action_name(body.action),
        total: results.len(),
        succeeded: results.len() - failed,
        failed,
        items: results,
    }))
}
