//! Monitoring: monitors (changed at run time, pushed to the group masters), alerts,
//! silences, and a node's history (from its group master).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use glory_keymaster::schema::{
    MonitorRecord, MonitorScope, ProcessMatchRecord, RuleRecord, SilenceMatchers,
};
use glory_protocol::monitoring::{Point, SeriesKey};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{AllOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::{Ref, RefOr, Schema};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{array_of, named, nullable, string_enum};
use super::{Active, ApiError, ApiResult, J, Q};
use crate::monitoring::Alert;
use crate::role::Node;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(list_monitors, create_monitor))
        .routes(routes!(get_monitor, replace_monitor, delete_monitor))
        .routes(routes!(list_alerts))
        .routes(routes!(ack_alert))
        .routes(routes!(list_silences, create_silence))
        .routes(routes!(delete_silence))
        .routes(routes!(node_metrics))
        .routes(routes!(group_metrics))
        .routes(routes!(cluster_metrics))
}

// A monitor's scope, rules and process match and a silence's matchers are key master
// records whose serde shapes (a scope is an enum with exactly one key) keep
// hand-written schemas in openapi_shared.json, referenced here by name, as is the list of
// metric items (filled in from the monitor crate).
fn scope_schema() -> RefOr<Schema> {
    named("MonitorScope")
}

fn match_schema() -> RefOr<Schema> {
    named("ProcessMatch")
}

fn matchers_schema() -> RefOr<Schema> {
    named("SilenceMatchers")
}

fn nullable_match() -> Schema {
    Schema::OneOf(nullable("ProcessMatch").build())
}

fn item_schema() -> Schema {
    Schema::AllOf(
        AllOfBuilder::new()
            .item(Ref::from_schema_name("MetricItem"))
            .description(Some(
                "Metric monitors (required): cpu.percent, load.1, mem.used_bytes, \
                 disk.used_percent, net.rx_bytes, ... Process monitors: proc.alive \
                 (default), proc.count, proc.cpu_percent, proc.rss_bytes, proc.threads, \
                 proc.fds, proc.restarts. Checks: check.status (default).",
            ))
            .build(),
    )
}

fn rules_schema() -> Schema {
    Schema::Array(
        array_of("MonitorRule")
            .min_items(Some(1))
            .max_items(Some(8))
            .description(Some(
                "Required for metric monitors. Default for process monitors: critical when \
                 proc.alive < 1; for checks: warning when check.status == 1, critical when >= 2.",
            ))
            .build(),
    )
}

fn stored_rules() -> Schema {
    Schema::Array(array_of("MonitorRule").build())
}

fn command_schema() -> Schema {
    let argv = ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String));
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(argv)
            .description(Some(
                "Checks: program and arguments, or one string run by sh -c. Exit codes: 0 \
                 ok, 1 warning, 2 critical, 3 unknown.",
            ))
            .build(),
    )
}

fn kinds() -> Schema {
    string_enum(["metric", "process", "check"])
}

fn levels() -> Schema {
    string_enum(["info", "warning", "critical"])
}

fn alert_states() -> Schema {
    string_enum(["pending", "firing", "resolved"])
}

/// A monitor.
#[derive(Serialize, ToSchema)]
#[schema(as = Monitor)]
struct MonitorView {
    name: String,
    #[schema(schema_with = scope_schema)]
    scope: MonitorScope,
    #[schema(schema_with = kinds)]
    kind: String,
    item: String,
    labels: BTreeMap<String, String>,
    interval_seconds: u64,
    #[schema(schema_with = stored_rules)]
    rules: Vec<RuleRecord>,
    #[serde(rename = "match")]
    #[schema(schema_with = nullable_match, required = true)]
    process_match: Option<ProcessMatchRecord>,
    #[schema(required = true)]
    command: Option<Vec<String>>,
    #[schema(required = true)]
    timeout_seconds: Option<u64>,
    created_ms: u64,
    updated_ms: u64,
}

