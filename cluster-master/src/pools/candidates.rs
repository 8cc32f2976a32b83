//! Master candidates: the pool nodes, in election order, that may run the pool's
//! component master.

use crate::events::EventData;
use glory_keymaster::schema::PoolRecord;

use super::{OpError, OpResultT, Write};
use crate::cluster::Cluster;

impl Cluster {
    /// Register master candidates: `nodes` in election order, appended after the
    /// existing ones (`replace`: instead of them).
    pub async fn set_candidates(
        &self,
        name: &str,
        nodes: &[String],
        replace: bool,
    ) -> OpResultT<PoolRecord> {
        self.edit_candidates(name, |p| {
            for n in nodes {
                if p.nodes.binary_search(n).is_err() {
                    return Err(OpError::Unprocessable(format!(
                        "nodes: {n} is not a node of pool {name}"
                    )));
                }
            }
            if replace {
                p.candidates.clear();
            }
            for n in nodes {
                if !p.candidates.contains(n) {
                    p.candidates.push(n.clone());
                }
            }
            Ok(())
        })
        .await
    }

    pub async fn remove_candidate(&self, name: &str, node: &str) -> OpResultT<PoolRecord> {
        self.edit_candidates(name, |p| {
            if !p.candidates.iter().any(|c| c == node) {
                return Err(OpError::NotFound(format!(
                    "{node} is not a candidate of pool {name}"
                )));
            }
            p.candidates.retain(|c| c != node);
            Ok(())
        })
        .await
    }

    /// Change a pool's candidate list, tell its watchers, and wake the reconciler.
    async fn edit_candidates(
        &self,
        name: &str,
        edit: impl Fn(&mut PoolRecord) -> OpResultT<()>,
    ) -> OpResultT<PoolRecord> {
        let (pool, ()) = self
            .write_pool(false, |book, _| {
                let mut p = book.cloned(name)?;
                edit(&mut p)?;
                Ok((Write::Put(p), ()))
            })
            .await?;
        let pool = pool.ok_or_else(|| OpError::conflict("pool vanished"))?;
        self.events.emit(
            Some((&pool.name, &pool.tenant)),
            EventData::CandidatesChanged {
                candidates: pool.candidates.clone(),
            },
        );
        self.pool_changed.notify_one();
        Ok(pool)
    }
}
