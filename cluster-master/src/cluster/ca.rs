//! The cluster CA: loaded from the key master, created there on first start.

use glory_keymaster::schema::{self, RECORD_VERSION};
use glory_keymaster::{Compare, KeyMaster, Txn, TxnOp};
use glory_protocol::ClusterCa;
use tracing::info;

use super::Cluster;

impl Cluster {
    /// The cluster CA certificate (PEM), for agents to trust.
    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem().to_string()
    }
}

/// Load the cluster CA from the key master, creating it on first start. Two masters
/// racing to create it agree through a create-if-absent transaction.
pub(crate) async fn load_or_create_ca(
    km: &dyn KeyMaster,
    cluster_name: &str,
) -> anyhow::Result<ClusterCa> {
    use anyhow::Context;
    if let Some(kv) = km.get(schema::CA_KEY).await.context("read cluster CA")? {
        let record: schema::CaRecord = schema::decode(&kv.key, &kv.value)?;
        return ClusterCa::from_pem(&record.cert_pem, &record.key_pem).context("load cluster CA");
    }
    let ca = ClusterCa::generate(cluster_name)?;
    let record = schema::CaRecord {
        v: RECORD_VERSION,
        cert_pem: ca.cert_pem().to_string(),
        key_pem: ca.key_pem().to_string(),
    };
    let resp = km
        .txn(Txn {
            compares: vec![Compare::absent(schema::CA_KEY)],
            success: vec![TxnOp::put(schema::CA_KEY, schema::encode(&record))],
            failure: vec![TxnOp::Get {
                key: schema::CA_KEY.to_string(),
            }],
        })
        .await
        .context("store cluster CA")?;
    if resp.succeeded {
        info!("cluster CA created");
        return Ok(ca);
    }
    match resp.results.first() {
        Some(glory_keymaster::OpResult::Get(kvs)) if !kvs.is_empty() => {
            let record: schema::CaRecord = schema::decode(&kvs[0].key, &kvs[0].value)?;
            ClusterCa::from_pem(&record.cert_pem, &record.key_pem).context("load cluster CA")
        }
        _ => anyhow::bail!("cluster CA vanished while creating it"),
    }
}
