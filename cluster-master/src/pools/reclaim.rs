//! Reclaim (issue 21), pure: nodes a tenant holds beyond its guarantee are borrowed,
//! and when another tenant needs nodes within its own guarantee and none are free,
//! borrowed nodes are marked on their pool ([`Reclaim`]) and move after a grace
//! period. Everything here plans on a [`PoolBook`] and returns the pools to write; the
//! cluster master writes them in one compare-and-swap.
//!
//! Choosing victims: only tenants above their guarantee give, and never below it. The
//! pools whose nodes are plainly borrowed (an elastic pool above its `min`) give
//! first, then the pools with the most nodes to give, so as few pools (and component
//! masters) as possible are disturbed; a pool's master node goes only when no other
//! node will do; within a pool, nodes leave from the groups where it holds the most,
//! which keeps a spread pool spread.
//!
//! While a reclaim waits, a free node that fits stands in for it (nobody is
//! disturbed); a reclaimed node that fails or leaves is swapped for another borrowed
//! node with the same deadline, so the claimant still gets its guarantee in time.

use std::collections::{BTreeMap, HashMap, HashSet};

use glory_keymaster::schema::{PoolRecord, Reclaim, TenantRecord};

use super::alloc::{fits, NodeFacts, PoolBook};

/// Nodes `tenant`'s pools hold, with `planned` in place of the pool of its name.
fn held(book: &PoolBook, tenant: &str, planned: Option<&PoolRecord>) -> u64 {
    book.pools()
        .filter(|p| p.tenant == tenant && planned.is_none_or(|q| q.name != p.name))
        .chain(planned.filter(|q| q.tenant == tenant))
        .map(|p| p.nodes.len() as u64)
        .sum()
}

fn guarantee(tenants: &BTreeMap<String, TenantRecord>, tenant: &str) -> u64 {
    tenants
        .get(tenant)
        .and_then(|t| t.quota.as_ref())
        .map_or(0, |q| q.guaranteed_nodes)
}

/// Reclaims under way, as (victim tenant, claimant tenant) per entry.
fn pending(book: &PoolBook) -> impl Iterator<Item = (&str, &Reclaim)> {
    book.pools()
        .flat_map(|p| p.reclaims.iter().map(move |r| (p.tenant.as_str(), r)))
}

/// Reclaims bringing nodes to `pool`, each with the pool the node comes from.
pub fn incoming_from<'a>(
    book: &'a PoolBook,
    pool: &'a str,
) -> impl Iterator<Item = (&'a str, &'a Reclaim)> {
    book.pools()
        .flat_map(|p| p.reclaims.iter().map(move |r| (p.name.as_str(), r)))
        .filter(move |(_, r)| r.for_pool == pool)
}

/// Nodes on their way to `pool` by reclaim.
pub fn incoming(book: &PoolBook, pool: &str) -> usize {
    incoming_from(book, pool).count()
}

/// Reclaims under way for `tenant` (nodes coming to it) and from it (nodes leaving it).
pub fn pending_for(book: &PoolBook, tenant: &str) -> (usize, usize) {
    pending(book).fold((0, 0), |(inc, out), (victim, r)| {
        (
            inc + usize::from(r.for_tenant == tenant),
            out + usize::from(victim == tenant),
        )
    })
}

/// How many more nodes `tenant` may take by reclaim: its guarantee, less what it
/// holds (with `planned`) and what is already coming to it.
pub fn entitlement(
    book: &PoolBook,
    tenants: &BTreeMap<String, TenantRecord>,
    tenant: &str,
    planned: Option<&PoolRecord>,
) -> u64 {
    let coming = pending(book)
        .filter(|(_, r)| r.for_tenant == tenant)
        .count() as u64;
    guarantee(tenants, tenant).saturating_sub(held(book, tenant, planned) + coming)
}

