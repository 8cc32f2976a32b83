//! Alert forwarding: each configured webhook gets a JSON POST when an alert fires or
//! resolves, unless a silence in force matches it. Each webhook has its own queue and
//! task, so a slow or dead receiver delays only itself; a failed delivery is retried
//! with backoff (0.5 s doubling to 30 s, 8 attempts), in order.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::events::{AlertEvent, EventData};

/// Deliveries a webhook may fall behind by before new ones are dropped.
const QUEUE: usize = 1024;
const ATTEMPTS: u32 = 8;

/// What a webhook receives.
#[derive(Serialize)]
struct Delivery<'a> {
    /// `alert_firing` or `alert_resolved`.
    kind: &'static str,
    cluster: &'a str,
    at_ms: u64,
    alert: &'a AlertEvent,
}

/// Forward alert events to the configured webhooks and Alertmanagers until
/// `shutdown`.
pub(crate) async fn forward_alerts(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let webhooks = cluster.settings.alert_webhooks.clone();
    if webhooks.is_empty() && cluster.settings.alertmanagers.is_empty() {
        return;
    }
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            warn!(error = %e, "alert forwarding off: cannot build an HTTP client");
            return;
        }
    };
    if !cluster.settings.alertmanagers.is_empty() {
        tokio::spawn(super::alertmanager::forward(
            cluster.clone(),
            http.clone(),
            shutdown.clone(),
        ));
    }
    if webhooks.is_empty() {
        return;
    }
    let queues: Vec<(String, mpsc::Sender<Vec<u8>>)> = webhooks
        .into_iter()
        .map(|url| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let retry = Retry {
                attempts: ATTEMPTS,
                max_backoff: Duration::from_secs(30),
            };
            tokio::spawn(deliver(
                url.clone(),
                rx,
                http.clone(),
                retry,
                "webhook",
                shutdown.clone(),
            ));
            (url, tx)
        })
        .collect();
    let (_, mut events) = cluster.events.subscribe(None);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        let event = match event {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(missed, "alert forwarding fell behind the event stream");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let alert = match &event.data {
            EventData::AlertFiring(a) | EventData::AlertResolved(a) => a,
            _ => continue,
        };
        if cluster.is_silenced(alert, glory_protocol::now_ms()) {
            continue;
        }
        let body = serde_json::to_vec(&Delivery {
            kind: event.kind(),
            cluster: &cluster.settings.cluster_name,
            at_ms: event.at_ms,
            alert,
        })
        .unwrap_or_default();
        for (url, queue) in &queues {
            if queue.try_send(body.clone()).is_err() {
                warn!(webhook = %url, "webhook queue full; alert not forwarded");
            }
        }
    }
}

/// How a receiver's queue is delivered: attempts and the longest wait between them.
#[derive(Clone, Copy)]
pub(super) struct Retry {
    pub attempts: u32,
    pub max_backoff: Duration,
}

/// POST each body `rx` gives to `url`, in order, each retried with backoff (0.5 s
/// doubling) until it is taken or `retry.attempts` failed; `what` names the receiver in
/// logs.
pub(super) async fn deliver(
    url: String,
    mut rx: mpsc::Receiver<Vec<u8>>,
    http: reqwest::Client,
    retry: Retry,
    what: &'static str,
    shutdown: CancellationToken,
) {
    while let Some(body) = tokio::select! {
        _ = shutdown.cancelled() => None,
        body = rx.recv() => body,
    } {
        let mut backoff = Duration::from_millis(500);
        for attempt in 1..=retry.attempts {
            let sent = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let why = match sent {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => format!("answered {}", r.status()),
                Err(e) => e.to_string(),
            };
            if attempt == retry.attempts {
                warn!(receiver = what, %url, attempts = attempt, %why, "alerts not delivered; giving up on them");
                break;
            }
            info!(receiver = what, %url, attempt, %why, retry_in = ?backoff, "alert delivery failed; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(retry.max_backoff);
        }
    }
}
