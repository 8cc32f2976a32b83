//! Request checks shared by every backend, so that all of them refuse the same requests
//! with the same error before anything is written.

use std::collections::HashSet;
use std::time::Duration;

use crate::{KeyMasterError, KmResult, Txn, TxnOp};

/// Shorter leases would expire between two passes of the embedded lease reaper, and etcd
/// counts TTLs in whole seconds anyway.
pub(crate) const MIN_LEASE_TTL: Duration = Duration::from_millis(100);

pub(crate) fn require_key(key: &str) -> KmResult<()> {
    if key.is_empty() {
        return Err(KeyMasterError::Invalid("empty key".into()));
    }
    Ok(())
}

pub(crate) fn check_lease_ttl(ttl: Duration) -> KmResult<()> {
    if ttl < MIN_LEASE_TTL {
        return Err(KeyMasterError::Invalid(format!(
            "lease TTL {ttl:?} is below the minimum of {MIN_LEASE_TTL:?}"
        )));
    }
    Ok(())
}

/// etcd refuses a transaction branch that writes the same key twice or both puts and
/// deletes a key; so does every backend, so that all of them accept the same
/// transactions.
pub(crate) fn validate_txn(txn: &Txn) -> KmResult<()> {
    for cmp in &txn.compares {
        require_key(&cmp.key)?;
    }
    for branch in [&txn.success, &txn.failure] {
        let mut puts: HashSet<&str> = HashSet::new();
        for op in branch {
            match op {
                TxnOp::Put { key, .. } => {
                    require_key(key)?;
                    if !puts.insert(key.as_str()) {
                        return Err(KeyMasterError::Invalid(format!(
                            "duplicate key {key:?} in one txn branch"
                        )));
                    }
                }
                TxnOp::Delete { key } | TxnOp::Get { key } => require_key(key)?,
                TxnOp::DeletePrefix { .. } | TxnOp::GetPrefix { .. } => {}
            }
        }
        for op in branch {
            let overlaps = match op {
                TxnOp::Delete { key } => puts.contains(key.as_str()),
                TxnOp::DeletePrefix { prefix } => {
                    puts.iter().any(|key| key.starts_with(prefix.as_str()))
                }
                _ => false,
            };
            if overlaps {
                return Err(KeyMasterError::Invalid(format!(
                    "{op:?} deletes a key put in the same txn branch"
                )));
            }
        }
    }
    Ok(())
}
