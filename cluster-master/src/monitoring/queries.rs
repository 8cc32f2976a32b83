//! History queries: asked of the node's group master over its link, answered by id.

use std::sync::atomic::Ordering;
use std::time::Duration;

use glory_protocol::monitoring::{MetricsAnswer, MetricsQuery, SeriesKey};
use glory_protocol::ClusterToGroup;
use tokio::sync::oneshot;

use crate::cluster::Cluster;
use crate::pools::{OpError, OpResultT};

/// How long a group master may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

impl Cluster {
    /// `node`'s history of `series`, from its group master.
    pub(crate) async fn node_metrics(
        &self,
        node: &str,
        series: SeriesKey,
        from_ms: u64,
        to_ms: u64,
        step_seconds: u64,
    ) -> OpResultT<MetricsAnswer> {
        let id = self.monitoring.next_query.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let reg = self.read();
            let group = reg
                .nodes
                .get(node)
                .map(|n| n.record.group.clone())
                .ok_or_else(|| OpError::NotFound(format!("node {node} does not exist")))?;
            let entry = reg
                .groups
                .get(&group)
                .filter(|g| g.link.is_some())
                .ok_or_else(|| OpError::Conflict {
                    message: format!(
                        "the group master of {group} is not connected; its history is out of reach"
                    ),
                    fit: None,
                })?;
            super::guard(self.monitoring.queries.lock()).insert(id, tx);
            entry.notify(ClusterToGroup::Metrics(MetricsQuery {
                id,
                node: Some(node.to_string()),
                series,
                from_ms,
                to_ms,
                step_seconds,
            }));
        }
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, rx).await;
        super::guard(self.monitoring.queries.lock()).remove(&id);
        match answer {
            Ok(Ok(answer)) => match answer.error {
                Some(e) => Err(OpError::NotFound(e)),
                None => Ok(answer),
            },
            _ => Err(OpError::Conflict {
                message: format!(
                    "the group master did not answer within {}s",
                    ANSWER_TIMEOUT.as_secs()
                ),
                fit: None,
            }),
        }
    }

    /// A group master answered a history query.
    pub(crate) fn metrics_answered(&self, answer: MetricsAnswer) {
        if let Some(tx) = super::guard(self.monitoring.queries.lock()).remove(&answer.id) {
            let _ = tx.send(answer);
        }
    }
}
