//! Pool allocation and master election: pure code over plain data.
//!
//! [`PoolBook`] is the view of every pool and which node belongs to which; the cluster
//! master keeps one in memory, plans changes on it, writes them to the key master with
//! a compare-and-swap on the pool generation, and applies them after the store
//! acknowledged. A node belongs to at most one pool: the book refuses to plan anything
//! else, and the generation check makes two writers that planned on the same view
//! collide instead of both succeeding.

use std::collections::{BTreeMap, HashMap};

use glory_keymaster::schema::{PoolRecord, PoolSelector, Spread};
use glory_keymaster::Revision;

/// What allocation needs to know about a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    pub id: String,
    pub group: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Sum of the disks' sizes.
    pub disk_bytes: u64,
    pub labels: BTreeMap<String, String>,
    /// Only nodes that are `up` are handed out.
    pub up: bool,
}

const GIB: u64 = 1 << 30;

/// Whether a node satisfies a selector (liveness aside).
pub fn fits(selector: &PoolSelector, node: &NodeFacts) -> bool {
    node.cpus >= selector.min_cpus
        && node.memory_bytes >= selector.min_memory_gib.saturating_mul(GIB)
        && node.disk_bytes >= selector.min_disk_gib.saturating_mul(GIB)
        && (selector.groups.is_empty() || selector.groups.contains(&node.group))
        && selector
            .labels
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
}

/// Not enough free nodes fit: how many do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotEnough {
    pub wanted: usize,
    pub fit: usize,
}

/// Choose `count` nodes among `free` (nodes of no pool) for a pool whose current members
/// sit in `current_groups` (one entry per member). With `Spread::Groups` each pick goes
/// to a group holding the fewest of the pool's nodes among the groups that still have a
/// fitting node (ties: the group with more fitting nodes left, then the name), so the
/// pool spreads as evenly as the free nodes allow. Without spread, the pool packs into
/// the groups it already uses, then the groups with the most fitting nodes. Within a
/// group nodes are taken in id order.
pub fn allocate(
    free: &[&NodeFacts],
    current_groups: &[&str],
    selector: &PoolSelector,
    spread: Spread,
    count: usize,
) -> Result<Vec<String>, NotEnough> {
    let mut by_group: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut fit = 0;
    for node in free.iter().filter(|n| n.up && fits(selector, n)) {
        by_group
            .entry(node.group.as_str())
            .or_default()
            .push(node.id.as_str());
        fit += 1;
    }
    if fit < count {
        return Err(NotEnough { wanted: count, fit });
    }
    // Each group's fitting nodes, reversed so `pop` yields them in id order.
    for ids in by_group.values_mut() {
        ids.sort_unstable();
        ids.reverse();
    }
    let mut held: HashMap<&str, usize> = HashMap::new();
    for g in current_groups {
        *held.entry(g).or_insert(0) += 1;
    }
    let mut chosen = Vec::with_capacity(count);
    match spread {
        Spread::Groups => {
            while chosen.len() < count {
                let Some((group, ids)) = by_group
                    .iter_mut()
                    .filter(|(_, ids)| !ids.is_empty())
                    .min_by(|(ga, a), (gb, b)| {
                        let (ha, hb) = (held.get(*ga).copied(), held.get(*gb).copied());
                        ha.unwrap_or(0)
                            .cmp(&hb.unwrap_or(0))
                            .then(b.len().cmp(&a.len()))
                            .then(ga.cmp(gb))
                    })
                else {
                    break; // cannot happen: fit >= count
                };
                if let Some(id) = ids.pop() {
                    chosen.push(id.to_string());
                    *held.entry(group).or_insert(0) += 1;
                }
            }
        }
        Spread::None => {
            let mut groups: Vec<(&str, Vec<&str>)> = by_group.into_iter().collect();
            groups.sort_by(|(ga, a), (gb, b)| {
                let (ha, hb) = (held.get(ga).copied(), held.get(gb).copied());
                hb.unwrap_or(0)
                    .cmp(&ha.unwrap_or(0))
                    .then(b.len().cmp(&a.len()))
                    .then(ga.cmp(gb))
            });
            'outer: for (_, mut ids) in groups {
                while let Some(id) = ids.pop() {
                    if chosen.len() == count {
                        break 'outer;
                    }
                    chosen.push(id.to_string());
                }
            }
        }
    }
    Ok(chosen)
}

