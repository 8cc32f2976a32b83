//! The cluster master's access to the key master: every write counted, and whether
//! the key master answers, remembered and probed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use glory_keymaster::schema;
use glory_keymaster::{
    CmpOp, Compare, CompareTarget, KeyMaster, KeyMasterError, LeaderKey, OpResult, Txn, TxnOp,
};
use tracing::{info, warn};

use super::Cluster;

impl Cluster {
    /// Delete `key` (fenced, like every write): whether it was there.
    pub(crate) async fn km_delete(&self, key: String) -> Result<bool, KeyMasterError> {
        let resp = self.km_txn(Txn::alone(TxnOp::Delete { key })).await?;
        Ok(matches!(resp.results.first(), Some(OpResult::Delete(n)) if *n > 0))
    }

    /// Fence every write from now on with `leader`: it holds only while this key,
    /// created at this revision, is still there.
    pub(crate) fn set_fence(&self, leader: &LeaderKey) {
        *self.fence.write().unwrap_or_else(|p| p.into_inner()) =
            Some((leader.key.clone(), leader.create_revision));
    }

    /// Run a transaction, counting its writes and noting whether the key master
    /// answered. Fenced: it also requires our leadership key to be the one we won
    /// (`ElectionLost`, nothing written, when another master may lead). A caller's
    /// `failure` branch only reads: it runs when the fence fails too.
    pub(crate) async fn km_txn(
        &self,
        mut txn: Txn,
    ) -> Result<glory_keymaster::TxnResponse, KeyMasterError> {
        let writes = txn.success.len().max(txn.failure.len()) as u64;
        let fence = self.fence.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((key, revision)) = &fence {
            txn.compares.push(Compare {
                key: key.clone(),
                op: CmpOp::Equal,
                target: CompareTarget::CreateRevision(*revision),
            });
            // On failure, whether it was the fence or the caller's own compares.
            txn.failure.push(TxnOp::Get { key: key.clone() });
        }
        let mut result = self.km.txn(txn).await;
        if let (Some((key, revision)), Ok(resp)) = (&fence, &mut result) {
            if !resp.succeeded {
                let ours = match resp.results.pop() {
                    Some(OpResult::Get(kvs)) => {
                        kvs.first().map(|kv| kv.create_revision) == Some(*revision)
                    }
                    _ => false,
                };
                if !ours {
                    warn!(leader_key = %key, "a write was fenced off: this cluster master's leadership key is gone");
                    self.fenced.notify_one();
                    return Err(KeyMasterError::ElectionLost(
                        "this cluster master no longer holds its leadership (its lease ran out); nothing was written, ask the leader".into(),
                    ));
                }
            }
        }
        match &result {
            Ok(_) => {
                self.km_writes.fetch_add(writes, Ordering::Relaxed);
                self.km_available.store(true, Ordering::Relaxed);
            }
            Err(KeyMasterError::Unavailable(_)) => {
                self.km_available.store(false, Ordering::Relaxed)
            }
            Err(_) => {}
        }
        result
    }

    /// Write a node's record if the node still holds its identity: `false` when it was
    /// removed or enrolled again meanwhile (a stale copy is never written back).
    pub(crate) async fn store_node_record(
        &self,
        record: &glory_keymaster::schema::NodeRecord,
    ) -> Result<bool, KeyMasterError> {
        let resp = self
            .km_txn(Txn {
                compares: vec![Compare::value(
                    schema::identity_key(&record.identity()),
                    record.id.clone().into_bytes(),
                )],
                success: vec![TxnOp::put(
                    schema::node_key(&record.id),
                    schema::encode(record),
                )],
                failure: vec![],
            })
            .await?;
        Ok(resp.succeeded)
    }

    /// Whether the last key master call succeeded.
    pub fn keymaster_available(&self) -> bool {
        self.km_available.load(Ordering::Relaxed)
    }

    /// Probe the key master (a read), remembering whether it answered.
    pub(crate) async fn probe_keymaster(&self, timeout: Duration) -> bool {
        let ok = matches!(
            tokio::time::timeout(timeout, self.km.get(schema::CA_KEY)).await,
            Ok(Ok(_))
        );
        let was = self.km_available.swap(ok, Ordering::Relaxed);
        if was && !ok {
            warn!("key master unavailable: serving from memory, refusing changes that need it");
        } else if !was && ok {
            info!("key master available again");
        }
        ok
    }

    /// Monitoring samples the group masters stored and sample batches they dropped,
    /// as they last reported (each counts from its own start).
    pub fn monitoring_samples(&self) -> (u64, u64) {
        self.read().groups.values().fold((0, 0), |(i, d), g| {
            (i + g.samples_ingested, d + g.samples_dropped)
        })
    }

    /// Bytes the group masters' statistics stores hold, as they last reported.
    pub fn stats_store_bytes(&self) -> u64 {
        self.read()
            .groups
            .values()
            .map(|g| g.stats_store_bytes)
            .sum()
    }

    /// Key master writes (operations) made by this master since it started.
    pub fn keymaster_writes(&self) -> u64 {
        self.km_writes.load(Ordering::Relaxed)
    }

    /// The key master this cluster master writes to.
    pub fn keymaster(&self) -> Arc<dyn KeyMaster> {
        self.km.clone()
    }
}
