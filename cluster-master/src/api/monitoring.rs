//! Monitoring: monitors (changed at run time, pushed to the group masters), alerts,
//! silences, and a node's history (from its group master).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use glory_keymaster::schema::{
    MonitorRecord, MonitorScope, ProcessMatchRecord, RuleRecord, SilenceMatchers,
};
use glory_protocol::monitoring::SeriesKey;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Active, ApiError, ApiResult, J, Q};
use crate::monitoring::Alert;
use crate::role::Node;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/monitors", get(list_monitors).post(create_monitor))
        .route(
            "/monitors/{name}",
            get(get_monitor).put(replace_monitor).delete(delete_monitor),
        )
        .route("/alerts", get(list_alerts))
        .route("/alerts/{id}/ack", post(ack_alert))
        .route("/silences", get(list_silences).post(create_silence))
        .route("/silences/{id}", axum::routing::delete(delete_silence))
        .route("/nodes/{id}/metrics", get(node_metrics))
        .route("/groups/{id}/metrics", get(group_metrics))
        .route("/cluster/metrics", get(cluster_metrics))
}

fn monitor_view(m: &MonitorRecord) -> Value {
    json!({
        "name": m.name,
        "scope": m.scope,
        "kind": m.kind,
        "item": m.item,
        "labels": m.labels,
        "interval_seconds": m.interval_seconds,
        "rules": m.rules,
        "match": m.process_match,
        "command": m.command,
        "timeout_seconds": m.timeout_seconds,
        "created_ms": m.created_ms,
        "updated_ms": m.updated_ms,
    })
}

/// A monitor as the API takes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MonitorBody {
    #[serde(default)]
    name: Option<String>,
    scope: MonitorScope,
    #[serde(default = "metric")]
    kind: String,
    /// Required for metric monitors; process monitors and checks have a default.
    #[serde(default)]
    item: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default = "five")]
    interval_seconds: u64,
    /// Required for metric monitors; process monitors and checks have defaults.
    #[serde(default)]
    rules: Vec<RuleRecord>,
    #[serde(default, rename = "match")]
    process_match: Option<ProcessMatchRecord>,
    #[serde(default)]
    command: Option<CommandBody>,
    #[serde(default)]
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

async fn list_monitors(Active(cluster): Active) -> Json<Value> {
    let items: Vec<Value> = cluster
        .monitoring
        .monitors()
        .values()
        .map(monitor_view)
        .collect();
    Json(json!({"total": items.len(), "items": items}))
}

async fn create_monitor(
    Active(cluster): Active,
    J(body): J<MonitorBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = body
        .name
        .clone()
        .ok_or_else(|| ApiError::bad_request("name: required"))?;
    let m = cluster.put_monitor(body.record(name), true).await?;
    Ok((StatusCode::CREATED, Json(monitor_view(&m))))
}

async fn get_monitor(Active(cluster): Active, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let monitors = cluster.monitoring.monitors();
    let m = monitors
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("monitor {name} does not exist")))?;
    Ok(Json(monitor_view(m)))
}

async fn replace_monitor(
    Active(cluster): Active,
    Path(name): Path<String>,
    J(body): J<MonitorBody>,
) -> ApiResult<Json<Value>> {
    if body.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::unprocessable(
            "name: differs from the monitor in the path (monitors cannot be renamed)",
        ));
    }
    let m = cluster.put_monitor(body.record(name), false).await?;
    Ok(Json(monitor_view(&m)))
}

