//! Leader election on top of kv, txn, watch and leases: etcd's `concurrency.Election`
//! recipe, so that any [`KeyMaster`] backend gets it for free.
//!
//! Every candidate writes `{election}/{lease:016x}` attached to its lease. The key with
//! the smallest create revision leads; every other candidate waits for the deletion of
//! the key created just before its own (no thundering herd), then checks again. A
//! candidate whose lease ends loses its key, and with it its place in the queue.

use crate::{
    CmpOp, Compare, CompareTarget, EventKind, KeyMaster, KeyMasterError, KeyValue, KmResult,
    LeaderKey, LeaseId, OpResult, Txn, TxnOp,
};

fn election_prefix(election: &str) -> String {
    format!("{election}/")
}

fn create_revision_is(key: &str, rev: i64) -> Compare {
    Compare {
        key: key.to_owned(),
        op: CmpOp::Equal,
        target: CompareTarget::CreateRevision(rev),
    }
}

/// Campaign in `election` holding `lease`; resolves once we lead. Campaigning again
/// with the same lease keeps our place in the queue (and updates the value). Fails with
/// `ElectionLost` if our key disappears while we wait (the lease ended).
pub async fn campaign_via_kv<K: KeyMaster + ?Sized>(
    km: &K,
    election: &str,
    value: Vec<u8>,
    lease: LeaseId,
) -> KmResult<LeaderKey> {
    if election.is_empty() {
        return Err(KeyMasterError::Invalid("empty election name".into()));
    }
    if lease == 0 {
        return Err(KeyMasterError::Invalid("campaigning needs a lease".into()));
    }
    let prefix = election_prefix(election);
    let key = format!("{prefix}{lease:016x}");
    let created = km
        .txn(Txn {
            compares: vec![Compare::absent(key.clone())],
            success: vec![TxnOp::Put {
                key: key.clone(),
                value: value.clone(),
                lease,
            }],
            failure: vec![TxnOp::Get { key: key.clone() }],
        })
        .await?;
    let create_revision = if created.succeeded {
        created.revision
    } else {
        let existing = match created.results.first() {
            Some(OpResult::Get(kvs)) => kvs.first().cloned(),
            _ => None,
        };
        let Some(existing) = existing else {
            return Err(KeyMasterError::Internal(format!(
                "campaign: txn read of {key} returned nothing"
            )));
        };
        if existing.value != value {
            // etcd's Proclaim: rewrite the value only if it is still our key.
            let proclaimed = km
                .txn(Txn {
                    compares: vec![create_revision_is(&key, existing.create_revision)],
                    success: vec![TxnOp::Put {
                        key: key.clone(),
                        value: value.clone(),
                        lease,
                    }],
                    failure: vec![],
                })
                .await?;
            if !proclaimed.succeeded {
                return Err(KeyMasterError::ElectionLost(format!(
                    "{key} vanished while campaigning"
                )));
            }
        }
        existing.create_revision
    };
    let leader = LeaderKey {
        election: election.to_owned(),
        key,
        create_revision,
        lease,
    };
    wait_for_turn(km, &prefix, &leader).await?;
    Ok(leader)
}

/// Wait until no key under `prefix` was created before ours.
async fn wait_for_turn<K: KeyMaster + ?Sized>(
    km: &K,
    prefix: &str,
    ours: &LeaderKey,
) -> KmResult<()> {
    loop {
        let (candidates, read_at) = km.get_prefix(prefix).await?;
        let still_ours = candidates
            .iter()
            .any(|kv| kv.key == ours.key && kv.create_revision == ours.create_revision);
        if !still_ours {
            return Err(KeyMasterError::ElectionLost(format!(
                "{} was deleted while campaigning",
                ours.key
            )));
        }
        let predecessor = candidates
            .iter()
            .filter(|kv| kv.create_revision < ours.create_revision)
            .max_by_key(|kv| kv.create_revision);
        let Some(predecessor) = predecessor else {
            return Ok(());
        };
        // Watch the whole election so that the deletion of our own key (lease ended)
        // ends the wait as well.
        let mut watcher = km.watch_prefix(prefix, Some(read_at + 1)).await?;
        loop {
            match watcher.recv().await {
                Some(Ok(event))
                    if event.kind == EventKind::Delete
                        && (event.kv.key == predecessor.key || event.kv.key == ours.key) =>
                {
                    break
                }
                Some(Ok(_)) => continue,
                // History we needed is gone: read the candidates again.
                Some(Err(KeyMasterError::Compacted { .. })) => break,
                Some(Err(error)) => return Err(error),
                None => {
                    return Err(KeyMasterError::Unavailable(format!(
                        "watch on {prefix} ended while campaigning"
                    )))
                }
            }
        }
    }
}

/// The current leader of `election`: the key under it with the smallest create
/// revision, if any.
pub async fn leader_via_kv<K: KeyMaster + ?Sized>(
    km: &K,
    election: &str,
) -> KmResult<Option<KeyValue>> {
    let (candidates, _) = km.get_prefix(&election_prefix(election)).await?;
    Ok(candidates.into_iter().min_by_key(|kv| kv.create_revision))
}

/// Delete our election key, but only if it is still the one we created (a newer
/// campaign with the same lease after a lease loss is not ours to delete).
pub async fn resign_via_kv<K: KeyMaster + ?Sized>(km: &K, leader: &LeaderKey) -> KmResult<()> {
    km.txn(Txn {
        compares: vec![create_revision_is(&leader.key, leader.create_revision)],
        success: vec![TxnOp::delete(leader.key.clone())],
        failure: vec![],
    })
    .await?;
    Ok(())
}
