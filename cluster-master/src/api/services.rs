//! Services (docs/SERVICES.md): create, change, delete, start, stop, rolling restart,
//! scale; their instances, scaling decisions and output. A tenant or component token
//! sees the services on its tenant's pools only; another tenant's service is answered
//! like one that does not exist.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use glory_service_manager::autoscale::Decision;
use glory_service_manager::model::{InstanceState, ServiceRecord};
use glory_service_manager::spec::{Algorithm, BalancerDriver, Scaling, ServiceSpec};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::Schema;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Active, ApiError, ApiResult, Caller, J, Q};
use crate::cluster::Cluster;
use crate::role::Node;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(list_services, create_service))
        .routes(routes!(get_service, replace_service, delete_service))
        .routes(routes!(start))
        .routes(routes!(stop))
        .routes(routes!(restart))
        .routes(routes!(scale))
        .routes(routes!(instances))
        .routes(routes!(scaling))
        .routes(routes!(logs))
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

/// A rolling restart under way.
#[derive(Serialize, ToSchema)]
struct Restarting {
    since: u64,
    /// Instance ids still to restart.
    pending: Vec<String>,
}

/// A service's L4 balancer and what it does now.
#[derive(Serialize, ToSchema)]
struct BalancerView {
    listen: String,
    algorithm: Algorithm,
    driver: BalancerDriver,
    /// Backends it sends to.
    serving: usize,
    #[schema(required = true)]
    error: Option<String>,
    #[schema(required = true)]
    requests_per_sec: Option<f64>,
}

/// A service and its instances' counts.
#[derive(Serialize, ToSchema)]
#[schema(as = Service)]
struct ServiceView {
    name: String,
    pool: String,
    tenant: String,
    /// The spec as stored, defaults filled in.
    spec: ServiceSpec,
    desired: u32,
    stopped: bool,
    healthy: usize,
    starting: usize,
    /// Unhealthy or failed instances (being replaced).
    unhealthy: usize,
    stopping: usize,
    #[schema(required = true)]
    restarting: Option<Restarting>,
    #[schema(required = true)]
    balancer: Option<BalancerView>,
    created_ms: u64,
}

fn service_view(cluster: &Cluster, r: &ServiceRecord) -> ServiceView {
    let views = cluster.instance_views(r);
    let count = |s: InstanceState| views.iter().filter(|v| v.state == s).count();
    let balancer = r.spec.balancer.as_ref().map(|b| {
        let status = cluster.services.balancers.status(&r.spec.name);
        BalancerView {
            listen: b.listen.to_string(),
            algorithm: b.algorithm,
            driver: b.driver,
            serving: status.as_ref().map_or(0, |s| s.serving),
            error: status.as_ref().and_then(|s| s.error.clone()),
            requests_per_sec: status.as_ref().and_then(|s| s.rate),
        }
    });
    ServiceView {
        name: r.spec.name.clone(),
        pool: r.spec.pool.clone(),
        tenant: r.tenant.clone(),
        spec: r.spec.clone(),
        desired: r.desired,
        stopped: r.stopped,
        healthy: count(InstanceState::Healthy),
        starting: count(InstanceState::Starting),
        unhealthy: count(InstanceState::Unhealthy) + count(InstanceState::Failed),
        stopping: count(InstanceState::Stopping),
        restarting: r.restart.as_ref().map(|rr| Restarting {
            since: rr.started_ms,
            pending: rr.pending.clone(),
        }),
        balancer,
        created_ms: r.created_ms,
    }
}

#[derive(Serialize, ToSchema)]
struct ServiceList {
    items: Vec<ServiceView>,
    total: usize,
}

#[utoipa::path(get, path = "/services", tag = "services", operation_id = "listServices",
    summary = "List the services the caller may see.",
    responses((status = 200, description = "The visible services.", body = ServiceList)))]
async fn list_services(Active(cluster): Active, caller: Caller) -> Json<ServiceList> {
    let items: Vec<ServiceView> = cluster
        .services
        .all()
        .iter()
        .filter(|r| caller.sees(&r.tenant))
        .map(|r| service_view(&cluster, r))
        .collect();
    Json(ServiceList {
        total: items.len(),
        items,
    })
}

