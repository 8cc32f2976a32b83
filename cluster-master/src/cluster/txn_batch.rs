//! Group commit of small, independent transactions that arrive together (enrollments in
//! a storm): whoever finds no batch being committed commits everything waiting as one
//! key master transaction, then what arrived meanwhile, until nothing waits. Alone, a
//! transaction goes at once; under load, the key master sees a few large transactions
//! instead of thousands of small ones. The embedded store commits its writes in groups
//! already; etcd does not, and a 3-member etcd on a busy machine answers each
//! transaction in milliseconds, which thousands of enrollments a second queue behind.
//!
//! Transactions are merged only when none has a `failure` branch and no key is written
//! twice (etcd refuses duplicate keys in one transaction). A merged transaction whose
//! compares fail is run again one transaction at a time, so each caller learns its own
//! outcome; an unavailable or fenced key master is the same answer for all of them.

use std::collections::HashSet;
use std::sync::Mutex;

use glory_keymaster::{KeyMasterError, OpResult, Txn, TxnOp, TxnResponse};
use tokio::sync::oneshot;

use super::Cluster;

/// Most operations (writes, and separately compares) merged into one transaction: etcd
/// refuses more than 128 by default (`--max-txn-ops`), and the fence adds a compare.
pub(crate) const MAX_OPS: usize = 120;

type Answer = Result<TxnResponse, KeyMasterError>;

struct Waiting {
    txn: Txn,
    done: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Waiting>,
    committing: bool,
}

/// The transactions waiting for a group commit.
#[derive(Default)]
pub(crate) struct TxnBatch {
    state: Mutex<State>,
}

impl TxnBatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The size of a transaction in the terms of etcd's limit.
fn ops(txn: &Txn) -> usize {
    txn.success.len().max(txn.compares.len()).max(1)
}

/// The next batch off the queue: waiting transactions, oldest first, while they fit.
fn next_batch(waiting: &mut Vec<Waiting>) -> Vec<Waiting> {
    let (mut total, mut count) = (0, 0);
    for w in waiting.iter() {
        let size = ops(&w.txn);
        if count > 0 && total + size > MAX_OPS {
            break;
        }
        total += size;
        count += 1;
    }
    waiting.drain(..count).collect()
}

fn written_key(op: &TxnOp) -> Option<&str> {
    match op {
        TxnOp::Put { key, .. } | TxnOp::Delete { key } => Some(key),
        _ => None,
    }
}

/// One transaction doing what all of `txns` do, if they can be merged.
fn merge(txns: &[&Txn]) -> Option<Txn> {
    let mut merged = Txn::default();
    let mut keys = HashSet::new();
    for txn in txns {
        if !txn.failure.is_empty() {
            return None;
        }
        for op in &txn.success {
            if matches!(op, TxnOp::DeletePrefix { .. }) {
                return None;
            }
            if let Some(key) = written_key(op) {
                if !keys.insert(key) {
                    return None;
                }
            }
        }
        merged.compares.extend(txn.compares.iter().cloned());
        merged.success.extend(txn.success.iter().cloned());
    }
    Some(merged)
}

/// The merged answer cut back into each transaction's own.
fn split(resp: TxnResponse, txns: &[&Txn]) -> Vec<TxnResponse> {
    let mut results = resp.results.into_iter();
    txns.iter()
        .map(|txn| TxnResponse {
            succeeded: true,
            revision: resp.revision,
            results: results
                .by_ref()
                .take(txn.success.len())
                .collect::<Vec<OpResult>>(),
        })
        .collect()
}

/// Clears the committing flag if its holder's future is dropped mid-way, failing what
/// still waits (a caller then sees the key master as unavailable and retries) rather
/// than leaving it waiting for a commit that nobody runs.
struct Committer<'a> {
    batch: &'a TxnBatch,
    finished: bool,
}

impl Drop for Committer<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = self.batch.lock();
        state.committing = false;
        for w in state.waiting.drain(..) {
            let _ = w.done.send(Err(KeyMasterError::Unavailable(
                "the group commit this write waited for was abandoned; retry".into(),
            )));
        }
    }
}