/// Up to `count` borrowed nodes that fit `claimant`'s selector, as (pool, node), in
/// the order described at the top. Nodes in `exclude` are left alone.
pub fn pick(
    book: &PoolBook,
    facts: &[NodeFacts],
    tenants: &BTreeMap<String, TenantRecord>,
    claimant: &PoolRecord,
    count: usize,
    exclude: &HashSet<String>,
) -> Vec<(String, String)> {
    let by_id: HashMap<&str, &NodeFacts> = facts.iter().map(|n| (n.id.as_str(), n)).collect();
    // What each other tenant can give: what it holds beyond its guarantee, less what
    // is already being reclaimed from it.
    let mut budget: HashMap<&str, u64> = HashMap::new();
    for t in tenants.keys().filter(|t| **t != claimant.tenant) {
        let out = pending(book).filter(|(v, _)| v == t).count() as u64;
        let give = held(book, t, None)
            .saturating_sub(out)
            .saturating_sub(guarantee(tenants, t));
        if give > 0 {
            budget.insert(t.as_str(), give);
        }
    }
    struct Giver<'a> {
        pool: &'a PoolRecord,
        above_min: bool,
        /// Eligible nodes, the master last.
        nodes: Vec<&'a str>,
    }
    let mut givers: Vec<Giver> = book
        .pools()
        .filter(|p| p.name != claimant.name && budget.contains_key(p.tenant.as_str()))
        .filter_map(|p| {
            let marked: HashSet<&str> = p.reclaims.iter().map(|r| r.node.as_str()).collect();
            let mut per_group: HashMap<&str, usize> = HashMap::new();
            for id in &p.nodes {
                if let Some(n) = by_id.get(id.as_str()) {
                    *per_group.entry(n.group.as_str()).or_default() += 1;
                }
            }
            let master = p.master.as_ref().map(|m| m.node.as_str());
            let mut nodes: Vec<(bool, bool, usize, &str)> = p
                .nodes
                .iter()
                .filter(|id| !marked.contains(id.as_str()) && !exclude.contains(*id))
                .filter_map(|id| by_id.get(id.as_str()).map(|n| (id, n)))
                .filter(|(_, n)| n.up && fits(&claimant.selector, n))
                .map(|(id, n)| {
                    (
                        Some(id.as_str()) == master,
                        p.candidates.contains(id),
                        usize::MAX - per_group[n.group.as_str()],
                        id.as_str(),
                    )
                })
                .collect();
            nodes.sort_unstable();
            let above_min = p
                .elastic
                .is_some_and(|e| p.nodes.len().saturating_sub(p.reclaims.len()) > e.min);
            (!nodes.is_empty()).then(|| Giver {
                pool: p,
                above_min,
                nodes: nodes.into_iter().map(|(_, _, _, id)| id).collect(),
            })
        })
        .collect();
    givers.sort_by(|a, b| {
        b.above_min
            .cmp(&a.above_min)
            .then(b.nodes.len().cmp(&a.nodes.len()))
            .then(a.pool.name.cmp(&b.pool.name))
    });
    let mut out = Vec::with_capacity(count);
    // First every node but masters, then masters if still short.
    for masters in [false, true] {
        for g in &givers {
            let master = g.pool.master.as_ref().map(|m| m.node.as_str());
            for id in &g.nodes {
                if out.len() == count {
                    return out;
                }
                let Some(left) = budget.get_mut(g.pool.tenant.as_str()) else {
                    break;
                };
                if *left == 0 {
                    break;
                }
                if (Some(*id) == master) != masters {
                    continue;
                }
                *left -= 1;
                out.push((g.pool.name.clone(), id.to_string()));
            }
        }
    }
    out
}

/// Not enough could be reclaimed for a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Short {
    /// What the claimant may still take by reclaim.
    pub entitled: u64,
    /// What was found to take.
    pub found: usize,
}