fn monitor_view(m: &MonitorRecord) -> MonitorView {
    MonitorView {
        name: m.name.clone(),
        scope: m.scope.clone(),
        kind: m.kind.clone(),
        item: m.item.clone(),
        labels: m.labels.clone(),
        interval_seconds: m.interval_seconds,
        rules: m.rules.clone(),
        process_match: m.process_match.clone(),
        command: m.command.clone(),
        timeout_seconds: m.timeout_seconds,
        created_ms: m.created_ms,
        updated_ms: m.updated_ms,
    }
}

#[derive(Serialize, ToSchema)]
struct MonitorList {
    total: usize,
    items: Vec<MonitorView>,
}

/// A monitor as the API takes it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MonitorRequest)]
struct MonitorBody {
    /// Required on POST; on PUT, the name in the path.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    name: Option<String>,
    #[schema(schema_with = scope_schema)]
    scope: MonitorScope,
    #[serde(default = "metric")]
    #[schema(schema_with = kinds)]
    kind: String,
    /// Required for metric monitors; process monitors and checks have a default.
    #[serde(default)]
    #[schema(schema_with = item_schema)]
    item: String,
    /// Only series with these labels (`*`: any value).
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default = "five")]
    #[schema(minimum = 1, maximum = 3600, default = 5)]
    interval_seconds: u64,
    /// Required for metric monitors; process monitors and checks have defaults.
    #[serde(default)]
    #[schema(schema_with = rules_schema)]
    rules: Vec<RuleRecord>,
    #[serde(default, rename = "match")]
    #[schema(schema_with = match_schema)]
    process_match: Option<ProcessMatchRecord>,
    #[serde(default)]
    #[schema(schema_with = command_schema)]
    command: Option<CommandBody>,
    /// Checks: killed and unknown after this long.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 300, default = 10)]
    timeout_seconds: Option<u64>,
}

/// A check's command: arguments, or one string run by `sh -c`.
#[derive(Deserialize)]
#[serde(untagged)]
enum CommandBody {
    Argv(Vec<String>),
    Shell(String),
}

impl CommandBody {
    fn argv(self) -> Vec<String> {
        match self {
            CommandBody::Argv(argv) => argv,
            CommandBody::Shell(line) => vec!["sh".into(), "-c".into(), line],
        }
    }
}

fn metric() -> String {
    "metric".to_string()
}

fn five() -> u64 {
    5
}

impl MonitorBody {
    fn record(self, name: String) -> MonitorRecord {
        MonitorRecord {
            v: 0,
            name,
            scope: self.scope,
            kind: self.kind,
            item: self.item,
            labels: self.labels,
            interval_seconds: self.interval_seconds,
            rules: self.rules,
            process_match: self.process_match,
            command: self.command.map(CommandBody::argv),
            timeout_seconds: self.timeout_seconds,
            created_ms: 0,
            updated_ms: 0,
        }
    }
}

#[utoipa::path(get, path = "/monitors", tag = "monitoring", operation_id = "listMonitors",
    summary = "Every monitor.",
    responses((status = 200, description = "Monitors.", body = MonitorList)))]
async fn list_monitors(Active(cluster): Active) -> Json<MonitorList> {
    let items: Vec<MonitorView> = cluster
        .monitoring
        .monitors()
        .values()
        .map(monitor_view)
        .collect();
    Json(MonitorList {
        total: items.len(),
        items,
    })
}

#[utoipa::path(post, path = "/monitors", tag = "monitoring", operation_id = "createMonitor",
    summary = "Create a monitor; it reaches the group masters in scope at once.",
    request_body(content = MonitorBody, example = json!({"name": "hot-cpu", "scope": {"all": true},
        "kind": "metric", "item": "cpu.percent",
        "rules": [{"level": "warning", "op": ">", "threshold": 90, "for_seconds": 60}]})),
    responses((status = 201, description = "The monitor.", body = MonitorView, links(
        ("GetMonitor" = (operation_id = "getMonitor", parameters(("name" = "$response.body#/name")))),
        ("ReplaceMonitor" = (operation_id = "replaceMonitor", parameters(("name" = "$response.body#/name")))),
        ("DeleteMonitor" = (operation_id = "deleteMonitor", parameters(("name" = "$response.body#/name")))),
    ))))]
