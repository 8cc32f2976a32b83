//! Node removal: a removed node's records are deleted, its certificate's serial is
//! refused from then on, and its server identity may not enroll again until an
//! operator admits it.

use glory_keymaster::schema::{self, RemovedRecord, RECORD_VERSION};
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
        let at_ms = glory_protocol::now_ms();
        let revoked = self.revoked_with(&record, at_ms);
        let identity = record.identity();
        let removed = RemovedRecord {
            v: RECORD_VERSION,
            node: id.to_string(),
            identity: identity.clone(),
            hostname: record.hostname.clone(),
            at_ms,
        };
        let mut success = vec![
            TxnOp::delete(schema::node_key(id)),
            TxnOp::delete(schema::node_status_key(id)),
            TxnOp::delete(schema::identity_key(&identity)),
            TxnOp::put(schema::removed_key(&identity), schema::encode(&removed)),
        ];
        for (serial, record) in &revoked {
            success.push(TxnOp::put(
                schema::revoked_key(serial),
                schema::encode(record),
            ));
        }
        let txn = Txn {
            compares: vec![],
            success,
            failure: vec![],
        };
        self.km_txn(txn).await?;
        let late = {
            let mut reg = self.write();
            // A renewal that landed while we wrote: its serials are refused too.
            let late = reg
                .nodes
                .get(id)
                .map(|n| self.revoked_with(&n.record, at_ms))
                .unwrap_or_default();
            reg.remove_node(id);
            for (serial, _) in revoked.iter().chain(&late) {
                reg.revoked.insert(serial.clone(), id.to_string());
            }
            reg.removed.insert(identity, removed);
            if let Some(group) = reg.groups.get(&record.group) {
                for serial in late.iter().map(|(s, _)| s).chain([&record.serial]) {
                    group.notify(ClusterToGroup::MemberRemoved {
                        node: id.to_string(),
                        serial: serial.clone(),
                    });
                }
            }
            late
        };
        let late: Vec<TxnOp> = late
            .iter()
            .filter(|(serial, _)| !revoked.iter().any(|(s, _)| s == serial))
            .map(|(serial, r)| TxnOp::put(schema::revoked_key(serial), schema::encode(r)))
            .collect();
        if !late.is_empty() {
            let txn = Txn {
                success: late,
                ..Default::default()
            };
            if let Err(e) = self.km_txn(txn).await {
                warn!(node_id = %id, error = %e, "a serial renewed during the removal is refused, but not recorded");
            }
        }
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