async fn delete_monitor(
    Active(cluster): Active,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    cluster.delete_monitor(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn alert_view(a: &Alert, silenced: bool) -> Value {
    json!({
        "id": a.id,
        "monitor": a.key.monitor,
        "node": a.key.node,
        "group": a.group,
        "labels": a.key.labels.iter().cloned().collect::<BTreeMap<String, String>>(),
        "level": a.key.level.as_str(),
        "state": a.state.as_str(),
        "value": if a.value.is_finite() { json!(a.value) } else { Value::Null },
        "since": a.since_ms,
        "acked": a.acked,
        "detail": a.detail,
        "silenced": silenced,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertQuery {
    state: Option<String>,
    level: Option<String>,
    group: Option<String>,
    node: Option<String>,
    #[serde(default = "hundred")]
    limit: usize,
    /// Where the previous page ended (the `next` it returned).
    #[serde(default)]
    after: usize,
}

fn hundred() -> usize {
    100
}

async fn list_alerts(Active(cluster): Active, Q(q): Q<AlertQuery>) -> ApiResult<Json<Value>> {
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
    let items: Vec<Value> = matching
        .iter()
        .skip(q.after)
        .take(q.limit)
        .map(|a| alert_view(a, cluster.is_silenced(&a.event(), now)))
        .collect();
    let end = q.after + items.len();
    let next = (end < total).then(|| end.to_string());
    Ok(Json(json!({"items": items, "total": total, "next": next})))
}

async fn ack_alert(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let alert = cluster
        .monitoring
        .alerts()
        .ack(&id)
        .ok_or_else(|| ApiError::not_found(format!("no active alert {id}")))?;
    let silenced = cluster.is_silenced(&alert.event(), glory_protocol::now_ms());
    Ok(Json(alert_view(&alert, silenced)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceBody {
    matchers: SilenceMatchers,
    /// When it ends, ms since the epoch.
    ends_at: u64,
    #[serde(default)]
    comment: String,
}

fn silence_view(s: &glory_keymaster::schema::SilenceRecord) -> Value {
    json!({
        "id": s.id,
        "matchers": s.matchers,
        "ends_at": s.ends_at_ms,
        "comment": s.comment,
        "created_ms": s.created_ms,
        "active": glory_protocol::now_ms() < s.ends_at_ms,
    })
}

async fn list_silences(Active(cluster): Active) -> Json<Value> {
    let items: Vec<Value> = cluster
        .monitoring
        .silences()
        .values()
        .map(silence_view)
        .collect();
    Json(json!({"total": items.len(), "items": items}))
}

async fn create_silence(
    Active(cluster): Active,
    J(body): J<SilenceBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let s = cluster
        .add_silence(body.matchers, body.ends_at, body.comment)
        .await?;
    Ok((StatusCode::CREATED, Json(silence_view(&s))))
}

async fn delete_silence(Active(cluster): Active, Path(id): Path<String>) -> ApiResult<StatusCode> {
    cluster.delete_silence(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsParams {
    item: String,
    /// Label matchers, `name=value,name=value`.
    #[serde(default)]
    labels: Option<String>,
    /// ms since the epoch; default an hour before `to`.
    from: Option<u64>,
    /// ms since the epoch; default now.
    to: Option<u64>,
    /// Seconds per point; default the resolution's own.
    #[serde(default)]
    step: u64,
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

fn points_view(points: &[glory_protocol::monitoring::Point]) -> Vec<Value> {
    points
        .iter()
        .map(|(t, avg, min, max)| json!([t, avg, min, max]))
        .collect()
}

async fn node_metrics(
    Active(cluster): Active,
    Path(id): Path<String>,
    Q(p): Q<MetricsParams>,
) -> ApiResult<Json<Value>> {
    let (series, from, to) = series_and_range(&p)?;
    let answer = cluster.node_metrics(&id, series, from, to, p.step).await?;
    Ok(Json(json!({
        "node": id,
        "item": p.item,
        "labels": p.labels,
        "step": answer.step_seconds,
        "points": points_view(&answer.points),
    })))
}

async fn group_metrics(
    Active(cluster): Active,
    Path(id): Path<String>,
    Q(p): Q<MetricsParams>,
) -> ApiResult<Json<Value>> {
    let (series, from, to) = series_and_range(&p)?;
    let answer = cluster.group_metrics(&id, series, from, to, p.step).await?;
    Ok(Json(json!({
        "group": id,
        "item": p.item,
        "labels": p.labels,
        "step": answer.step_seconds,
        "points": points_view(&answer.points),
    })))
}

async fn cluster_metrics(
    Active(cluster): Active,
    Q(p): Q<MetricsParams>,
) -> ApiResult<Json<Value>> {
    let (series, from, to) = series_and_range(&p)?;
    let (answer, missing) = cluster.cluster_metrics(series, from, to, p.step).await;
    Ok(Json(json!({
        "item": p.item,
        "labels": p.labels,
        "step": answer.step_seconds,
        "points": points_view(&answer.points),
        "groups_missing": missing,
    })))
}
