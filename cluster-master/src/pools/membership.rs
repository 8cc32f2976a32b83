//! Pool membership: creating and deleting pools, growing them, adding and releasing
//! nodes. Every change is a `write_pool` with the generation checked, and each one
//! tells the pool's watchers.

use crate::events::EventData;
use glory_keymaster::schema::PoolRecord;
use tracing::info;

use super::alloc::PlanError;
use super::{check_component, check_name, reclaim, OpError, OpResultT, Write};
use crate::cluster::Cluster;

/// An elastic pool stays within its bounds: never above `max`, never released below
/// `min` (a failed node's replacement keeps the count). `incoming`: nodes on their way
/// to it by reclaim, which count.
pub(super) fn within_bounds(p: &PoolRecord, incoming: usize) -> OpResultT<()> {
    let Some(e) = p.elastic else { return Ok(()) };
    let n = p.nodes.len() + incoming;
    if n > e.max {
        return Err(OpError::conflict(format!(
            "size.max: pool {} may hold at most {} nodes; it would hold {n}",
            p.name, e.max
        )));
    }
    if n < e.min {
        return Err(OpError::conflict(format!(
            "size.min: pool {} holds at least {} nodes; it would hold {n}",
            p.name, e.min
        )));
    }
    Ok(())
}

/// The pool a write was about (the first one written).
fn first_written(written: &[Option<PoolRecord>]) -> OpResultT<PoolRecord> {
    written
        .first()
        .cloned()
        .flatten()
        .ok_or_else(|| OpError::conflict("pool vanished"))
}

impl Cluster {
    /// Create a pool with `count` nodes (`None`: every free node that fits).
    pub async fn create_pool(
        &self,
        record: PoolRecord,
        count: Option<usize>,
    ) -> OpResultT<PoolRecord> {
        check_name("name", &record.name)?;
        check_component(&record.component)?;
        if !self.pools.tenants().contains_key(&record.tenant) {
            return Err(OpError::Unprocessable(format!(
                "tenant: {} does not exist",
                record.tenant
            )));
        }
        for g in &record.selector.groups {
            if !self.read().groups.contains_key(g) {
                return Err(OpError::Unprocessable(format!(
                    "selector.groups: group {g} does not exist"
                )));
            }
        }
        let (written, ()) = self
            .write_pools(true, |book, facts| {
                match (book.plan_create(record.clone(), count, facts), count) {
                    (Ok(planned), _) => {
                        self.within_quota(book, facts, &planned)?;
                        Ok((vec![Write::Put(planned)], ()))
                    }
                    // Too few free nodes: within the tenant's guarantee, reclaim.
                    (Err(PlanError::NotEnough(ne)), Some(count)) => {
                        let partial = book.plan_create(record.clone(), Some(ne.fit), facts)?;
                        let writes =
                            self.plan_with_reclaim(book, facts, partial, count - ne.fit, ne)?;
                        Ok((writes, ()))
                    }
                    (Err(e), _) => Err(e.into()),
                }
            })
            .await?;
        let pool = first_written(&written)?;
        self.announce_claims(&pool, &written);
        info!(pool = %pool.name, tenant = %pool.tenant, nodes = pool.nodes.len(), "pool created");
        let at = Some((pool.name.as_str(), pool.tenant.as_str()));
        self.events.emit(
            at,
            EventData::PoolCreated {
                component: pool.component.clone(),
                nodes: pool.nodes.len(),
            },
        );
        self.announce_added(&pool, &pool.nodes);
        Ok(pool)
    }

    pub async fn delete_pool(&self, name: &str) -> OpResultT<PoolRecord> {
        let (written, old) = self
            .write_pools(true, |book, _| {
                let old = book.cloned(name)?;
                // Nodes being reclaimed from it go to their claimants now.
                let mut writes = vec![Write::Delete(name.to_string())];
                writes.extend(
                    reclaim::hand_over(book, &old, &old.nodes)
                        .into_iter()
                        .map(Write::Put),
                );
                Ok((writes, old))
            })
            .await?;
        self.announce_hand_over(&old, &written);
        if let Some(master) = &old.master {
            self.stop_master_process(&old.name, master);
        }
        self.forget_failed(&old.name);
        info!(pool = %name, "pool deleted");
        self.pool_changed.notify_one();
        self.events.emit(
            Some((&old.name, &old.tenant)),
            EventData::PoolDeleted {
                nodes: old.nodes.len(),
            },
        );
        Ok(old)
    }