/// Mark `shortfall` borrowed nodes for `planned` (a pool being created or grown,
/// holding the free nodes it could get): the victim pools as they are to be written.
pub fn claim(
    book: &PoolBook,
    facts: &[NodeFacts],
    tenants: &BTreeMap<String, TenantRecord>,
    planned: &PoolRecord,
    shortfall: usize,
    now_ms: u64,
    grace_ms: u64,
) -> Result<Vec<PoolRecord>, Short> {
    let entitled = entitlement(book, tenants, &planned.tenant, Some(planned));
    let victims = if shortfall as u64 <= entitled {
        pick(book, facts, tenants, planned, shortfall, &HashSet::new())
    } else {
        Vec::new()
    };
    if victims.len() < shortfall || shortfall == 0 {
        return Err(Short {
            entitled,
            found: victims.len(),
        });
    }
    let mut pools: BTreeMap<String, PoolRecord> = BTreeMap::new();
    for (pool, node) in victims {
        let p = match pools.entry(pool) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let Some(record) = book.get(e.key()) else {
                    continue;
                };
                e.insert(record.clone())
            }
        };
        p.reclaims.push(Reclaim {
            node,
            for_pool: planned.name.clone(),
            for_tenant: planned.tenant.clone(),
            since_ms: now_ms,
            deadline_ms: now_ms.saturating_add(grace_ms),
        });
    }
    Ok(pools.into_values().collect())
}

/// The claimant pools, as they are to be written, when `victim` lets `nodes` go
/// early (released, or the pool deleted): each node under reclaim goes straight to
/// its claimant.
pub fn hand_over(book: &PoolBook, victim: &PoolRecord, nodes: &[String]) -> Vec<PoolRecord> {
    let mut claimants: BTreeMap<String, PoolRecord> = BTreeMap::new();
    for r in victim
        .reclaims
        .iter()
        .filter(|r| nodes.contains(&r.node) && victim.nodes.contains(&r.node))
    {
        if !claimants.contains_key(&r.for_pool) {
            let Some(c) = book.get(&r.for_pool) else {
                continue;
            };
            claimants.insert(c.name.clone(), c.clone());
        }
        if let Some(c) = claimants.get_mut(&r.for_pool) {
            c.nodes.push(r.node.clone());
            c.nodes.sort();
        }
    }
    claimants.into_values().collect()
}

/// What a waiting reclaim needs now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The deadline passed: the node moves to the claimant.
    Move,
    /// A free node that fits goes to the claimant instead; the reclaim ends.
    Substitute { free: String },
    /// The node failed or left: another borrowed node takes its place, same deadline.
    Retarget { pool: String, node: String },
    /// The claimant pool is gone, or the node left and nothing can replace it.
    Cancel { reason: String },
}

/// The first free node that is up, fits `selector`'s pool and is not in `exclude`.
fn free_fit<'a>(
    book: &PoolBook,
    facts: &'a [NodeFacts],
    claimant: &PoolRecord,
    exclude: &HashSet<String>,
) -> Option<&'a NodeFacts> {
    facts.iter().find(|n| {
        n.up && book.owner(&n.id).is_none()
            && !exclude.contains(&n.id)
            && fits(&claimant.selector, n)
    })
}

/// What reclaim `(from, node)` needs now, if anything.
pub fn decide(
    book: &PoolBook,
    facts: &[NodeFacts],
    tenants: &BTreeMap<String, TenantRecord>,
    from: &str,
    node: &str,
    now_ms: u64,
    exclude: &HashSet<String>,
) -> Option<Step> {
    let pool = book.get(from)?;
    let r = pool.reclaims.iter().find(|r| r.node == node)?;
    let Some(claimant) = book.get(&r.for_pool) else {
        return Some(Step::Cancel {
            reason: format!("pool {} is gone", r.for_pool),
        });
    };
    // Nodes came to the tenant another way (or its guarantee was lowered): the claim
    // is no longer needed.
    if held(book, &claimant.tenant, None) >= guarantee(tenants, &claimant.tenant) {
        return Some(Step::Cancel {
            reason: format!("tenant {} holds its guarantee", claimant.tenant),
        });
    }
    if let Some(free) = free_fit(book, facts, claimant, exclude) {
        return Some(Step::Substitute {
            free: free.id.clone(),
        });
    }
    let member = pool.nodes.iter().any(|n| n == node);
    let up = facts.iter().any(|n| n.id == node && n.up);
    if member && now_ms >= r.deadline_ms {
        return Some(Step::Move);
    }
    if member && up {
        return None;
    }
    let mut skip = exclude.clone();
    skip.insert(node.to_string());
    match pick(book, facts, tenants, claimant, 1, &skip).pop() {
        Some((pool, node)) => Some(Step::Retarget { pool, node }),
        None if !member => Some(Step::Cancel {
            reason: format!("node {node} left pool {from} and no other node can be reclaimed"),
        }),
        None => None, // down: wait for it, or for the deadline
    }
}