async fn create_monitor(
    Active(cluster): Active,
    J(body): J<MonitorBody>,
) -> ApiResult<(StatusCode, Json<MonitorView>)> {
    let name = body
        .name
        .clone()
        // One schema serves POST and PUT (where the path names the monitor): its
        // `name` is optional there, so a POST without one breaks a rule it cannot state.
        .ok_or_else(|| ApiError::unprocessable("name: required when creating a monitor"))?;
    let m = cluster.put_monitor(body.record(name), true).await?;
    Ok((StatusCode::CREATED, Json(monitor_view(&m))))
}

#[utoipa::path(get, path = "/monitors/{name}", tag = "monitoring", operation_id = "getMonitor",
    summary = "One monitor.", params(("name" = String, Path, description = "Monitor name.", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses((status = 200, description = "The monitor.", body = MonitorView)))]
async fn get_monitor(
    Active(cluster): Active,
    Path(name): Path<String>,
) -> ApiResult<Json<MonitorView>> {
    let monitors = cluster.monitoring.monitors();
    let m = monitors
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("monitor {name} does not exist")))?;
    Ok(Json(monitor_view(m)))
}

#[utoipa::path(put, path = "/monitors/{name}", tag = "monitoring", operation_id = "replaceMonitor",
    summary = "Replace a monitor.", params(("name" = String, Path, description = "Monitor name.", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")), request_body = MonitorBody,
    responses((status = 200, description = "The monitor.", body = MonitorView)))]
async fn replace_monitor(
    Active(cluster): Active,
    Path(name): Path<String>,
    J(body): J<MonitorBody>,
) -> ApiResult<Json<MonitorView>> {
    if body.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::unprocessable(
            "name: differs from the monitor in the path (monitors cannot be renamed)",
        ));
    }
    let m = cluster.put_monitor(body.record(name), false).await?;
    Ok(Json(monitor_view(&m)))
}

#[utoipa::path(delete, path = "/monitors/{name}", tag = "monitoring", operation_id = "deleteMonitor",
    summary = "Delete a monitor; its alerts resolve.", params(("name" = String, Path, description = "Monitor name.", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses((status = 204, description = "Deleted.")))]
