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
        let group = self
            .read()
            .nodes
            .get(node)
            .map(|n| n.record.group.clone())
            .ok_or_else(|| OpError::NotFound(format!("node {node} does not exist")))?;
        let query = MetricsQuery {
            id: 0,
            node: Some(node.to_string()),
            series,
            from_ms,
            to_ms,
            step_seconds,
        };
        self.ask_group(&group, query).await
    }

    /// The history of `series` over `group`'s nodes (mean of averages, least minimum,
    /// greatest maximum per point), from its group master.
    pub(crate) async fn group_metrics(
        &self,
        group: &str,
        series: SeriesKey,
        from_ms: u64,
        to_ms: u64,
        step_seconds: u64,
    ) -> OpResultT<MetricsAnswer> {
        if !self.read().groups.contains_key(group) {
            return Err(OpError::NotFound(format!("group {group} does not exist")));
        }
        let query = MetricsQuery {
            id: 0,
            node: None,
            series,
            from_ms,
            to_ms,
            step_seconds,
        };
        self.ask_group(group, query).await
    }

    /// The history of `series` over every node: each connected group master asked at
    /// once, their points merged. Groups that cannot answer are left out and named.
    pub(crate) async fn cluster_metrics(
        &self,
        series: SeriesKey,
        from_ms: u64,
        to_ms: u64,
        step_seconds: u64,
    ) -> (MetricsAnswer, Vec<String>) {
        let groups: Vec<String> = self.read().groups.keys().cloned().collect();
        let asks = groups
            .iter()
            .map(|g| self.group_metrics(g, series.clone(), from_ms, to_ms, step_seconds));
        let answers = futures::future::join_all(asks).await;
        let mut step = step_seconds;
        let mut parts = Vec::new();
        let mut missing = Vec::new();
        for (group, answer) in groups.into_iter().zip(answers) {
            match answer {
                Ok(a) => {
                    step = a.step_seconds;
                    parts.push(a.points);
                }
                Err(_) => missing.push(group),
            }
        }
        let answer = MetricsAnswer {
            id: 0,
            step_seconds: step,
            points: glory_monitor::store::merge_points(parts),
            error: None,
        };
        (answer, missing)
    }

    /// Ask `group`'s active master `query` (its id assigned here) and wait for the
    /// answer.
    async fn ask_group(&self, group: &str, mut query: MetricsQuery) -> OpResultT<MetricsAnswer> {
        let id = self.monitoring.next_query.fetch_add(1, Ordering::Relaxed);
        query.id = id;
        let (tx, rx) = oneshot::channel();
        {
            let reg = self.read();
            let entry = reg
                .groups
                .get(group)
                .filter(|g| g.link.is_some())
                .ok_or_else(|| OpError::Conflict {
                    message: format!(
                        "the group master of {group} is not connected; its history is out of reach"
                    ),
                    fit: None,
                })?;
            super::guard(self.monitoring.queries.lock()).insert(id, tx);
            entry.notify(ClusterToGroup::Metrics(query));
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
                    "the group master of {group} did not answer within {}s",
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
