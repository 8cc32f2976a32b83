//! Forwarding to Prometheus Alertmanagers (their v2 API, `POST /api/v2/alerts`).
//!
//! - **Grouping**: changes are collected for `alert_group_wait` and sent in one request
//!   per Alertmanager (a hundred nodes failing at once are one request, not a hundred).
//! - **Repeat**: every firing, unsilenced alert is sent again each
//!   `alert_repeat_interval`, with `endsAt` three intervals ahead: an Alertmanager keeps
//!   it while we repeat it and resolves it on its own if we stop (this master died and
//!   the next one has not repeated it yet).
//! - Silenced alerts are not sent; a resolved alert is sent with `endsAt` = when it
//!   resolved. Each Alertmanager has its own task and retries with backoff, so a dead
//!   one delays only itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use glory_protocol::monitoring::AlertState;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::alerts::Alert;
use super::forward::{deliver, Retry};
use crate::cluster::Cluster;
use crate::events::EventData;

/// Requests an Alertmanager may fall behind by before new ones are dropped.
const QUEUE: usize = 64;
const ATTEMPTS: u32 = 5;

/// An alert as Alertmanager's v2 API takes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AmAlert {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: String,
}

/// RFC 3339 in UTC with milliseconds, as Alertmanager reads times.
pub(crate) fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => "1970-01-01T00:00:00Z".to_string(),
    }
}

/// `alert` for Alertmanager: labels say what it is about (`alertname` is the monitor,
/// `severity` the level), annotations what was seen. Firing alerts end `hold` from
/// `now_ms` unless repeated.
pub(crate) fn am_alert(
    alert: &Alert,
    cluster_name: &str,
    api_base: &str,
    now_ms: u64,
    hold: Duration,
) -> AmAlert {
    let mut labels: BTreeMap<String, String> = alert
        .key
        .labels
        .iter()
        .map(|(n, v)| (format!("label_{n}"), v.clone()))
        .collect();
    labels.insert("alertname".into(), alert.key.monitor.clone());
    labels.insert("severity".into(), alert.key.level.as_str().into());
    labels.insert("group".into(), alert.group.clone());
    labels.insert("cluster".into(), cluster_name.to_string());
    if let Some(node) = &alert.key.node {
        labels.insert("node".into(), node.clone());
    }
    let mut annotations = BTreeMap::new();
    if alert.value.is_finite() {
        annotations.insert("value".into(), alert.value.to_string());
    }
    if let Some(detail) = &alert.detail {
        annotations.insert("detail".into(), detail.clone());
    }
    annotations.insert("glory_alert_id".into(), alert.id.clone());
    let ends = match alert.state {
        AlertState::Resolved => alert.since_ms.max(1),
        _ => now_ms + hold.as_millis() as u64,
    };
    AmAlert {
        labels,
        annotations,
        starts_at: rfc3339(alert.since_ms),
        ends_at: rfc3339(ends),
        generator_url: format!("{api_base}/api/v1/alerts/{}", alert.id),
    }
}

/// Send alert changes and repeats to `cluster`'s Alertmanagers until `shutdown`.
pub(crate) async fn forward(
    cluster: Arc<Cluster>,
    http: reqwest::Client,
    shutdown: CancellationToken,
) {
    let settings = &cluster.settings;
    let queues: Vec<(String, mpsc::Sender<Vec<u8>>)> = settings
        .alertmanagers
        .iter()
        .map(|base| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let url = format!("{base}/api/v2/alerts");
            let retry = Retry {
                attempts: ATTEMPTS,
                max_backoff: Duration::from_secs(10),
            };
            tokio::spawn(deliver(
                url.clone(),
                rx,
                http.clone(),
                retry,
                "alertmanager",
                shutdown.clone(),
            ));
            (url, tx)
        })
        .collect();
    let api_base = format!(
        "http://{}",
        settings.api_advertise.unwrap_or(settings.api_listen)
    );
    let hold = settings.alert_repeat_interval * 3;
    let send = |alerts: Vec<AmAlert>| {
        if alerts.is_empty() {
            return;
        }
        let body = serde_json::to_vec(&alerts).unwrap_or_default();
        for (url, queue) in &queues {
            if queue.try_send(body.clone()).is_err() {
                warn!(alertmanager = %url, "Alertmanager queue full; alerts not forwarded");
            }
        }
    };
    let (_, mut events) = cluster.events.subscribe(None);
    let mut group = tokio::time::interval(settings.alert_group_wait);
    let mut repeat = tokio::time::interval(settings.alert_repeat_interval);
    repeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Changed alerts waiting for the group's request, by id (the last change wins).
    let mut pending: HashMap<String, AmAlert> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = group.tick() => {
                send(pending.drain().map(|(_, a)| a).collect());
            }
            _ = repeat.tick() => {
                let now = glory_protocol::now_ms();
                let firing: Vec<Alert> = cluster
                    .monitoring
                    .alerts()
                    .list()
                    .into_iter()
                    .filter(|a| a.state == AlertState::Firing)
                    .collect();
                let alerts = firing
                    .iter()
                    .filter(|a| !cluster.is_silenced(&a.event(), now))
                    .map(|a| am_alert(a, &settings.cluster_name, &api_base, now, hold))
                    .collect();
                send(alerts);
            }
            event = events.recv() => match event {
                Ok(event) => {
                    let (EventData::AlertFiring(e) | EventData::AlertResolved(e)) = &event.data else {
                        continue;
                    };
                    let now = glory_protocol::now_ms();
                    if cluster.is_silenced(e, now) {
                        continue;
                    }
                    let alert = cluster
                        .monitoring
                        .alerts()
                        .list()
                        .into_iter()
                        .find(|a| a.id == e.id);
                    if let Some(alert) = alert {
                        pending.insert(
                            alert.id.clone(),
                            am_alert(&alert, &settings.cluster_name, &api_base, now, hold),
                        );
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(missed, "Alertmanager forwarding fell behind the event stream");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glory_protocol::monitoring::{AlertKey, Level};

    #[test]
    fn alerts_read_as_alertmanager_expects() {
        let alert = Alert {
            id: "a-1".into(),
            key: AlertKey {
                monitor: "root-full".into(),
                node: Some("n-1".into()),
                labels: vec![("mount".into(), "/".into())],
                level: Level::Critical,
            },
            group: "g03".into(),
            state: AlertState::Firing,
            value: 97.5,
            since_ms: 1_796_000_000_123,
            acked: false,
            detail: None,
        };
        let am = am_alert(
            &alert,
            "dc1",
            "http://api",
            1_796_000_010_000,
            Duration::from_secs(180),
        );
        let json = serde_json::to_value(&am).unwrap();
        assert_eq!(json["labels"]["alertname"], "root-full");
        assert_eq!(json["labels"]["severity"], "critical");
        assert_eq!(json["labels"]["node"], "n-1");
        assert_eq!(json["labels"]["label_mount"], "/");
        assert_eq!(json["annotations"]["value"], "97.5");
        assert_eq!(json["startsAt"], "2026-11-30T00:53:20.123Z");
        assert_eq!(json["endsAt"], "2026-11-30T00:56:30.000Z");
        assert_eq!(json["generatorURL"], "http://api/api/v1/alerts/a-1");
        let resolved = Alert {
            state: AlertState::Resolved,
            since_ms: 1_796_000_020_000,
            ..alert
        };
        let am = am_alert(
            &resolved,
            "dc1",
            "http://api",
            1_796_000_030_000,
            Duration::from_secs(180),
        );
        assert_eq!(am.ends_at, "2026-11-30T00:53:40.000Z");
    }
}