async fn delete_monitor(
    Active(cluster): Active,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    cluster.delete_monitor(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An alert: a monitor's rule holding on a node or a group.
#[derive(Serialize, ToSchema)]
struct AlertView {
    id: String,
    monitor: String,
    /// None for a group rule.
    #[schema(required = true)]
    node: Option<String>,
    group: String,
    labels: BTreeMap<String, String>,
    #[schema(schema_with = levels)]
    level: &'static str,
    #[schema(schema_with = alert_states)]
    state: &'static str,
    #[schema(required = true)]
    value: Option<f64>,
    /// ms since the epoch the alert entered its state.
    since: u64,
    acked: bool,
    /// What else the node said, e.g. a check's output (first 4 KiB).
    #[schema(required = true)]
    detail: Option<String>,
    silenced: bool,
}

fn alert_view(a: &Alert, silenced: bool) -> AlertView {
    AlertView {
        id: a.id.clone(),
        monitor: a.key.monitor.clone(),
        node: a.key.node.clone(),
        group: a.group.clone(),
        labels: a.key.labels.iter().cloned().collect(),
        level: a.key.level.as_str(),
        state: a.state.as_str(),
        value: Some(a.value).filter(|v| v.is_finite()),
        since: a.since_ms,
        acked: a.acked,
        detail: a.detail.clone(),
        silenced,
    }
}

#[derive(Serialize, ToSchema)]
struct AlertPage {
    items: Vec<AlertView>,
    total: usize,
    /// Pass as `after` for the next page.
    #[schema(required = true)]
    next: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AlertQuery {
    #[param(schema_with = alert_states)]
    state: Option<String>,
    #[param(schema_with = levels)]
    level: Option<String>,
    group: Option<String>,
    node: Option<String>,
    #[serde(default = "hundred")]
    #[param(minimum = 1, maximum = 1000)]
    limit: usize,
    /// The `next` of the previous page.
    #[serde(default)]
    after: usize,
}

fn hundred() -> usize {
    100
}

#[utoipa::path(get, path = "/alerts", tag = "monitoring", operation_id = "listAlerts",
    summary = "Alerts: active (most severe, oldest first), then recently resolved.",
    params(AlertQuery),
    responses((status = 200, description = "A page of alerts.", body = AlertPage)))]
async fn list_alerts(Active(cluster): Active, Q(q): Q<AlertQuery>) -> ApiResult<Json<AlertPage>> {
    if let Some(state) = &q.state {
        if !["pending", "firing", "resolved"].contains(&state.as_str()) {
            return Err(ApiError::bad_request(format!(
                "state: {state:?} is not pending, firing or resolved"
            )));
        }
    }
    if let Some(level) = &q.level {
        if !["info", "warning", "critical"].contains(&level.as_str()) {
            return Err(ApiError::bad_request(format!(
                "level: {level:?} is not info, warning or critical"
            )));
        }
    }
    if !(1..=1000).contains(&q.limit) {
        return Err(ApiError::bad_request("limit: between 1 and 1000"));
    }
    let now = glory_protocol::now_ms();
    let matching: Vec<Alert> = cluster
        .monitoring
        .alerts()
        .list()
        .into_iter()
        .filter(|a| q.state.as_deref().is_none_or(|s| s == a.state.as_str()))
        .filter(|a| q.level.as_deref().is_none_or(|l| l == a.key.level.as_str()))
        .filter(|a| q.group.as_deref().is_none_or(|g| g == a.group))
        .filter(|a| {
            q.node
                .as_deref()
                .is_none_or(|n| Some(n) == a.key.node.as_deref())
        })
        .collect();
    let total = matching.len();
    let items: Vec<AlertView> = matching
        .iter()
        .skip(q.after)
        .take(q.limit)
        .map(|a| alert_view(a, cluster.is_silenced(&a.event(), now)))
        .collect();
    let end = q.after.saturating_add(items.len());
    let next = (end < total).then(|| end.to_string());
    Ok(Json(AlertPage { items, total, next }))
}

#[utoipa::path(post, path = "/alerts/{id}/ack", tag = "monitoring", operation_id = "ackAlert",
    summary = "Acknowledge an active alert.",
    params(("id" = String, Path, description = "Alert id.")),
    responses((status = 200, description = "The alert.", body = AlertView)))]
async fn ack_alert(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Json<AlertView>> {
    let alert = cluster
        .monitoring
        .alerts()
        .ack(&id)
        .ok_or_else(|| ApiError::not_found(format!("no active alert {id}")))?;
    let silenced = cluster.is_silenced(&alert.event(), glory_protocol::now_ms());
    Ok(Json(alert_view(&alert, silenced)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SilenceRequest)]
struct SilenceBody {
    #[schema(schema_with = matchers_schema)]
    matchers: SilenceMatchers,
    /// When it ends, ms since the epoch.
    ends_at: u64,
    #[serde(default)]
    #[schema(max_length = 1024)]
    comment: String,
}

/// A silence: alerts it matches are not forwarded until it ends.
#[derive(Serialize, ToSchema)]
#[schema(as = Silence)]
struct SilenceView {
    id: String,
    #[schema(schema_with = matchers_schema)]
    matchers: SilenceMatchers,
    ends_at: u64,
    comment: String,
    created_ms: u64,
    active: bool,
}

fn silence_view(s: &glory_keymaster::schema::SilenceRecord) -> SilenceView {
    SilenceView {
        id: s.id.clone(),
        matchers: s.matchers.clone(),
        ends_at: s.ends_at_ms,
        comment: s.comment.clone(),
        created_ms: s.created_ms,
        active: glory_protocol::now_ms() < s.ends_at_ms,
    }
}

#[derive(Serialize, ToSchema)]
struct SilenceList {
    total: usize,
    items: Vec<SilenceView>,
}

#[utoipa::path(get, path = "/silences", tag = "monitoring", operation_id = "listSilences",
    summary = "Every silence.",
    responses((status = 200, description = "Silences.", body = SilenceList)))]
