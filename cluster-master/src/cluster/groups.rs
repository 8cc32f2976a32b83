//! The group directory: group records in the key master, and the enrollment and
//! certificates of group masters.

use std::net::SocketAddr;

use glory_keymaster::schema::{self, BootstrapScope, GroupRecord, RECORD_VERSION};
use glory_keymaster::{KeyMasterError, Txn, TxnOp};
use glory_protocol::{CertRole, CertSubject, Enrolled, Refusal, RefusalCode};
use tracing::info;

use super::{refusal, unavailable, Cluster};
use crate::registry::GroupEntry;

impl Cluster {
    /// Make sure a group record exists with `master_addr`; creates the group.
    pub(crate) async fn ensure_group(
        &self,
        group: &str,
        master_addr: Option<SocketAddr>,
    ) -> Result<(), KeyMasterError> {
        let current = self.read().groups.get(group).map(|g| g.record.clone());
        let record = match current {
            Some(record) if master_addr.is_none() || record.master_addr == master_addr => {
                return Ok(())
            }
            Some(record) => GroupRecord {
                master_addr,
                ..record
            },
            None => GroupRecord {
                v: RECORD_VERSION,
                id: group.to_string(),
                master_addr,
                created_ms: glory_protocol::now_ms(),
            },
        };
        self.km_txn(Txn {
            success: vec![TxnOp::put(
                schema::group_key(group),
                schema::encode(&record),
            )],
            ..Default::default()
        })
        .await?;
        let mut reg = self.write();
        match reg.groups.get_mut(group) {
            Some(entry) => entry.record = record,
            None => {
                info!(group = %group, "group created");
                reg.groups
                    .insert(group.to_string(), GroupEntry::new(record));
            }
        }
        Ok(())
    }

    /// Enroll a group master: check the token, create its group, sign its key.
    pub(crate) async fn enroll_group_master(
        &self,
        token: &str,
        group: &str,
        listen: SocketAddr,
        csr_pem: &str,
    ) -> Result<Enrolled, Refusal> {
        if group.is_empty()
            || group.len() > 64
            || !group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(refusal(
                RefusalCode::BadRequest,
                "group name must be 1-64 letters, digits, '-' or '_'",
            ));
        }
        self.bootstrap_token(token, BootstrapScope::GroupMaster)
            .await?;
        let subject = CertSubject {
            id: group.to_string(),
            role: CertRole::GroupMaster,
            group: None,
        };
        let signed = self
            .ca
            .sign_csr(csr_pem, &subject, self.settings.cert_validity)
            .map_err(|e| refusal(RefusalCode::BadRequest, e.to_string()))?;
        // The address is recorded when the master registers and the cluster master knows
        // whether it leads or stands by.
        self.ensure_group(group, None).await.map_err(unavailable)?;
        info!(group = %group, %listen, "group master enrolled");
        Ok(Enrolled {
            id: group.to_string(),
            group: Some(group.to_string()),
            group_masters: vec![listen],
            cert_pem: signed.cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
        })
    }

    /// Issue a group master identity directly (masters started in the same process).
    pub fn issue_group_master_identity(
        &self,
        group: &str,
    ) -> anyhow::Result<glory_protocol::TlsIdentity> {
        let subject = CertSubject {
            id: group.to_string(),
            role: CertRole::GroupMaster,
            group: None,
        };
        Ok(self.ca.issue(&subject, self.settings.cert_validity)?.0)
    }
}