/// Every reclaim that needs something now, as (pool, node): the step-by-step
/// reference [`carry_out`] is checked against.
#[cfg(test)]
pub fn due(
    book: &PoolBook,
    facts: &[NodeFacts],
    tenants: &BTreeMap<String, TenantRecord>,
    now_ms: u64,
    exclude: &HashSet<String>,
) -> Vec<(String, String)> {
    book.pools()
        .flat_map(|p| p.reclaims.iter().map(move |r| (p, r)))
        .filter(|(p, r)| decide(book, facts, tenants, &p.name, &r.node, now_ms, exclude).is_some())
        .map(|(p, r)| (p.name.clone(), r.node.clone()))
        .collect()
}

/// What carrying out a step writes.
#[derive(Clone, Debug)]
pub struct Applied {
    pub step: Step,
    pub reclaim: Reclaim,
    /// The victim pool.
    pub from: String,
    /// The victim pool's tenant.
    pub from_tenant: String,
    /// The node the claimant received, if any.
    pub given: Option<String>,
    /// Every pool to write (victims and claimant).
    pub writes: Vec<PoolRecord>,
}

/// Decide on `book` (the freshest view) and plan the writes for reclaim
/// `(from, node)`.
pub fn apply(
    book: &PoolBook,
    facts: &[NodeFacts],
    tenants: &BTreeMap<String, TenantRecord>,
    from: &str,
    node: &str,
    now_ms: u64,
    exclude: &HashSet<String>,
) -> Option<Applied> {
    let step = decide(book, facts, tenants, from, node, now_ms, exclude)?;
    let mut victim = book.get(from)?.clone();
    let i = victim.reclaims.iter().position(|r| r.node == node)?;
    let reclaim = victim.reclaims.remove(i);
    let from_tenant = victim.tenant.clone();
    let mut claimant = book.get(&reclaim.for_pool).cloned();
    let mut writes = Vec::new();
    let mut given = None;
    match &step {
        Step::Move => {
            victim.nodes.retain(|n| n != node);
            victim.candidates.retain(|n| n != node);
            if victim.master.as_ref().is_some_and(|m| m.node == node) {
                victim.master = None;
            }
            given = Some(node.to_string());
        }
        Step::Substitute { free } => given = Some(free.clone()),
        Step::Retarget { pool, node: other } => {
            let mut next = if pool == from {
                victim.clone()
            } else {
                book.get(pool)?.clone()
            };
            next.reclaims.push(Reclaim {
                node: other.clone(),
                ..reclaim.clone()
            });
            if pool == from {
                victim = next;
            } else {
                writes.push(next);
            }
        }
        Step::Cancel { .. } => {}
    }
    if let (Some(id), Some(c)) = (&given, claimant.as_mut()) {
        c.nodes.push(id.clone());
        c.nodes.sort();
        writes.push(c.clone());
    }
    writes.insert(0, victim);
    Some(Applied {
        step,
        reclaim,
        from: from.to_string(),
        from_tenant,
        given,
        writes,
    })
}

/// Every due reclaim carried out at once ([`carry_out`]).
#[derive(Clone, Debug, Default)]
pub struct Carried {
    /// Moves, substitutions and cancellations (their `writes` are empty).
    pub applied: Vec<Applied>,
    /// The pools they leave, each once.
    pub writes: Vec<PoolRecord>,
    /// Reclaims whose node failed or left: each is handled alone with [`apply`]
    /// (another node is chosen for it).
    pub single: Vec<(String, String)>,
}

