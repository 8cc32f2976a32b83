//! Simulation hooks (`glory up`, `glory sim`): cut a simulated node's power, or
//! restart it. Real deployments have no `SimControl` and these answer 404.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{Active, ApiError, ApiResult};
use crate::cluster::Cluster;
use crate::role::Node;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/sim/nodes/{id}/kill", post(sim_kill))
        .route("/sim/nodes/{id}/restart", post(sim_restart))
        .route("/sim/nodes/{id}/load", post(sim_load))
        .route(
            "/sim/nodes/{id}/processes/{name}/{action}",
            post(sim_process),
        )
}

/// Kill or start one of a simulated node's daemons (`action`: kill | start).
async fn sim_process(
    Active(cluster): Active,
    Path((id, name, action)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let sim = cluster.sim.as_ref().ok_or_else(|| {
        ApiError::not_found("simulation routes exist only in glory up / glory sim")
    })?;
    let start = match action.as_str() {
        "kill" => false,
        "start" => true,
        other => {
            return Err(ApiError::not_found(format!(
                "{other:?} is not a process action (kill, start)"
            )))
        }
    };
    if !cluster.read().nodes.contains_key(&id) {
        return Err(ApiError::not_found(format!("node {id} does not exist")));
    }
    sim.process(&id, &name, start)
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "conflict", e))?;
    Ok(Json(json!({
        "node": id,
        "process": name,
        "action": if start { "started" } else { "killed" },
    })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBody {
    cpu_percent: f64,
    #[serde(default = "sixty")]
    seconds: u64,
}

fn sixty() -> u64 {
    60
}

/// Hold a simulated node's CPU at `cpu_percent` for `seconds`.
async fn sim_load(
    Active(cluster): Active,
    Path(id): Path<String>,
    super::J(body): super::J<LoadBody>,
) -> ApiResult<Json<Value>> {
    let sim = cluster.sim.as_ref().ok_or_else(|| {
        ApiError::not_found("simulation routes exist only in glory up / glory sim")
    })?;
    if !(0.0..=100.0).contains(&body.cpu_percent) {
        return Err(ApiError::bad_request("cpu_percent: between 0 and 100"));
    }
    if !(1..=86_400).contains(&body.seconds) {
        return Err(ApiError::bad_request("seconds: between 1 and 86400"));
    }
    if !cluster.read().nodes.contains_key(&id) {
        return Err(ApiError::not_found(format!("node {id} does not exist")));
    }
    sim.load(&id, body.cpu_percent, body.seconds)
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "conflict", e))?;
    Ok(Json(
        json!({"node": id, "cpu_percent": body.cpu_percent, "seconds": body.seconds}),
    ))
}

async fn sim_action(cluster: &Cluster, id: &str, kill: bool) -> ApiResult<Json<Value>> {
    let sim = cluster.sim.as_ref().ok_or_else(|| {
        ApiError::not_found("simulation routes exist only in glory up / glory sim")
    })?;
    if !cluster.read().nodes.contains_key(id) {
        return Err(ApiError::not_found(format!("node {id} does not exist")));
    }
    let result = if kill {
        sim.kill(id).await
    } else {
        sim.restart(id).await
    };
    result.map_err(|e| ApiError::new(StatusCode::CONFLICT, "conflict", e))?;
    Ok(Json(
        json!({"node": id, "action": if kill { "killed" } else { "restarted" }}),
    ))
}

async fn sim_kill(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    sim_action(&cluster, &id, true).await
}

async fn sim_restart(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    sim_action(&cluster, &id, false).await
}