#[utoipa::path(post, path = "/services", tag = "services", operation_id = "createService",
    summary = "Create a service on a pool the caller sees.",
    description = "400 names the field that is wrong (an unknown pool is `pool`); 409 when the service exists or its balancer address is another service's.",
    request_body(content = ServiceSpec, example = json!({"name": "web", "pool": "analytics-db",
        "command": ["python3", "-m", "http.server", "{port}"], "port": 0,
        "health": {"kind": "http", "path": "/", "interval_seconds": 5},
        "instances": {"min": 1, "max": 4, "desired": 2}})),
    responses((status = 201, description = "The service.", body = ServiceView, links(
        ("GetService" = (operation_id = "getService", parameters(("name" = "$response.body#/name")))),
        ("ReplaceService" = (operation_id = "replaceService", parameters(("name" = "$response.body#/name")))),
        ("DeleteService" = (operation_id = "deleteService", parameters(("name" = "$response.body#/name")))),
        ("StartService" = (operation_id = "startService", parameters(("name" = "$response.body#/name")))),
        ("StopService" = (operation_id = "stopService", parameters(("name" = "$response.body#/name")))),
        ("RestartService" = (operation_id = "restartService", parameters(("name" = "$response.body#/name")))),
        ("ScaleService" = (operation_id = "scaleService", parameters(("name" = "$response.body#/name")))),
        ("ListServiceInstances" = (operation_id = "listServiceInstances", parameters(("name" = "$response.body#/name")))),
        ("ListScalingDecisions" = (operation_id = "listScalingDecisions", parameters(("name" = "$response.body#/name")))),
        ("ServiceLogs" = (operation_id = "serviceLogs", parameters(("name" = "$response.body#/name")))),
    ))))]
async fn create_service(
    Active(cluster): Active,
    caller: Caller,
    J(spec): J<ServiceSpec>,
) -> ApiResult<(StatusCode, Json<ServiceView>)> {
    check_spec(&cluster, &caller, &spec)?;
    let record = cluster.create_service(spec).await?;
    Ok((StatusCode::CREATED, Json(service_view(&cluster, &record))))
}

#[utoipa::path(get, path = "/services/{name}", tag = "services", operation_id = "getService",
    summary = "One service.", params(("name" = String, Path, description = "The service's name.")),
    responses((status = 200, description = "The service.", body = ServiceView)))]
async fn get_service(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<ServiceView>> {
    let r = visible(&cluster, &caller, &name)?;
    Ok(Json(service_view(&cluster, &r)))
}

#[utoipa::path(put, path = "/services/{name}", tag = "services", operation_id = "replaceService",
    summary = "Replace a service's spec.",
    description = "A changed command, env, port or health means a rolling restart; the pool and name cannot change (400).",
    params(("name" = String, Path, description = "The service's name.")), request_body = ServiceSpec,
    responses((status = 200, description = "The service.", body = ServiceView)))]
async fn replace_service(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
    J(spec): J<ServiceSpec>,
) -> ApiResult<Json<ServiceView>> {
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

#[utoipa::path(delete, path = "/services/{name}", tag = "services", operation_id = "deleteService",
    summary = "Delete a service: its instances are stopped, its balancer closed.", params(("name" = String, Path, description = "The service's name.")),
    responses((status = 204, description = "Deleted.")))]
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
) -> ApiResult<Json<ServiceView>> {
    visible(&cluster, &caller, &name)?;
    let record = cluster.service_action(&name, what, desired).await?;
    Ok(Json(service_view(&cluster, &record)))
}

#[utoipa::path(post, path = "/services/{name}/start", tag = "services", operation_id = "startService",
    summary = "Start a stopped service (its instances come back where they were).", params(("name" = String, Path, description = "The service's name.")),
    responses((status = 200, description = "The service.", body = ServiceView)))]
async fn start(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<ServiceView>> {
    action(cluster, caller, name, "start", None).await
}

#[utoipa::path(post, path = "/services/{name}/stop", tag = "services", operation_id = "stopService",
    summary = "Stop a service: instances stop, placements are kept.", params(("name" = String, Path, description = "The service's name.")),
    responses((status = 200, description = "The service.", body = ServiceView)))]
async fn stop(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<ServiceView>> {
    action(cluster, caller, name, "stop", None).await
}

#[utoipa::path(post, path = "/services/{name}/restart", tag = "services", operation_id = "restartService",
    summary = "Rolling restart: one instance at a time, each new one healthy before the next old one goes.", params(("name" = String, Path, description = "The service's name.")),
    responses((status = 200, description = "The service.", body = ServiceView)))]
async fn restart(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<ServiceView>> {
    action(cluster, caller, name, "restart", None).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ScaleRequest)]
struct Scale {
    #[schema(maximum = 10000)]
    desired: u32,
}

