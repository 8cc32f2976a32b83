//! The autoscaler of the active cluster master: every 5 s, for each service with a
//! `scaling` policy, the metric's mean per healthy instance is measured and the pure
//! decision ([`glory_service_manager::autoscale`]) is made and recorded with its
//! inputs; a changed count is stored (one compare-and-swap) and the reconciler acts.
//!
//! Metrics:
//! - `requests_per_sec`: new connections per second through the service's balancer
//!   (HAProxy's session counter over the last interval), divided by the instances.
//! - `cpu.percent`: the CPU use its instances' nodes reported with their last
//!   heartbeats (at most 15 s old).
//! - anything else: a monitoring item (e.g. `load.1`), the last 30 s mean of each
//!   instance's node, from its group master's history.

use std::collections::BTreeSet;
use std::time::Duration;

use glory_protocol::monitoring::SeriesKey;
use glory_service_manager::autoscale::{Decision, Policy};
use glory_service_manager::model::{InstanceState, ServiceRecord};
use tracing::{info, warn};

use super::DECISIONS_KEPT;
use crate::cluster::Cluster;
use crate::events::EventData;

/// How often each service's metric is sampled and a decision made.
pub(crate) const SAMPLE: Duration = Duration::from_secs(5);
/// A node's load older than this is not used.
const LOAD_FRESH_MS: u64 = 15_000;

impl Cluster {
    /// The metric's mean per healthy instance of `record`, if there is data.
    async fn scaling_value(&self, record: &ServiceRecord, metric: &str) -> Option<f64> {
        let healthy: Vec<(String, String)> = self
            .instance_views(record)
            .into_iter()
            .filter(|v| v.state == InstanceState::Healthy)
            .map(|v| (v.id, v.node))
            .collect();
        if healthy.is_empty() {
            return None;
        }
        let n = healthy.len() as f64;
        match metric {
            "requests_per_sec" => {
                let status = self.services.balancers.status(&record.spec.name)?;
                status.rate.map(|r| r / n)
            }
            "cpu.percent" => {
                let now = glory_protocol::now_ms();
                let reg = self.read();
                let values: Vec<f64> = healthy
                    .iter()
                    .filter_map(|(_, node)| {
                        let e = reg.nodes.get(node)?;
                        let load = e.load.as_ref()?;
                        (now.saturating_sub(e.load_ms) <= LOAD_FRESH_MS)
                            .then_some(f64::from(load.cpu))
                    })
                    .collect();
                mean(&values)
            }
            item => {
                let now = glory_protocol::now_ms();
                let nodes: BTreeSet<&String> = healthy.iter().map(|(_, n)| n).collect();
                let mut values = Vec::new();
                for node in nodes {
                    let answer = self
                        .node_metrics(node, SeriesKey::new(item), now - 30_000, now, 0)
                        .await;
                    if let Ok(a) = answer {
                        let avgs: Vec<f64> = a.points.iter().map(|p| p.1).collect();
                        if let Some(m) = mean(&avgs) {
                            values.push(m);
                        }
                    }
                }
                mean(&values)
            }
        }
    }

    /// One decision for each service that scales.
    pub(crate) async fn autoscale_services(&self) {
        let now = glory_protocol::now_ms();
        let mut live = BTreeSet::new();
        for record in self.services.all() {
            live.insert(record.spec.name.clone());
            let Some(scaling) = record.spec.scaling.clone() else {
                continue;
            };
            if record.stopped {
                continue;
            }
            let value = self.scaling_value(&record, &scaling.metric).await;
            let i = record.spec.instances;
            let policy = Policy::new(
                i.min,
                i.max,
                scaling.target,
                scaling.scale_down_window_seconds,
            );
            let decision = {
                let mut all = self
                    .services
                    .scaling
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let (scaler, kept) = all.entry(record.spec.name.clone()).or_default();
                let d = scaler.decide(&policy, &scaling.metric, record.desired, value, now);
                if kept.len() == DECISIONS_KEPT {
                    kept.pop_front();
                }
                kept.push_back(d.clone());
                d
            };
            if decision.desired != decision.current {
                self.apply_decision(&record, &decision).await;
            }
        }
        self.services
            .scaling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| live.contains(name));
    }

    async fn apply_decision(&self, record: &ServiceRecord, d: &Decision) {
        let name = &record.spec.name;
        let from = d.current;
        let result = self
            .update_service(name, |r| {
                // Only the count the decision was made on is changed (an operator's
                // `scale` meanwhile wins).
                if r.desired == from {
                    r.desired = d.desired;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(r) if r.desired == d.desired => {
                info!(service = %name, from, to = d.desired, value = ?d.value, reason = %d.reason, "service scaled");
                self.emit_service(
                    &r,
                    EventData::ServiceScaled {
                        service: name.clone(),
                        from,
                        to: d.desired,
                        metric: d.metric.clone(),
                        value: d.value,
                        reason: d.reason.clone(),
                    },
                );
            }
            Ok(_) => {}
            Err(e) => warn!(service = %name, error = %e, "cannot store the scaling decision"),
        }
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Decide every [`SAMPLE`] until `shutdown`.
pub(crate) async fn autoscaler(
    cluster: std::sync::Arc<Cluster>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        cluster.autoscale_services().await;
    }
}