/// The first candidate, in order, that is live and not `exclude`.
pub fn elect<'a>(
    candidates: &'a [String],
    exclude: Option<&str>,
    live: impl Fn(&str) -> bool,
) -> Option<&'a str> {
    candidates
        .iter()
        .map(String::as_str)
        .find(|c| Some(*c) != exclude && live(c))
}

/// Why a planned change cannot happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("pool {0} does not exist")]
    NoPool(String),
    #[error("pool {0} already exists")]
    Exists(String),
    #[error("not enough free nodes fit: wanted {}, {} fit", .0.wanted, .0.fit)]
    NotEnough(NotEnough),
    #[error("node {0} does not exist")]
    NoNode(String),
    #[error("node {node} belongs to pool {pool}")]
    Taken { node: String, pool: String },
    #[error("node {node} is not {why}")]
    Unfit { node: String, why: &'static str },
    #[error("node {node} is not in pool {pool}")]
    NotMember { node: String, pool: String },
}

/// Every pool with the key master revision it was read or written at, and the owner of
/// every pool node.
#[derive(Clone, Debug, Default)]
pub struct PoolBook {
    pools: BTreeMap<String, (PoolRecord, Revision)>,
    owner: HashMap<String, String>,
    /// Mod revision of the pool generation key this view matches (0: never written).
    pub generation: Revision,
}

impl PoolBook {
    pub fn get(&self, name: &str) -> Option<&PoolRecord> {
        self.pools.get(name).map(|(p, _)| p)
    }

    /// A copy of pool `name` to plan a change on.
    pub fn cloned(&self, name: &str) -> Result<PoolRecord, PlanError> {
        self.get(name)
            .cloned()
            .ok_or_else(|| PlanError::NoPool(name.to_string()))
    }

    /// Names of `tenant`'s pools.
    pub fn tenant_pools(&self, tenant: &str) -> Vec<String> {
        self.pools()
            .filter(|p| p.tenant == tenant)
            .map(|p| p.name.clone())
            .collect()
    }

    pub fn revision(&self, name: &str) -> Revision {
        self.pools.get(name).map(|(_, r)| *r).unwrap_or(0)
    }

    pub fn pools(&self) -> impl Iterator<Item = &PoolRecord> {
        self.pools.values().map(|(p, _)| p)
    }

    pub fn owner(&self, node: &str) -> Option<&str> {
        self.owner.get(node).map(String::as_str)
    }

    /// Store a pool as written at `rev` (replacing its older version).
    pub fn put(&mut self, record: PoolRecord, rev: Revision) {
        self.remove(&record.name);
        for node in &record.nodes {
            self.owner.insert(node.clone(), record.name.clone());
        }
        self.pools.insert(record.name.clone(), (record, rev));
    }

    pub fn remove(&mut self, name: &str) -> Option<PoolRecord> {
        let (old, _) = self.pools.remove(name)?;
        for node in &old.nodes {
            if self.owner.get(node).is_some_and(|p| p == name) {
                self.owner.remove(node);
            }
        }
        Some(old)
    }

