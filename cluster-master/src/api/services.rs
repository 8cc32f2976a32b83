//! Services (docs/SERVICES.md): create, change, delete, start, stop, rolling restart,
//! scale; their instances, scaling decisions and output. A tenant or component token
//! sees the services on its tenant's pools only; another tenant's service is answered
//! like one that does not exist.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use glory_service_manager::model::{InstanceState, ServiceRecord};
use glory_service_manager::spec::ServiceSpec;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Active, ApiError, ApiResult, Caller, J, Q};
use crate::cluster::Cluster;
use crate::role::Node;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/services", get(list_services).post(create_service))
        .route(
            "/services/{name}",
            get(get_service).put(replace_service).delete(delete_service),
        )
        .route("/services/{name}/start", post(start))
        .route("/services/{name}/stop", post(stop))
        .route("/services/{name}/restart", post(restart))
        .route("/services/{name}/scale", post(scale))
        .route("/services/{name}/instances", get(instances))
        .route("/services/{name}/scaling", get(scaling))
        .route("/services/{name}/logs", get(logs))
}

/// The service, if the caller may see it.
fn visible(cluster: &Cluster, caller: &Caller, name: &str) -> ApiResult<ServiceRecord> {
    cluster
        .services
        .get(name)
        .filter(|r| caller.sees(&r.tenant))
        .ok_or_else(|| ApiError::not_found(format!("service {name} does not exist")))
}

/// What the caller may create: a pool it sees, a command (packages come with
/// provisioning part 2).
fn check_spec(cluster: &Cluster, caller: &Caller, spec: &ServiceSpec) -> ApiResult<()> {
    spec.validate().map_err(|e| match e.rule {
        true => ApiError::unprocessable(e.to_string()),
        false => ApiError::bad_request(e.to_string()),
    })?;
    if spec.package.is_some() {
        return Err(ApiError::unprocessable(
            "package: software streaming is not available yet (provisioning part 2); give a command",
        ));
    }
    super::pools::visible_pool(cluster, caller, &spec.pool)
        .map_err(|_| ApiError::unprocessable(format!("pool: pool {} does not exist", spec.pool)))?;
    Ok(())
}

fn service_view(cluster: &Cluster, r: &ServiceRecord) -> Value {
    let views = cluster.instance_views(r);
    let count = |s: InstanceState| views.iter().filter(|v| v.state == s).count();
    let balancer = r.spec.balancer.as_ref().map(|b| {
        let status = cluster.services.balancers.status(&r.spec.name);
        json!({
            "listen": b.listen.to_string(),
            "algorithm": b.algorithm,
            "driver": b.driver,
            "serving": status.as_ref().map_or(0, |s| s.serving),
            "error": status.as_ref().and_then(|s| s.error.clone()),
            "requests_per_sec": status.as_ref().and_then(|s| s.rate),
        })
    });
    json!({
        "name": r.spec.name,
        "pool": r.spec.pool,
        "tenant": r.tenant,
        "spec": r.spec,
        "desired": r.desired,
        "stopped": r.stopped,
        "healthy": count(InstanceState::Healthy),
        "starting": count(InstanceState::Starting),
        "unhealthy": count(InstanceState::Unhealthy) + count(InstanceState::Failed),
        "stopping": count(InstanceState::Stopping),
        "restarting": r.restart.as_ref().map(|rr| json!({"since": rr.started_ms, "pending": rr.pending})),
        "balancer": balancer,
        "created_ms": r.created_ms,
    })
}

async fn list_services(Active(cluster): Active, caller: Caller) -> Json<Value> {
    let items: Vec<Value> = cluster
        .services
        .all()
        .iter()
        .filter(|r| caller.sees(&r.tenant))
        .map(|r| service_view(&cluster, r))
        .collect();
    Json(json!({"items": items, "total": items.len()}))
}

async fn create_service(
    Active(cluster): Active,
    caller: Caller,
    J(spec): J<ServiceSpec>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_spec(&cluster, &caller, &spec)?;
    let record = cluster.create_service(spec).await?;
    Ok((StatusCode::CREATED, Json(service_view(&cluster, &record))))
}

async fn get_service(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let r = visible(&cluster, &caller, &name)?;
    Ok(Json(service_view(&cluster, &r)))
}

async fn replace_service(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
    J(spec): J<ServiceSpec>,
) -> ApiResult<Json<Value>> {
    visible(&cluster, &caller, &name)?;
    if spec.name != name {
        return Err(ApiError::bad_request(format!(
            "name: {:?} is not the service {name} (a service cannot be renamed)",
            spec.name
        )));
    }
    check_spec(&cluster, &caller, &spec)?;
    let record = cluster.replace_service(spec).await?;
    Ok(Json(service_view(&cluster, &record)))
}

async fn delete_service(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    visible(&cluster, &caller, &name)?;
    cluster.delete_service(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn action(
    cluster: Arc<Cluster>,
    caller: Caller,
    name: String,
    what: &str,
    desired: Option<u32>,
) -> ApiResult<Json<Value>> {
    visible(&cluster, &caller, &name)?;
    let record = cluster.service_action(&name, what, desired).await?;
    Ok(Json(service_view(&cluster, &record)))
}

async fn start(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    action(cluster, caller, name, "start", None).await
}

async fn stop(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    action(cluster, caller, name, "stop", None).await
}

async fn restart(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    action(cluster, caller, name, "restart", None).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scale {
    desired: u32,
}

async fn scale(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
    J(body): J<Scale>,
) -> ApiResult<Json<Value>> {
    action(cluster, caller, name, "scale", Some(body.desired)).await
}

async fn instances(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let r = visible(&cluster, &caller, &name)?;
    let items: Vec<Value> = cluster
        .instance_views(&r)
        .into_iter()
        .map(|v| {
            json!({
                "id": v.id,
                "node": v.node,
                "address": v.address,
                "port": v.port,
                "state": v.state.as_str(),
                "reason": v.reason,
                "since": v.since_ms,
                "restarts": v.restarts,
                "epoch": v.epoch,
                "pid": v.pid,
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "total": items.len()})))
}

async fn scaling(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let r = visible(&cluster, &caller, &name)?;
    let items = cluster.services.decisions(&name);
    Ok(Json(json!({
        "policy": r.spec.scaling,
        "desired": r.desired,
        "items": items,
        "total": items.len(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default)]
    instance: Option<String>,
}

async fn logs(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
    Q(q): Q<LogsQuery>,
) -> ApiResult<Json<Value>> {
    let r = visible(&cluster, &caller, &name)?;
    let views = cluster.instance_views(&r);
    if let Some(id) = &q.instance {
        if !views.iter().any(|v| &v.id == id) {
            return Err(ApiError::not_found(format!(
                "service {name} has no instance {id}"
            )));
        }
    }
    let items: Vec<Value> = views
        .into_iter()
        .filter(|v| q.instance.as_ref().is_none_or(|i| i == &v.id))
        .map(|v| json!({"instance": v.id, "node": v.node, "state": v.state.as_str(), "lines": v.output}))
        .collect();
    Ok(Json(json!({"items": items})))
}
