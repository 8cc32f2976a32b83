//! Translation between the key master's types and etcd-client's.

use etcd_client::{
    Compare as EtcdCompare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn as EtcdTxn,
    TxnOp as EtcdTxnOp, TxnOpResponse,
};

use super::failure::{Failure, FailureKind};
use crate::{
    CmpOp, Compare, CompareTarget, EventKind, KeyValue, OpResult, Revision, Txn, TxnOp, WatchEvent,
};

/// Keys are UTF-8 strings in the key master; a key written by someone else that is not
/// is an error, not a panic.
pub(super) fn key_value(kv: &etcd_client::KeyValue) -> Result<KeyValue, Failure> {
    let key = String::from_utf8(kv.key().to_vec()).map_err(|e| {
        Failure::new(
            FailureKind::Internal,
            format!(
                "key {:?} is not UTF-8: {e}",
                String::from_utf8_lossy(kv.key())
            ),
        )
    })?;
    Ok(KeyValue {
        key,
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    })
}

pub(super) fn key_values(kvs: &[etcd_client::KeyValue]) -> Result<Vec<KeyValue>, Failure> {
    kvs.iter().map(key_value).collect()
}

/// A delete event from etcd carries the key and the revision of the delete, and zeroes
/// elsewhere: exactly what the trait promises.
pub(super) fn watch_event(event: &etcd_client::Event) -> Result<WatchEvent, Failure> {
    let kind = match event.event_type() {
        etcd_client::EventType::Put => EventKind::Put,
        etcd_client::EventType::Delete => EventKind::Delete,
    };
    let kv = event
        .kv()
        .ok_or_else(|| Failure::new(FailureKind::Internal, "watch event without a key"))?;
    Ok(WatchEvent {
        kind,
        kv: key_value(kv)?,
    })
}

/// The store revision an answer was read at.
pub(super) fn header_revision(
    header: Option<&etcd_client::ResponseHeader>,
) -> Result<Revision, Failure> {
    header
        .map(|header| header.revision())
        .ok_or_else(|| Failure::new(FailureKind::Internal, "answer without a header"))
}

fn compare_op(op: CmpOp) -> CompareOp {
    match op {
        CmpOp::Equal => CompareOp::Equal,
        CmpOp::NotEqual => CompareOp::NotEqual,
        CmpOp::Greater => CompareOp::Greater,
        CmpOp::Less => CompareOp::Less,
    }
}

fn compare(cmp: &Compare) -> EtcdCompare {
    let key = cmp.key.as_bytes();
    let op = compare_op(cmp.op);
    match &cmp.target {
        CompareTarget::Version(version) => EtcdCompare::version(key, op, *version),
        CompareTarget::CreateRevision(rev) => EtcdCompare::create_revision(key, op, *rev),
        CompareTarget::ModRevision(rev) => EtcdCompare::mod_revision(key, op, *rev),
        CompareTarget::Value(value) => EtcdCompare::value(key, op, value.clone()),
    }
}

fn op(op: &TxnOp) -> EtcdTxnOp {
    match op {
        TxnOp::Put { key, value, lease } => {
            let options = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
            EtcdTxnOp::put(key.as_bytes(), value.clone(), options)
        }
        TxnOp::Delete { key } => EtcdTxnOp::delete(key.as_bytes(), None),
        TxnOp::DeletePrefix { prefix } => {
            EtcdTxnOp::delete(prefix.as_bytes(), Some(DeleteOptions::new().with_prefix()))
        }
        TxnOp::Get { key } => EtcdTxnOp::get(key.as_bytes(), None),
        TxnOp::GetPrefix { prefix } => {
            EtcdTxnOp::get(prefix.as_bytes(), Some(GetOptions::new().with_prefix()))
        }
    }
}

/// The etcd transaction for `txn` (already validated).
pub(super) fn txn(txn: &Txn) -> EtcdTxn {
    EtcdTxn::new()
        .when(txn.compares.iter().map(compare).collect::<Vec<_>>())
        .and_then(txn.success.iter().map(op).collect::<Vec<_>>())
        .or_else(txn.failure.iter().map(op).collect::<Vec<_>>())
}

/// The result of one executed op, in the trait's terms.
pub(super) fn op_result(response: &TxnOpResponse) -> Result<OpResult, Failure> {
    match response {
        TxnOpResponse::Put(_) => Ok(OpResult::Put),
        TxnOpResponse::Delete(deleted) => Ok(OpResult::Delete(deleted.deleted())),
        TxnOpResponse::Get(got) => Ok(OpResult::Get(key_values(got.kvs())?)),
        TxnOpResponse::Txn(_) => Err(Failure::new(
            FailureKind::Internal,
            "nested txn result for a txn without nested txns",
        )),
    }
}