async fn list_silences(Active(cluster): Active) -> Json<SilenceList> {
    let items: Vec<SilenceView> = cluster
        .monitoring
        .silences()
        .values()
        .map(silence_view)
        .collect();
    Json(SilenceList {
        total: items.len(),
        items,
    })
}

#[utoipa::path(post, path = "/silences", tag = "monitoring", operation_id = "createSilence",
    summary = "Silence matching alerts until ends_at.",
    request_body(content = SilenceBody, example = json!({"matchers": {"monitor": "hot-cpu",
        "group": "g01"}, "ends_at": 4102444800000u64, "comment": "rack 12 maintenance"})),
    responses((status = 201, description = "The silence.", body = SilenceView, links(
        ("DeleteSilence" = (operation_id = "deleteSilence", parameters(("id" = "$response.body#/id")))),
    ))))]
async fn create_silence(
    Active(cluster): Active,
    J(body): J<SilenceBody>,
) -> ApiResult<(StatusCode, Json<SilenceView>)> {
    let s = cluster
        .add_silence(body.matchers, body.ends_at, body.comment)
        .await?;
    Ok((StatusCode::CREATED, Json(silence_view(&s))))
}

#[utoipa::path(delete, path = "/silences/{id}", tag = "monitoring", operation_id = "deleteSilence",
    summary = "Delete a silence.",
    params(("id" = String, Path, description = "Silence id.")),
    responses((status = 204, description = "Deleted.")))]
async fn delete_silence(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<StatusCode> {
    cluster.delete_silence(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A query's `item`: one of the metric items (openapi_shared.json, filled in from the code).
struct MetricItemName;

impl utoipa::PartialSchema for MetricItemName {
    fn schema() -> RefOr<Schema> {
        named("MetricItem")
    }
}

impl ToSchema for MetricItemName {}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct MetricsParams {
    #[param(value_type = MetricItemName, inline)]
    item: String,
    /// Label matchers `k=v,k=v`.
    #[serde(default)]
    #[param(pattern = "^([^,]*=[^,]*)?(,([^,]*=[^,]*)?)*$")]
    labels: Option<String>,
    /// ms since the epoch; default an hour before `to`.
    from: Option<u64>,
    /// ms since the epoch; default now.
    to: Option<u64>,
    /// Seconds per point; default the resolution's own.
    #[serde(default)]
    #[param(maximum = 31622400)]
    step: u64,
}

/// `[t_ms, avg, min, max]` per point.
fn points_schema() -> Schema {
    let number = ObjectBuilder::new().schema_type(Type::Number);
    let point = ArrayBuilder::new()
        .items(number)
        .min_items(Some(4))
        .max_items(Some(4))
        .description(Some("[t_ms, avg, min, max]"));
    Schema::Array(ArrayBuilder::new().items(point).build())
}

/// One item's history, as asked and answered.
#[derive(Serialize, ToSchema)]
struct Series {
    item: String,
    #[schema(required = true)]
    labels: Option<String>,
    /// Seconds per point.
    step: u64,
    #[schema(schema_with = points_schema)]
    points: Vec<Point>,
}

impl Series {
    fn of(p: MetricsParams, answer: glory_protocol::monitoring::MetricsAnswer) -> Self {
        Series {
            item: p.item,
            labels: p.labels,
            step: answer.step_seconds,
            points: answer.points,
        }
    }
}

/// A node's history of one item.
#[derive(Serialize, ToSchema)]
#[schema(as = MetricsHistory)]
struct NodeHistory {
    node: String,
    #[serde(flatten)]
    series: Series,
}

/// A group's history of one item.
#[derive(Serialize, ToSchema)]
#[schema(as = GroupMetricsHistory)]
struct GroupHistory {
    group: String,
    #[serde(flatten)]
    series: Series,
}

/// The cluster's history of one item.
#[derive(Serialize, ToSchema)]
#[schema(as = ClusterMetricsHistory)]
struct ClusterHistory {
    #[serde(flatten)]
    series: Series,
    /// Groups whose master could not answer (left out).
    groups_missing: Vec<String>,
}

/// The longest step of a history query: a year (the hourly table keeps no more).
const MAX_STEP_SECONDS: u64 = 366 * 86_400;

/// The series and the time range a history query asks for; a bad one is a 400.
fn series_and_range(p: &MetricsParams) -> ApiResult<(SeriesKey, u64, u64)> {
    if p.step > MAX_STEP_SECONDS {
        return Err(ApiError::bad_request(format!(
            "step: at most {MAX_STEP_SECONDS} seconds (a year)"
        )));
    }
    if !glory_monitor::items::has_history(&p.item) {
        return Err(ApiError::bad_request(format!(
            "item: unknown item {:?}",
            p.item
        )));
    }
    let mut series = SeriesKey::new(&p.item);
    for pair in p
        .labels
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|s| !s.is_empty())
    {
        let (n, v) = pair
            .split_once('=')
            .ok_or_else(|| ApiError::bad_request(format!("labels: {pair:?} is not name=value")))?;
        series = series.label(n, v);
    }
    let to = p.to.unwrap_or_else(glory_protocol::now_ms);
    let from = p.from.unwrap_or(to.saturating_sub(3_600_000));
    if from > to {
        return Err(ApiError::unprocessable("from: after to"));
    }
    Ok((series, from, to))
}

#[utoipa::path(get, path = "/nodes/{id}/metrics", tag = "monitoring", operation_id = "nodeMetrics",
    summary = "A node's history of one item, from its group master.",
    params(("id" = String, Path, description = "Node id."), MetricsParams),
    responses((status = 200, description = "Points [t_ms, avg, min, max].", body = NodeHistory)))]
