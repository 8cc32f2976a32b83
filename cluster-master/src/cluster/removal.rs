//! Node removal: a removed node's records are deleted, its certificate's serial is
//! refused from then on, and its server identity may not enroll again until an
//! operator admits it.

use glory_keymaster::schema::{self, RemovedRecord, RevokedRecord, RECORD_VERSION};
use glory_keymaster::{KeyMasterError, Txn, TxnOp};
use glory_protocol::ClusterToGroup;
use tracing::{info, warn};

use super::Cluster;

impl Cluster {
    /// Remove a node: its certificate is refused from now on.
    pub async fn remove_node(&self, id: &str) -> Result<Option<String>, KeyMasterError> {
        let Some(record) = self.read().nodes.get(id).map(|n| n.record.clone()) else {
            return Ok(None);
        };
        match self.release_everywhere(id).await {
            Ok(()) => {}
            Err(crate::pools::OpError::KeyMaster(e)) => return Err(e),
            Err(e) => warn!(node_id = %id, error = %e, "could not release the node from its pool"),
        }
        let revoked = RevokedRecord {
            v: RECORD_VERSION,
            serial: record.serial.clone(),
            node: id.to_string(),
            at_ms: glory_protocol::now_ms(),
        };
        let identity = record.identity();
        let removed = RemovedRecord {
            v: RECORD_VERSION,
            node: id.to_string(),
            identity: identity.clone(),
            hostname: record.hostname.clone(),
            at_ms: revoked.at_ms,
        };
        let txn = Txn {
            compares: vec![],
            success: vec![
                TxnOp::delete(schema::node_key(id)),
                TxnOp::delete(schema::node_status_key(id)),
                TxnOp::delete(schema::identity_key(&identity)),
                TxnOp::put(
                    schema::revoked_key(&record.serial),
                    schema::encode(&revoked),
                ),
                TxnOp::put(schema::removed_key(&identity), schema::encode(&removed)),
            ],
            failure: vec![],
        };
        self.km_txn(txn).await?;
        let mut reg = self.write();
        reg.remove_node(id);
        reg.revoked.insert(record.serial.clone(), id.to_string());
        reg.removed.insert(identity, removed);
        if let Some(group) = reg.groups.get(&record.group) {
            group.notify(ClusterToGroup::MemberRemoved {
                node: id.to_string(),
                serial: record.serial.clone(),
            });
        }
        drop(reg);
        self.forget_setup(id);
        info!(node_id = %id, group = %record.group, "node removed");
        Ok(Some(record.group))
    }

    /// Nodes removed by an operator and not re-admitted, oldest first.
    pub(crate) fn removed_nodes(&self) -> Vec<RemovedRecord> {
        let mut out: Vec<RemovedRecord> = self.read().removed.values().cloned().collect();
        out.sort_by_key(|r| r.at_ms);
        out
    }

    /// Let a removed node (by node id or identity) enroll again. `None`: no such
    /// removed node.
    pub async fn admit_node(&self, node: &str) -> Result<Option<RemovedRecord>, KeyMasterError> {
        let Some(record) = self
            .read()
            .removed
            .values()
            .find(|r| r.node == node || r.identity == node)
            .cloned()
        else {
            return Ok(None);
        };
        self.km_txn(Txn::alone(TxnOp::delete(schema::removed_key(
            &record.identity,
        ))))
        .await?;
        self.write().removed.remove(&record.identity);
        info!(node_id = %record.node, identity = %record.identity, "removed node re-admitted");
        Ok(Some(record))
    }

    /// Whether a certificate serial belongs to a removed node.
    pub(crate) fn is_revoked(&self, serial: &str) -> bool {
        self.read().revoked.contains_key(serial)
    }
}
