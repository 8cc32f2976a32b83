//! Tenant quotas (issue 21, first part), pure: what a tenant holds, whether a planned
//! pool keeps it within its limits, and whether the guarantees still fit the cluster.
//!
//! Only growth is refused: a tenant above a limit that was lowered keeps what it has,
//! but may not take more of what is over (a pool may still shrink or be replaced).

use std::collections::BTreeMap;

use glory_keymaster::schema::{PoolRecord, Quota, TenantRecord};

use super::alloc::{NodeFacts, PoolBook};

const GIB: u64 = 1 << 30;

/// What a tenant's pools hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub nodes: u64,
    pub cpus: u64,
    /// Whole GiB, rounded down per node.
    pub memory_gib: u64,
}

/// A limit a change would pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exceeded {
    /// `max_nodes`, `max_cpus` or `max_memory_gib`.
    pub limit_name: &'static str,
    pub limit: u64,
    /// What the tenant holds now.
    pub used: u64,
    /// What the change adds.
    pub requested: u64,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "quota exceeded: {} is {}, the tenant holds {} and the change adds {}",
            self.limit_name, self.limit, self.used, self.requested
        )
    }
}

/// What `tenant`'s pools hold, with `planned` in place of the pool of its name. One
/// pass over the nodes, allocating nothing: it runs inside every pool write and every
/// offer round, with 10,000 nodes.
pub fn usage(
    book: &PoolBook,
    facts: &[NodeFacts],
    tenant: &str,
    planned: Option<&PoolRecord>,
) -> Usage {
    let mut u = Usage::default();
    let mut seen = 0usize;
    for n in facts {
        let in_planned = planned.is_some_and(|q| q.nodes.binary_search(&n.id).is_ok());
        let counts = if in_planned {
            planned.is_some_and(|q| q.tenant == tenant)
        } else {
            match book.owner(&n.id) {
                Some(pool) if planned.is_some_and(|q| q.name == pool) => false,
                Some(pool) => book.get(pool).is_some_and(|p| p.tenant == tenant),
                None => false,
            }
        };
        if counts {
            u.nodes += 1;
            u.cpus += u64::from(n.cpus);
            u.memory_gib += n.memory_bytes / GIB;
            seen += 1;
        }
    }
    // Members the registry no longer knows (removed nodes) still count as nodes.
    let listed: usize = book
        .pools()
        .filter(|p| p.tenant == tenant && planned.is_none_or(|q| q.name != p.name))
        .chain(planned.filter(|q| q.tenant == tenant))
        .map(|p| p.nodes.len())
        .sum();
    u.nodes += listed.saturating_sub(seen) as u64;
    u
}

/// Whether going from `before` to `after` respects `quota` (only what grows is
/// checked).
pub fn check(quota: &Quota, before: Usage, after: Usage) -> Result<(), Exceeded> {
    let dims = [
        ("max_nodes", quota.max_nodes, before.nodes, after.nodes),
        ("max_cpus", quota.max_cpus, before.cpus, after.cpus),
        (
            "max_memory_gib",
            quota.max_memory_gib,
            before.memory_gib,
            after.memory_gib,
        ),
    ];
    for (limit_name, limit, used, wanted) in dims {
        if let Some(limit) = limit {
            if wanted > used && wanted > limit {
                return Err(Exceeded {
                    limit_name,
                    limit,
                    used,
                    requested: wanted - used,
                });
            }
        }
    }
    Ok(())
}

/// Why a quota is not valid on its own, naming the field.
pub fn validate(quota: &Quota) -> Result<(), String> {
    if let Some(max) = quota.max_nodes {
        if quota.guaranteed_nodes > max {
            return Err(format!(
                "guaranteed_nodes: {} is above max_nodes {max}",
                quota.guaranteed_nodes
            ));
        }
    }
    Ok(())
}

/// Whether every tenant's guarantee, with `tenant`'s set to `quota`, fits in
/// `cluster_nodes`; else the message naming the shortfall.
pub fn check_guarantees(
    tenants: &BTreeMap<String, TenantRecord>,
    tenant: &str,
    quota: &Quota,
    cluster_nodes: u64,
) -> Result<(), String> {
    let others: u64 = tenants
        .values()
        .filter(|t| t.name != tenant)
        .filter_map(|t| t.quota.as_ref())
        .map(|q| q.guaranteed_nodes)
        .fold(0u64, u64::saturating_add);
    let total = others.saturating_add(quota.guaranteed_nodes);
    if total > cluster_nodes {
        return Err(format!(
            "guarantees would total {total} nodes ({others} for other tenants + {} for {tenant}) \
             but the cluster has {cluster_nodes}: {} short",
            quota.guaranteed_nodes,
            total - cluster_nodes
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(g: u64, nodes: Option<u64>, cpus: Option<u64>, mem: Option<u64>) -> Quota {
        Quota {
            guaranteed_nodes: g,
            max_nodes: nodes,
            max_cpus: cpus,
            max_memory_gib: mem,
        }
    }

    fn usage(nodes: u64, cpus: u64, memory_gib: u64) -> Usage {
        Usage {
            nodes,
            cpus,
            memory_gib,
        }
    }

    #[test]
    fn growth_past_a_limit_is_refused_with_the_numbers() {
        let q = quota(0, Some(10), Some(100), None);
        assert!(check(&q, usage(4, 40, 100), usage(10, 100, 500)).is_ok());
        let e = check(&q, usage(4, 40, 0), usage(11, 80, 0)).unwrap_err();
        assert_eq!(
            e,
            Exceeded {
                limit_name: "max_nodes",
                limit: 10,
                used: 4,
                requested: 7
            }
        );
        assert!(e.to_string().contains("max_nodes is 10"), "{e}");
        let e = check(&q, usage(4, 40, 0), usage(6, 120, 0)).unwrap_err();
        assert_eq!(e.limit_name, "max_cpus");
        // Over a lowered limit already: shrinking or staying is fine, growing is not.
        let low = quota(0, Some(2), None, None);
        assert!(check(&low, usage(5, 0, 0), usage(4, 0, 0)).is_ok());
        assert!(check(&low, usage(5, 0, 0), usage(5, 0, 0)).is_ok());
        assert!(check(&low, usage(5, 0, 0), usage(6, 0, 0)).is_err());
        // No limits: anything.
        assert!(check(&Quota::default(), usage(0, 0, 0), usage(9999, 1, 1)).is_ok());
    }

    #[test]
    fn guarantees_must_fit_the_cluster() {
        let mut tenants = BTreeMap::new();
        for (name, g) in [("a", 60), ("b", 30)] {
            tenants.insert(
                name.to_string(),
                TenantRecord {
                    v: 1,
                    name: name.into(),
                    created_ms: 0,
                    description: String::new(),
                    quota: Some(quota(g, None, None, None)),
                },
            );
        }
        assert!(check_guarantees(&tenants, "c", &quota(10, None, None, None), 100).is_ok());
        let e = check_guarantees(&tenants, "c", &quota(11, None, None, None), 100).unwrap_err();
        assert!(e.contains("1 short"), "{e}");
        // A tenant's own old guarantee does not count twice.
        assert!(check_guarantees(&tenants, "a", &quota(70, None, None, None), 100).is_ok());
        // Absurd numbers are refused, not overflowed.
        let huge = quota(u64::MAX, None, None, None);
        assert!(check_guarantees(&tenants, "c", &huge, 100).is_err());
        assert_eq!(
            validate(&quota(5, Some(4), None, None)).unwrap_err(),
            "guaranteed_nodes: 5 is above max_nodes 4"
        );
    }
}