async fn node_metrics(
    Active(cluster): Active,
    Path(id): Path<String>,
    Q(p): Q<MetricsParams>,
) -> ApiResult<Json<NodeHistory>> {
    let (series, from, to) = series_and_range(&p)?;
    let answer = cluster.node_metrics(&id, series, from, to, p.step).await?;
    Ok(Json(NodeHistory {
        node: id,
        series: Series::of(p, answer),
    }))
}

#[utoipa::path(get, path = "/groups/{id}/metrics", tag = "monitoring", operation_id = "groupMetrics",
    summary = "A group's history of one item, from its group master.",
    params(("id" = String, Path, description = "Group id."), MetricsParams),
    responses((status = 200, description = "Points [t_ms, avg, min, max]: the mean of the nodes' averages, the least minimum, the greatest maximum.",
        body = GroupHistory)))]
async fn group_metrics(
    Active(cluster): Active,
    Path(id): Path<String>,
    Q(p): Q<MetricsParams>,
) -> ApiResult<Json<GroupHistory>> {
    let (series, from, to) = series_and_range(&p)?;
    let answer = cluster.group_metrics(&id, series, from, to, p.step).await?;
    Ok(Json(GroupHistory {
        group: id,
        series: Series::of(p, answer),
    }))
}

#[utoipa::path(get, path = "/cluster/metrics", tag = "monitoring", operation_id = "clusterMetrics",
    summary = "The cluster's history of one item, from every group master.",
    params(MetricsParams),
    responses((status = 200, description = "Points [t_ms, avg, min, max]: the mean of the nodes' averages, the least minimum, the greatest maximum.",
        body = ClusterHistory)))]
async fn cluster_metrics(
    Active(cluster): Active,
    Q(p): Q<MetricsParams>,
) -> ApiResult<Json<ClusterHistory>> {
    let (series, from, to) = series_and_range(&p)?;
    let (answer, missing) = cluster.cluster_metrics(series, from, to, p.step).await;
    Ok(Json(ClusterHistory {
        series: Series::of(p, answer),
        groups_missing: missing,
    }))
}