    /// Nodes of no pool.
    fn free<'a>(&self, nodes: &'a [NodeFacts]) -> Vec<&'a NodeFacts> {
        nodes
            .iter()
            .filter(|n| !self.owner.contains_key(&n.id))
            .collect()
    }

    /// How many free nodes are up and fit `selector`.
    pub fn fitting(&self, nodes: &[NodeFacts], selector: &PoolSelector) -> usize {
        self.free(nodes)
            .iter()
            .filter(|n| n.up && fits(selector, n))
            .count()
    }

    /// A new pool with `count` nodes chosen by its selector and spread (`None`: every
    /// free node that fits, at least one).
    pub fn plan_create(
        &self,
        mut pool: PoolRecord,
        count: Option<usize>,
        nodes: &[NodeFacts],
    ) -> Result<PoolRecord, PlanError> {
        if self.pools.contains_key(&pool.name) {
            return Err(PlanError::Exists(pool.name));
        }
        let count = match count {
            Some(n) => n,
            None => self.fitting(nodes, &pool.selector).max(1),
        };
        let free = self.free(nodes);
        pool.nodes = allocate(&free, &[], &pool.selector, pool.spread, count)
            .map_err(PlanError::NotEnough)?;
        pool.nodes.sort();
        Ok(pool)
    }

    fn member_groups<'a>(pool: &PoolRecord, nodes: &'a [NodeFacts]) -> Vec<&'a str> {
        nodes
            .iter()
            .filter(|n| pool.nodes.binary_search(&n.id).is_ok())
            .map(|n| n.group.as_str())
            .collect()
    }

    /// `pool` grown by `count` nodes chosen like at creation.
    pub fn plan_grow(
        &self,
        name: &str,
        count: usize,
        nodes: &[NodeFacts],
    ) -> Result<(PoolRecord, Vec<String>), PlanError> {
        let mut pool = self.cloned(name)?;
        let free = self.free(nodes);
        let groups = Self::member_groups(&pool, nodes);
        let added = allocate(&free, &groups, &pool.selector, pool.spread, count)
            .map_err(PlanError::NotEnough)?;
        pool.nodes.extend(added.iter().cloned());
        pool.nodes.sort();
        Ok((pool, added))
    }

    /// `pool` with the named nodes added: each must exist, be free, up and fit.
    pub fn plan_add_named(
        &self,
        name: &str,
        wanted: &[String],
        nodes: &[NodeFacts],
    ) -> Result<PoolRecord, PlanError> {
        let mut pool = self.cloned(name)?;
        for id in wanted {
            let node = nodes
                .iter()
                .find(|n| &n.id == id)
                .ok_or_else(|| PlanError::NoNode(id.clone()))?;
            if let Some(owner) = self.owner(id) {
                return Err(PlanError::Taken {
                    node: id.clone(),
                    pool: owner.to_string(),
                });
            }
            if !node.up {
                return Err(PlanError::Unfit {
                    node: id.clone(),
                    why: "up",
                });
            }
            if !fits(&pool.selector, node) {
                return Err(PlanError::Unfit {
                    node: id.clone(),
                    why: "matching the pool's selector",
                });
            }
            if !pool.nodes.contains(id) {
                pool.nodes.push(id.clone());
            }
        }
        pool.nodes.sort();
        Ok(pool)
    }

    /// `pool` without `node` (it returns to the free set; a candidate entry goes too).
    pub fn plan_release(&self, name: &str, node: &str) -> Result<PoolRecord, PlanError> {
        let mut pool = self.cloned(name)?;
        let Ok(i) = pool.nodes.binary_search_by(|n| n.as_str().cmp(node)) else {
            return Err(PlanError::NotMember {
                node: node.to_string(),
                pool: name.to_string(),
            });
        };
        pool.nodes.remove(i);
        pool.candidates.retain(|c| c != node);
        Ok(pool)
    }

    /// `pool` with the failed `node` swapped for a fitting free node, placed as a grow
    /// would place it.
    pub fn plan_replace(
        &self,
        name: &str,
        node: &str,
        nodes: &[NodeFacts],
    ) -> Result<(PoolRecord, String), PlanError> {
        let mut pool = self.plan_release(name, node)?;
        let free = self.free(nodes);
        let groups = Self::member_groups(&pool, nodes);
        let added = allocate(&free, &groups, &pool.selector, pool.spread, 1)
            .map_err(PlanError::NotEnough)?;
        let new = added.into_iter().next().unwrap_or_default();
        pool.nodes.push(new.clone());
        pool.nodes.sort();
        Ok((pool, new))
    }
}

#[cfg(test)]
mod tests;
