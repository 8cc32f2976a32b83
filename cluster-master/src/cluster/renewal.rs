//! Certificate renewal: nodes (through their group master), group masters and
//! provisioners ask over the links they have for a certificate for a fresh key before
//! theirs expires (`glory_protocol::renewal`). A node's new serial is written to its
//! record first; the serial its agent holds (the one its session was opened with)
//! stays accepted until that certificate expires, so answers lost in failovers strand
//! no agent, however often they are lost. A removed node is not
//! renewed: its record is gone and its identity's removal record is checked in the
//! same transaction.

use glory_keymaster::schema::{self, RevokedRecord, RECORD_VERSION};
use glory_keymaster::{Compare, Txn, TxnOp};
use glory_protocol::renewal::CertPeriod;
use glory_protocol::{CertRole, CertSubject, ClusterToGroup, GroupToAgent};
use tracing::{debug, warn};

use super::Cluster;

/// Why a certificate was not renewed (logged; the holder asks again later).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RenewError {
    #[error("node {0} is not a member of this cluster (removed?)")]
    NotAMember(String),
    #[error("node {node} belongs to group {actual}, not {asked}")]
    WrongGroup {
        node: String,
        actual: String,
        asked: String,
    },
    #[error("bad certificate request: {0}")]
    BadRequest(String),
    #[error("node {0} was removed while its certificate was being renewed")]
    Removed(String),
    #[error("key master: {0}")]
    KeyMaster(#[from] glory_keymaster::KeyMasterError),
}

impl Cluster {
    /// Sign a node's next certificate, record it, and send the group master the new
    /// serial and then the certificate for the agent (`tx`: the asking group master's
    /// link). `held` is the serial the agent's session was opened with.
    pub(crate) async fn renew_node(
        &self,
        group: &str,
        node: &str,
        csr_pem: &str,
        held: &str,
        tx: &tokio::sync::mpsc::Sender<ClusterToGroup>,
    ) -> Result<(), RenewError> {
        let record = {
            let reg = self.read();
            let entry = reg
                .nodes
                .get(node)
                .ok_or_else(|| RenewError::NotAMember(node.to_string()))?;
            if entry.record.group != group {
                return Err(RenewError::WrongGroup {
                    node: node.to_string(),
                    actual: entry.record.group.clone(),
                    asked: group.to_string(),
                });
            }
            entry.record.clone()
        };
        let bad = |e: glory_protocol::tls::TlsError| RenewError::BadRequest(e.to_string());
        let key = glory_protocol::tls::csr_key_sha256(csr_pem).map_err(bad)?;
        let subject = CertSubject {
            id: node.to_string(),
            role: CertRole::Node,
            group: Some(group.to_string()),
        };
        let signed = self
            .ca
            .sign_csr(csr_pem, &subject, self.settings.cert_validity)
            .map_err(bad)?;
        let expires_ms = CertPeriod::of(&signed.cert_pem).map_err(bad)?.expires_ms();
        let mut next = record.clone();
        // What the agent holds stays accepted: the current certificate, or the one
        // before when the last renewal's answer never reached it. Anything else it
        // names is not ours to keep (group masters older than the field name none).
        next.previous_serial = if held == record.previous_serial && !held.is_empty() {
            record.previous_serial.clone()
        } else {
            record.serial.clone()
        };
        next.serial = signed.serial.clone();
        next.key_sha256 = key;
        next.cert_expires_ms = expires_ms;
        let identity = record.identity();
        let txn = Txn {
            compares: vec![Compare::absent(schema::removed_key(&identity))],
            success: vec![TxnOp::put(schema::node_key(node), schema::encode(&next))],
            failure: vec![],
        };
        if !self.km_txn(txn).await?.succeeded {
            return Err(RenewError::Removed(node.to_string()));
        }
        let member = {
            let mut reg = self.write();
            let Some(entry) = reg.nodes.get_mut(node) else {
                // Removed after our write: the certificate is never handed out.
                return Err(RenewError::Removed(node.to_string()));
            };
            entry.record.previous_serial = next.previous_serial;
            entry.record.serial = next.serial;
            entry.record.key_sha256 = next.key_sha256;
            entry.record.cert_expires_ms = next.cert_expires_ms;
            entry.member()
        };
        self.renewals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        debug!(node_id = %node, group = %group, serial = %signed.serial, "node certificate renewed");
        // In this order on one stream: the group master accepts the new serial before
        // the agent can present it.
        let _ = tx.send(ClusterToGroup::MemberAdded(member)).await;
        let _ = tx
            .send(ClusterToGroup::ToAgent {
                node: node.to_string(),
                msg: GroupToAgent::Certificate {
                    cert_pem: signed.cert_pem,
                },
            })
            .await;
        Ok(())
    }

    /// Node certificates renewed since this master took over.
    pub fn certificates_renewed(&self) -> u64 {
        self.renewals.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sign a group master's next certificate (its link proved its group).
    pub(crate) fn renew_group_master(
        &self,
        group: &str,
        csr_pem: &str,
    ) -> Result<String, RenewError> {
        self.renew_master(CertRole::GroupMaster, group, csr_pem)
    }

    /// Sign a provisioner's next certificate (its link proved its name).
    pub(crate) fn renew_provisioner(
        &self,
        name: &str,
        csr_pem: &str,
    ) -> Result<String, RenewError> {
        self.renew_master(CertRole::Provisioner, name, csr_pem)
    }

    fn renew_master(&self, role: CertRole, id: &str, csr_pem: &str) -> Result<String, RenewError> {
        let subject = CertSubject {
            id: id.to_string(),
            role,
            group: None,
        };
        let signed = self
            .ca
            .sign_csr(csr_pem, &subject, self.settings.cert_validity)
            .map_err(|e| RenewError::BadRequest(e.to_string()))?;
        debug!(id, role = role.as_str(), serial = %signed.serial, "certificate renewed");
        Ok(signed.cert_pem)
    }

    /// Serials a removed node may still present, besides the one its record names:
    /// the certificate before its last renewal. Recorded as revoked with it.
    pub(crate) fn revoked_with(
        &self,
        record: &schema::NodeRecord,
        at_ms: u64,
    ) -> Vec<(String, RevokedRecord)> {
        [&record.serial, &record.previous_serial]
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|serial| {
                (
                    serial.clone(),
                    RevokedRecord {
                        v: RECORD_VERSION,
                        serial: serial.clone(),
                        node: record.id.clone(),
                        at_ms,
                    },
                )
            })
            .collect()
    }
}

