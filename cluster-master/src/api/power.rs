//! Remote power control: BMC settings (`/nodes/{id}/bmc`, `/boot/{mac}/bmc` for
//! machines not enrolled yet), power actions and state (`/nodes/{id}/power`,
//! `/boot/{mac}/power`) and bulk actions (`/power`, rate-limited per group).

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use glory_provisioner::power::PowerAction;
use serde::Deserialize;
use serde_json::{json, Value};

use super::boot::mac_param;
use super::node_filter::NodeFilter;
use super::{Active, ApiError, ApiResult, J};
use crate::cluster::Cluster;
use crate::provisioning::power::{BmcInput, PowerFailure, PowerView};
use crate::role::Node;
use glory_keymaster::schema::BmcRecord;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route(
            "/nodes/{id}/bmc",
            get(get_node_bmc).put(put_node_bmc).delete(delete_node_bmc),
        )
        .route("/nodes/{id}/power", get(node_power).post(node_power_action))
        .route(
            "/boot/{mac}/bmc",
            get(get_mac_bmc).put(put_mac_bmc).delete(delete_mac_bmc),
        )
        .route("/boot/{mac}/power", get(mac_power).post(mac_power_action))
        .route("/power", post(bulk_power))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action: PowerAction,
}

/// The BMC settings as the API shows them: never the password, only whether one is set.
fn bmc_view(record: &BmcRecord) -> Value {
    json!({
        "driver": record.driver,
        "address": record.address,
        "port": record.port,
        "user": record.user,
        "password_set": record.password_sealed.is_some(),
        "system_id": record.system_id,
        "insecure_tls": record.insecure_tls,
        "updated_ms": record.updated_ms,
    })
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

fn power_json(v: &PowerView) -> Value {
    json!({"state": v.state, "driver": v.driver, "checked_at": v.checked_at})
}

async fn get_bmc(cluster: &Cluster, target: &str) -> ApiResult<Json<Value>> {
    let record = cluster
        .bmc_record(target)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{target} has no BMC settings")))?;
    Ok(Json(bmc_view(&record)))
}

async fn put_bmc(cluster: &Cluster, target: &str, body: BmcInput) -> ApiResult<Json<Value>> {
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

async fn get_node_bmc(Active(c): Active, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    get_bmc(&c, &known_node(&c, &id)?).await
}

async fn put_node_bmc(
    Active(c): Active,
    Path(id): Path<String>,
    J(body): J<BmcInput>,
) -> ApiResult<Json<Value>> {
    put_bmc(&c, &known_node(&c, &id)?, body).await
}

async fn delete_node_bmc(Active(c): Active, Path(id): Path<String>) -> ApiResult<StatusCode> {
    delete_bmc(&c, &known_node(&c, &id)?).await
}

async fn get_mac_bmc(Active(c): Active, Path(mac): Path<String>) -> ApiResult<Json<Value>> {
    get_bmc(&c, &mac_target(&mac)?).await
}

async fn put_mac_bmc(
    Active(c): Active,
    Path(mac): Path<String>,
    J(body): J<BmcInput>,
) -> ApiResult<Json<Value>> {
    put_bmc(&c, &mac_target(&mac)?, body).await
}

async fn delete_mac_bmc(Active(c): Active, Path(mac): Path<String>) -> ApiResult<StatusCode> {
    delete_bmc(&c, &mac_target(&mac)?).await
}

async fn node_power(Active(c): Active, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let view = c.power_status(&known_node(&c, &id)?).await?;
    Ok(Json(power_json(&view)))
}

async fn node_power_action(
    Active(c): Active,
    Path(id): Path<String>,
    J(body): J<ActionBody>,
) -> ApiResult<Json<Value>> {
    let view = c.power_action(&known_node(&c, &id)?, body.action).await?;
    Ok(Json(power_json(&view)))
}

async fn mac_power(Active(c): Active, Path(mac): Path<String>) -> ApiResult<Json<Value>> {
    let view = c.power_status(&mac_target(&mac)?).await?;
    Ok(Json(power_json(&view)))
}

async fn mac_power_action(
    Active(c): Active,
    Path(mac): Path<String>,
    J(body): J<ActionBody>,
) -> ApiResult<Json<Value>> {
    let view = c.power_action(&mac_target(&mac)?, body.action).await?;
    Ok(Json(power_json(&view)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BulkFilter {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    action: PowerAction,
    #[serde(default)]
    nodes: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<BulkFilter>,
}

/// Most nodes one bulk request may name.
const BULK_LIMIT: usize = 20_000;

async fn bulk_power(Active(c): Active, J(body): J<BulkBody>) -> ApiResult<Json<Value>> {
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
    Ok(Json(json!({
        "action": crate::provisioning::power::action_name(body.action),
        "total": results.len(),
        "succeeded": results.len() - failed,
        "failed": failed,
        "items": results,
    })))
}