/// Carry out every reclaim that is due, in one plan: what [`apply`] does step by step,
/// but cloning each touched pool once (a reclaim of thousands of nodes out of pools of
/// thousands is otherwise quadratic). The same decisions as [`decide`], in the same
/// order; failed or departed nodes are left in `single`.
pub fn carry_out(
    book: &PoolBook,
    facts: &[NodeFacts],
    tenants: &BTreeMap<String, TenantRecord>,
    now_ms: u64,
    exclude: &HashSet<String>,
) -> Carried {
    let by_id: HashMap<&str, &NodeFacts> = facts.iter().map(|n| (n.id.as_str(), n)).collect();
    let mut free: Vec<&NodeFacts> = facts
        .iter()
        .filter(|n| n.up && book.owner(&n.id).is_none() && !exclude.contains(&n.id))
        .collect();
    free.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let mut free_used = vec![false; free.len()];
    let mut held: HashMap<&str, u64> = HashMap::new();
    for p in book.pools() {
        *held.entry(p.tenant.as_str()).or_default() += p.nodes.len() as u64;
    }
    let mut work: BTreeMap<String, PoolRecord> = BTreeMap::new();
    let mut leaving: HashMap<String, HashSet<String>> = HashMap::new();
    let mut out = Carried::default();
    for victim in book.pools() {
        for r in &victim.reclaims {
            let claimant = book.get(&r.for_pool);
            let mut given = None;
            let step = match claimant {
                None => Step::Cancel {
                    reason: format!("pool {} is gone", r.for_pool),
                },
                Some(c)
                    if held.get(c.tenant.as_str()).copied().unwrap_or(0)
                        >= guarantee(tenants, &c.tenant) =>
                {
                    Step::Cancel {
                        reason: format!("tenant {} holds its guarantee", c.tenant),
                    }
                }
                Some(c) => {
                    let spare =
                        (0..free.len()).find(|&i| !free_used[i] && fits(&c.selector, free[i]));
                    let member = victim.nodes.binary_search(&r.node).is_ok();
                    let up = by_id.get(r.node.as_str()).is_some_and(|n| n.up);
                    if let Some(i) = spare {
                        free_used[i] = true;
                        given = Some(free[i].id.clone());
                        Step::Substitute {
                            free: free[i].id.clone(),
                        }
                    } else if member && now_ms >= r.deadline_ms {
                        leaving
                            .entry(victim.name.clone())
                            .or_default()
                            .insert(r.node.clone());
                        *held.entry(victim.tenant.as_str()).or_default() -= 1;
                        given = Some(r.node.clone());
                        Step::Move
                    } else if member && up {
                        continue;
                    } else {
                        out.single.push((victim.name.clone(), r.node.clone()));
                        continue;
                    }
                }
            };
            if let (Some(c), Some(_)) = (claimant, &given) {
                *held.entry(c.tenant.as_str()).or_default() += 1;
            }
            work.entry(victim.name.clone())
                .or_insert_with(|| victim.clone())
                .reclaims
                .retain(|x| x.node != r.node);
            if let (Some(c), Some(id)) = (claimant, &given) {
                work.entry(c.name.clone())
                    .or_insert_with(|| c.clone())
                    .nodes
                    .push(id.clone());
            }
            out.applied.push(Applied {
                step,
                reclaim: r.clone(),
                from: victim.name.clone(),
                from_tenant: victim.tenant.clone(),
                given,
                writes: Vec::new(),
            });
        }
    }
    for (name, gone) in &leaving {
        if let Some(p) = work.get_mut(name) {
            p.nodes.retain(|n| !gone.contains(n));
            p.candidates.retain(|n| !gone.contains(n));
            if p.master.as_ref().is_some_and(|m| gone.contains(&m.node)) {
                p.master = None;
            }
        }
    }
    for p in work.values_mut() {
        p.nodes.sort();
        p.nodes.dedup();
    }
    out.writes = work.into_values().collect();
    out
}

#[cfg(test)]
mod tests;