#[utoipa::path(post, path = "/services/{name}/scale", tag = "services", operation_id = "scaleService",
    summary = "Set the instance count (within min and max; the autoscaler may change it again).",
    params(("name" = String, Path, description = "The service's name.")), request_body = Scale,
    responses((status = 200, description = "The service.", body = ServiceView)))]
async fn scale(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
    J(body): J<Scale>,
) -> ApiResult<Json<ServiceView>> {
    action(cluster, caller, name, "scale", Some(body.desired)).await
}

/// An instance's state.
fn instance_state() -> Schema {
    use InstanceState::*;
    let all = [Starting, Healthy, Unhealthy, Stopping, Stopped, Failed];
    super::openapi::string_enum(all.map(InstanceState::as_str))
}

/// One instance of a service.
#[derive(Serialize, ToSchema)]
#[schema(as = ServiceInstance)]
struct InstanceView {
    id: String,
    node: String,
    #[schema(required = true)]
    address: Option<String>,
    #[schema(required = true)]
    port: Option<u16>,
    #[schema(schema_with = instance_state)]
    state: &'static str,
    reason: String,
    since: u64,
    restarts: u32,
    epoch: u64,
    /// The process on its node, while it runs.
    #[schema(required = true)]
    pid: Option<u32>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = ServiceInstanceList)]
struct InstanceList {
    items: Vec<InstanceView>,
    total: usize,
}

#[utoipa::path(get, path = "/services/{name}/instances", tag = "services",
    operation_id = "listServiceInstances",
    summary = "A service's instances and their states.", params(("name" = String, Path, description = "The service's name.")),
    responses((status = 200, description = "The instances.", body = InstanceList)))]
async fn instances(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<InstanceList>> {
    let r = visible(&cluster, &caller, &name)?;
    let items: Vec<InstanceView> = cluster
        .instance_views(&r)
        .into_iter()
        .map(|v| InstanceView {
            id: v.id,
            node: v.node,
            address: v.address,
            port: v.port,
            state: v.state.as_str(),
            reason: v.reason,
            since: v.since_ms,
            restarts: v.restarts,
            epoch: v.epoch,
            pid: v.pid,
        })
        .collect();
    Ok(Json(InstanceList {
        total: items.len(),
        items,
    }))
}

/// The autoscaler's policy and recent decisions.
#[derive(Serialize, ToSchema)]
struct ScalingList {
    #[schema(required = true)]
    policy: Option<Scaling>,
    desired: u32,
    items: Vec<Decision>,
    total: usize,
}

#[utoipa::path(get, path = "/services/{name}/scaling", tag = "services",
    operation_id = "listScalingDecisions",
    summary = "The autoscaler's recent decisions with their inputs (kept in the active master's memory).",
    params(("name" = String, Path, description = "The service's name.")),
    responses((status = 200, description = "The decisions, oldest first.", body = ScalingList)))]
async fn scaling(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<ScalingList>> {
    let r = visible(&cluster, &caller, &name)?;
    let items = cluster.services.decisions(&name);
    Ok(Json(ScalingList {
        policy: r.spec.scaling,
        desired: r.desired,
        total: items.len(),
        items,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LogsQuery {
    /// Only this instance.
    #[serde(default)]
    instance: Option<String>,
}

/// The last lines an instance wrote.
#[derive(Serialize, ToSchema)]
struct InstanceLog {
    instance: String,
    node: String,
    state: &'static str,
    lines: Vec<String>,
}

#[derive(Serialize, ToSchema)]
struct ServiceLogs {
    items: Vec<InstanceLog>,
}

#[utoipa::path(get, path = "/services/{name}/logs", tag = "services", operation_id = "serviceLogs",
    summary = "The last lines each instance wrote.",
    params(("name" = String, Path, description = "The service's name."), LogsQuery),
    responses((status = 200, description = "Lines per instance.", body = ServiceLogs)))]
async fn logs(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
    Q(q): Q<LogsQuery>,
) -> ApiResult<Json<ServiceLogs>> {
    let r = visible(&cluster, &caller, &name)?;
    let views = cluster.instance_views(&r);
    if let Some(id) = &q.instance {
        if !views.iter().any(|v| &v.id == id) {
            return Err(ApiError::not_found(format!(
                "service {name} has no instance {id}"
            )));
        }
    }
    let items: Vec<InstanceLog> = views
        .into_iter()
        .filter(|v| q.instance.as_ref().is_none_or(|i| i == &v.id))
        .map(|v| InstanceLog {
            instance: v.id,
            node: v.node,
            state: v.state.as_str(),
            lines: v.output,
        })
        .collect();
    Ok(Json(ServiceLogs { items }))
}
