//! Pool membership: creating and deleting pools, growing them, adding and releasing
//! nodes. Every change is a `write_pool` with the generation checked, and each one
//! tells the pool's watchers.

use crate::events::EventData;
use glory_keymaster::schema::PoolRecord;
use tracing::info;

use super::{check_component, check_name, OpError, OpResultT, Write};
use crate::cluster::Cluster;

/// An elastic pool stays within its bounds: never above `max`, never released below
/// `min` (a failed node's replacement keeps the count).
fn within_bounds(p: &PoolRecord) -> OpResultT<()> {
    let Some(e) = p.elastic else { return Ok(()) };
    let n = p.nodes.len();
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
            return Err(OpError::Invalid(format!(
                "tenant: {} does not exist",
                record.tenant
            )));
        }
        for g in &record.selector.groups {
            if !self.read().groups.contains_key(g) {
                return Err(OpError::Invalid(format!(
                    "selector.groups: group {g} does not exist"
                )));
            }
        }
        let (pool, ()) = self
            .write_pool(true, |book, facts| {
                let planned = book.plan_create(record.clone(), count, facts)?;
                self.within_quota(book, facts, &planned)?;
                Ok((Write::Put(planned), ()))
            })
            .await?;
        let pool = pool.ok_or_else(|| OpError::conflict("pool vanished"))?;
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
        let (_, old) = self
            .write_pool(true, |book, _| {
                let old = book.cloned(name)?;
                Ok((Write::Delete(name.to_string()), old))
            })
            .await?;
        if let Some(master) = &old.master {
            self.stop_master_process(&old.name, master);
        }
        self.forget_failed(&old.name);
        info!(pool = %name, "pool deleted");
        self.events.emit(
            Some((&old.name, &old.tenant)),
            EventData::PoolDeleted {
                nodes: old.nodes.len(),
            },
        );
        Ok(old)
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
        let (pool, added) = self
            .write_pool(true, |book, facts| {
                let (p, added) = book.plan_grow(name, count, facts)?;
                within_bounds(&p)?;
                self.within_quota(book, facts, &p)?;
                Ok((Write::Put(p), added))
            })
            .await?;
        let pool = pool.ok_or_else(|| OpError::conflict("pool vanished"))?;
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
                within_bounds(&p)?;
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

    /// Release one node back to the free set.
    pub async fn release_pool_node(&self, name: &str, node: &str) -> OpResultT<PoolRecord> {
        let (pool, ()) = self
            .write_pool(true, |book, _| {
                let p = book.plan_release(name, node)?;
                within_bounds(&p)?;
                Ok((Write::Put(p), ()))
            })
            .await?;
        let pool = pool.ok_or_else(|| OpError::conflict("pool vanished"))?;
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