impl Cluster {
    /// [`Cluster::km_txn`] with group commit, for small transactions that do not depend
    /// on each other (see the module's documentation). The answer's `results` are the
    /// transaction's own.
    pub(crate) async fn km_txn_grouped(&self, txn: Txn) -> Answer {
        let (done, answer) = oneshot::channel();
        let lead = {
            let mut state = self.txn_batch.lock();
            state.waiting.push(Waiting { txn, done });
            !std::mem::replace(&mut state.committing, true)
        };
        if lead {
            let mut committer = Committer {
                batch: &self.txn_batch,
                finished: false,
            };
            loop {
                let batch = {
                    let mut state = self.txn_batch.lock();
                    if state.waiting.is_empty() {
                        state.committing = false;
                        break;
                    }
                    next_batch(&mut state.waiting)
                };
                self.commit_batch(batch).await;
            }
            committer.finished = true;
        }
        answer.await.unwrap_or_else(|_| {
            Err(KeyMasterError::Unavailable(
                "the group commit this write waited for was abandoned; retry".into(),
            ))
        })
    }

    async fn commit_batch(&self, batch: Vec<Waiting>) {
        if batch.len() > 1 {
            let txns: Vec<&Txn> = batch.iter().map(|w| &w.txn).collect();
            if let Some(merged) = merge(&txns) {
                match self.km_txn(merged).await {
                    Ok(resp) if resp.succeeded => {
                        let answers = split(resp, &txns);
                        for (w, answer) in batch.into_iter().zip(answers) {
                            let _ = w.done.send(Ok(answer));
                        }
                        return;
                    }
                    Err(e @ (KeyMasterError::Unavailable(_) | KeyMasterError::ElectionLost(_))) => {
                        for w in batch {
                            let _ = w.done.send(Err(e.clone()));
                        }
                        return;
                    }
                    // A compare of one of them failed, or the store refused the merge:
                    // each on its own.
                    _ => {}
                }
            }
        }
        for w in batch {
            let answer = self.km_txn(w.txn).await;
            let _ = w.done.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glory_keymaster::Compare;

    fn put(key: &str) -> TxnOp {
        TxnOp::put(key.to_string(), b"v".to_vec())
    }

    fn enrollment(id: &str) -> Txn {
        Txn {
            compares: vec![Compare::absent(format!("/removed/{id}"))],
            success: vec![
                put(&format!("/n/{id}")),
                put(&format!("/s/{id}")),
                put(&format!("/i/{id}")),
            ],
            failure: vec![],
        }
    }

    #[test]
    fn merges_compares_and_writes_in_order() {
        let (a, b) = (enrollment("a"), enrollment("b"));
        let merged = merge(&[&a, &b]).unwrap();
        assert_eq!(merged.compares.len(), 2);
        assert_eq!(merged.success.len(), 6);
        assert_eq!(written_key(&merged.success[3]), Some("/n/b"));
    }

    #[test]
    fn refuses_to_merge_a_key_written_twice_or_a_failure_branch() {
        let a = enrollment("a");
        assert!(
            merge(&[&a, &a.clone()]).is_none(),
            "etcd refuses duplicate keys"
        );
        let mut b = enrollment("b");
        b.failure.push(TxnOp::Get { key: "/x".into() });
        assert!(merge(&[&a, &b]).is_none());
    }

    #[test]
    fn batches_stop_short_of_the_store_limit() {
        let mut waiting: Vec<Waiting> = (0..100)
            .map(|i| Waiting {
                txn: enrollment(&i.to_string()),
                done: oneshot::channel().0,
            })
            .collect();
        let first = next_batch(&mut waiting);
        assert_eq!(first.len(), MAX_OPS / 3);
        assert_eq!(waiting.len(), 100 - MAX_OPS / 3);
        // One transaction larger than the limit still goes, alone.
        let mut big = vec![Waiting {
            txn: Txn {
                success: (0..200).map(|i| put(&i.to_string())).collect(),
                ..Txn::default()
            },
            done: oneshot::channel().0,
        }];
        assert_eq!(next_batch(&mut big).len(), 1);
    }

    #[test]
    fn a_merged_answer_is_cut_back_per_transaction() {
        let (a, b) = (enrollment("a"), enrollment("b"));
        let resp = TxnResponse {
            succeeded: true,
            revision: 7,
            results: (0..6).map(|_| OpResult::Put).collect(),
        };
        let answers = split(resp, &[&a, &b]);
        assert_eq!(answers.len(), 2);
        assert!(answers
            .iter()
            .all(|r| r.results.len() == 3 && r.revision == 7));
    }
}
