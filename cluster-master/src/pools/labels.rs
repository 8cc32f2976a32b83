//! Node labels, which pool selectors match on: checked, then written with a
//! compare on the node's identity so a node removed meanwhile is not written back.

use std::collections::BTreeMap;

use super::{OpError, OpResultT};
use crate::cluster::Cluster;

impl Cluster {
    /// Replace a node's labels (selectors match on them).
    pub async fn set_labels(
        &self,
        node: &str,
        labels: BTreeMap<String, String>,
    ) -> OpResultT<BTreeMap<String, String>> {
        for (k, v) in &labels {
            let key_ok = !k.is_empty()
                && k.len() <= 63
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
            if !key_ok {
                return Err(OpError::Unprocessable(format!(
                    "labels: key {k:?} must be 1-63 letters, digits, '-', '_', '.' or '/'"
                )));
            }
            if v.len() > 63 || v.chars().any(|c| c.is_control()) {
                return Err(OpError::Unprocessable(format!(
                    "labels: value of {k:?} must be at most 63 printable characters"
                )));
            }
        }
        if labels.len() > 64 {
            return Err(OpError::Invalid("labels: at most 64 labels".into()));
        }
        let mut record = self
            .read()
            .nodes
            .get(node)
            .map(|n| n.record.clone())
            .ok_or_else(|| OpError::NotFound(format!("node {node} does not exist")))?;
        record.labels = labels;
        if !self.store_node_record(&record).await? {
            return Err(OpError::conflict(format!(
                "node {node} was removed or enrolled again meanwhile; try again"
            )));
        }
        let labels = record.labels.clone();
        if let Some(entry) = self.write().nodes.get_mut(node) {
            entry.record.labels = record.labels;
        }
        Ok(labels)
    }
}