    /// Events for the nodes of `old` (a pool deleted or releasing) that `written`
    /// handed to their claimants.
    fn announce_hand_over(&self, old: &PoolRecord, written: &[Option<PoolRecord>]) {
        let now = glory_protocol::now_ms();
        for claimant in written.iter().skip(1).flatten() {
            for r in old.reclaims.iter().filter(|r| {
                r.for_pool == claimant.name && claimant.nodes.binary_search(&r.node).is_ok()
            }) {
                self.events.emit(
                    Some((&claimant.name, &claimant.tenant)),
                    EventData::NodeAdded {
                        node: r.node.clone(),
                        replaces: None,
                    },
                );
                let done = EventData::ReclaimCompleted {
                    node: r.node.clone(),
                    from_pool: old.name.clone(),
                    to_pool: claimant.name.clone(),
                    waited_ms: now.saturating_sub(r.since_ms),
                };
                self.events
                    .emit(Some((&old.name, &old.tenant)), done.clone());
                self.events
                    .emit(Some((&claimant.name, &claimant.tenant)), done);
            }
        }
    }

    fn announce_added(&self, pool: &PoolRecord, added: &[String]) {
        for node in added {
            self.events.emit(
                Some((&pool.name, &pool.tenant)),
                EventData::NodeAdded {
                    node: node.clone(),
                    replaces: None,
                },
            );
        }
    }

    /// Add `count` nodes chosen by the pool's selector and spread.
    pub async fn grow_pool(
        &self,
        name: &str,
        count: usize,
    ) -> OpResultT<(PoolRecord, Vec<String>)> {
        let (written, added) = self
            .write_pools(true, |book, facts| {
                match book.plan_grow(name, count, facts) {
                    Ok((p, added)) => {
                        within_bounds(&p, reclaim::incoming(book, name))?;
                        self.within_quota(book, facts, &p)?;
                        Ok((vec![Write::Put(p)], added))
                    }
                    // Too few free nodes: within the tenant's guarantee, reclaim.
                    Err(PlanError::NotEnough(ne)) => {
                        let (partial, added) = book.plan_grow(name, ne.fit, facts)?;
                        let writes =
                            self.plan_with_reclaim(book, facts, partial, count - ne.fit, ne)?;
                        Ok((writes, added))
                    }
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
        let pool = first_written(&written)?;
        self.announce_claims(&pool, &written);
        self.announce_added(&pool, &added);
        Ok((pool, added))
    }

    /// Add the named nodes; returns the pool and the nodes that were not in it yet.
    pub async fn add_pool_nodes(
        &self,
        name: &str,
        nodes: &[String],
    ) -> OpResultT<(PoolRecord, Vec<String>)> {
        let (pool, added) = self
            .write_pool(true, |book, facts| {
                let before = book.get(name).map(|p| p.nodes.clone()).unwrap_or_default();
                let p = book.plan_add_named(name, nodes, facts)?;
                within_bounds(&p, reclaim::incoming(book, name))?;
                self.within_quota(book, facts, &p)?;
                let mut added: Vec<String> = Vec::new();
                for n in nodes {
                    if !before.contains(n) && !added.contains(n) {
                        added.push(n.clone());
                    }
                }
                Ok((Write::Put(p), added))
            })
            .await?;
        let pool = pool.ok_or_else(|| OpError::conflict("pool vanished"))?;
        self.announce_added(&pool, &added);
        Ok((pool, added))
    }

    /// Release one node back to the free set (or, when it is being reclaimed, to its
    /// claimant at once).
    pub async fn release_pool_node(&self, name: &str, node: &str) -> OpResultT<PoolRecord> {
        let (written, old) = self
            .write_pools(true, |book, _| {
                let old = book.cloned(name)?;
                let mut p = book.plan_release(name, node)?;
                within_bounds(&p, reclaim::incoming(book, name))?;
                let given = reclaim::hand_over(book, &old, &[node.to_string()]);
                p.reclaims.retain(|r| r.node != node || given.is_empty());
                let mut writes = vec![Write::Put(p)];
                writes.extend(given.into_iter().map(Write::Put));
                Ok((writes, old))
            })
            .await?;
        self.announce_hand_over(&old, &written);
        let pool = first_written(&written)?;
        // A free node: offer it now rather than at the next tick.
        self.pool_changed.notify_one();
        self.events.emit(
            Some((&pool.name, &pool.tenant)),
            EventData::NodeRemoved {
                node: node.to_string(),
                reason: "released".into(),
            },
        );
        Ok(pool)
    }

    /// Release a node from whatever pool holds it (the node leaves the cluster).
    pub(crate) async fn release_everywhere(&self, node: &str) -> OpResultT<()> {
        let pool = self.pools.book().owner(node).map(str::to_string);
        if let Some(pool) = pool {
            self.release_pool_node(&pool, node).await?;
        }
        Ok(())
    }
}
