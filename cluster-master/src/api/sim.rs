//! Simulation hooks (`glory up`, `glory sim`): cut a simulated node's power, or
//! restart it. Real deployments have no `SimControl` and these answer 404.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Active, ApiError, ApiResult};
use crate::cluster::Cluster;
use crate::role::Node;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(sim_kill))
        .routes(routes!(sim_restart))
        .routes(routes!(sim_load))
        .routes(routes!(sim_process))
}

/// What to do to a simulated node's daemon.
#[derive(Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "lowercase")]
enum ProcessAction {
    Kill,
    Start,
}

impl ProcessAction {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "kill" => Some(ProcessAction::Kill),
            "start" => Some(ProcessAction::Start),
            _ => None,
        }
    }
}

/// What was done to a simulated node or its daemon.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum SimDone {
    Killed,
    Restarted,
    Started,
}

#[derive(Serialize, ToSchema)]
struct SimProcess {
    node: String,
    process: String,
    /// `killed` or `started`.
    action: SimDone,
}

/// Kill or start one of a simulated node's daemons (`action`: kill | start).
#[utoipa::path(post, path = "/sim/nodes/{id}/processes/{name}/{action}", tag = "sim",
    operation_id = "simProcess",
    summary = "Kill or start one of a simulated node's daemons (glory up, glory sim).",
    params(("id" = String, Path, description = "Node id."),
        ("name" = String, Path, description = "sshd, chronyd or glory-node-agent."),
        ("action" = inline(ProcessAction), Path)),
    responses((status = 200, description = "Done.", body = SimProcess)))]
async fn sim_process(
    Active(cluster): Active,
    Path((id, name, action)): Path<(String, String, String)>,
) -> ApiResult<Json<SimProcess>> {
    let sim = cluster.sim.as_ref().ok_or_else(|| {
        ApiError::not_found("simulation routes exist only in glory up / glory sim")
    })?;
    let start = match ProcessAction::parse(&action) {
        Some(action) => action == ProcessAction::Start,
        None => {
            return Err(ApiError::not_found(format!(
                "{action:?} is not a process action (kill, start)"
            )))
        }
    };
    if !cluster.read().nodes.contains_key(&id) {
        return Err(ApiError::not_found(format!("node {id} does not exist")));
    }
    sim.process(&id, &name, start)
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "conflict", e))?;
    Ok(Json(SimProcess {
        node: id,
        process: name,
        action: if start {
            SimDone::Started
        } else {
            SimDone::Killed
        },
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SimLoadRequest)]
struct LoadBody {
    #[schema(minimum = 0, maximum = 100)]
    cpu_percent: f64,
    #[serde(default = "sixty")]
    #[schema(minimum = 1, maximum = 86400, default = 60)]
    seconds: u64,
}

fn sixty() -> u64 {
    60
}

#[derive(Serialize, ToSchema)]
struct SimLoad {
    node: String,
    cpu_percent: f64,
    seconds: u64,
}

/// Hold a simulated node's CPU at `cpu_percent` for `seconds`.
#[utoipa::path(post, path = "/sim/nodes/{id}/load", tag = "sim", operation_id = "simLoad",
    summary = "Hold a simulated node's CPU for a while (glory up, glory sim).",
    params(("id" = String, Path, description = "Node id.")),
    request_body = LoadBody,
    responses((status = 200, description = "Done.", body = SimLoad)))]
async fn sim_load(
    Active(cluster): Active,
    Path(id): Path<String>,
    super::J(body): super::J<LoadBody>,
) -> ApiResult<Json<SimLoad>> {
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
    Ok(Json(SimLoad {
        node: id,
        cpu_percent: body.cpu_percent,
        seconds: body.seconds,
    }))
}

#[derive(Serialize, ToSchema)]
struct SimAction {
    node: String,
    /// `killed` or `restarted`.
    action: SimDone,
}

async fn sim_action(cluster: &Cluster, id: &str, kill: bool) -> ApiResult<Json<SimAction>> {
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
    Ok(Json(SimAction {
        node: id.to_string(),
        action: if kill {
            SimDone::Killed
        } else {
            SimDone::Restarted
        },
    }))
}

#[utoipa::path(post, path = "/sim/nodes/{id}/kill", tag = "sim", operation_id = "simKillNode",
    summary = "Cut a simulated node's power (simulations only).",
    description = "404 outside simulations (`glory up`, `glory sim`) and for unknown nodes; 409 when the node is not running or not a simulated agent.",
    params(("id" = String, Path, description = "Node id.")),
    responses((status = 200, description = "Killed.", body = SimAction)))]
async fn sim_kill(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Json<SimAction>> {
    sim_action(&cluster, &id, true).await
}

#[utoipa::path(post, path = "/sim/nodes/{id}/restart", tag = "sim",
    operation_id = "simRestartNode",
    summary = "Restart a killed simulated node (simulations only).",
    description = "404 outside simulations (`glory up`, `glory sim`) and for unknown nodes; 409 when the node is already running or not a simulated agent.",
    params(("id" = String, Path, description = "Node id.")),
    responses((status = 200, description = "Restarted.", body = SimAction)))]
async fn sim_restart(
    Active(cluster): Active,
    Path(id): Path<String>,
) -> ApiResult<Json<SimAction>> {
    sim_action(&cluster, &id, false).await
}