/// Log a renewal that did not happen: the holder asks again after a while.
pub(crate) fn log_refused(who: &str, e: &RenewError) {
    match e {
        RenewError::KeyMaster(_) => {
            warn!(who, error = %e, "certificate not renewed; it will ask again")
        }
        _ => warn!(who, error = %e, "certificate renewal refused"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use glory_keymaster::{EmbeddedKeyMaster, KeyMaster};
    use glory_protocol::tls::generate_csr;
    use glory_protocol::{ClusterToGroup, GroupToAgent};

    use super::RenewError;
    use crate::pools::tests::{master, seed};

    #[tokio::test]
    async fn nodes_renew_through_their_group_and_removed_ones_do_not() {
        let km: Arc<dyn KeyMaster> = EmbeddedKeyMaster::open_in_memory().unwrap();
        seed(km.as_ref()).await;
        let cluster = master(km.clone()).await;
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let record = |id: &str| cluster.read().nodes[id].record.clone();
        let before = record("n-000");
        let (_, csr) = generate_csr().unwrap();

        // Only through the node's own group.
        let held = before.serial.clone();
        let wrong = cluster.renew_node("g1", "n-000", &csr, &held, &tx).await;
        assert!(
            matches!(wrong, Err(RenewError::WrongGroup { .. })),
            "{wrong:?}"
        );
        let garbage = cluster
            .renew_node("g0", "n-000", "not a csr", &held, &tx)
            .await;
        assert!(
            matches!(garbage, Err(RenewError::BadRequest(_))),
            "{garbage:?}"
        );
        assert!(rx.try_recv().is_err(), "nothing sent for refused requests");

        cluster
            .renew_node("g0", "n-000", &csr, &held, &tx)
            .await
            .unwrap();
        let after = record("n-000");
        assert_ne!(after.serial, before.serial);
        assert_eq!(after.previous_serial, before.serial);
        assert!(after.cert_expires_ms > glory_protocol::now_ms() + 23 * 3600 * 1000);
        // Written to the key master, not only held in memory.
        let key = glory_keymaster::schema::node_key("n-000");
        let stored: glory_keymaster::schema::NodeRecord =
            glory_keymaster::schema::decode(&key, &km.get(&key).await.unwrap().unwrap().value)
                .unwrap();
        assert_eq!(
            (stored.serial.as_str(), stored.previous_serial.as_str()),
            (after.serial.as_str(), before.serial.as_str())
        );
        // The group master learns the serial before the agent gets the certificate.
        match rx.recv().await.unwrap() {
            ClusterToGroup::MemberAdded(m) => {
                assert_eq!(m.serial, after.serial);
                assert_eq!(m.previous_serial.as_deref(), Some(before.serial.as_str()));
            }
            other => panic!("first {other:?}"),
        }
        match rx.recv().await.unwrap() {
            ClusterToGroup::ToAgent {
                node,
                msg: GroupToAgent::Certificate { cert_pem },
            } => {
                assert_eq!(node, "n-000");
                let peer = glory_protocol::tls::parse_peer_cert(
                    glory_protocol::tls::pem_to_der(&cert_pem).unwrap().as_ref(),
                )
                .unwrap();
                assert_eq!(
                    (peer.id.as_str(), peer.serial),
                    ("n-000", after.serial.clone())
                );
            }
            other => panic!("second {other:?}"),
        }

        // The answer was lost, twice, and the agent asks again with a new key from a
        // new session, still holding its first certificate: that stays accepted.
        for _ in 0..2 {
            let (_, again) = generate_csr().unwrap();
            cluster
                .renew_node("g0", "n-000", &again, &held, &tx)
                .await
                .unwrap();
            assert_eq!(record("n-000").previous_serial, before.serial);
        }
        let retried = record("n-000");
        // Once the agent holds the renewed certificate, the previous serial moves on.
        let (_, csr2) = generate_csr().unwrap();
        cluster
            .renew_node("g0", "n-000", &csr2, &retried.serial, &tx)
            .await
            .unwrap();
        let third = record("n-000");
        assert_eq!(third.previous_serial, retried.serial);
        // A serial the record never had is not kept.
        let (_, csr3) = generate_csr().unwrap();
        cluster
            .renew_node("g0", "n-000", &csr3, "f00f", &tx)
            .await
            .unwrap();
        let fourth = record("n-000");
        assert_eq!(fourth.previous_serial, third.serial);

        // Removed: both serials are refused and no certificate is signed.
        cluster.remove_node("n-000").await.unwrap().unwrap();
        assert!(cluster.is_revoked(&fourth.serial) && cluster.is_revoked(&fourth.previous_serial));
        let removed = cluster
            .renew_node("g0", "n-000", &csr3, &fourth.serial, &tx)
            .await;
        assert!(
            matches!(removed, Err(RenewError::NotAMember(_))),
            "{removed:?}"
        );
    }
}
