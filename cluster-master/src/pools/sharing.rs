//! How the tenants share the cluster (`GET /api/v1/sharing`), pure: each tenant's
//! guarantee, what it holds, what it holds beyond its guarantee (borrowed), and its
//! dominant share, the quantity Dominant Resource Fairness equalises.
//!
//! A tenant's dominant share is the larger of its shares of the cluster's CPUs and of
//! its memory (Ghodsi et al., NSDI 2011). Weighted by guarantee, it is divided by the
//! tenant's weight (its guaranteed nodes, at least 1), so a tenant guaranteed twice as
//! much is as "satisfied" at twice the share. DRF serves the tenant with the lowest
//! weighted share first; `drf_rank` is that order (1 first).

use std::collections::BTreeMap;

use glory_keymaster::schema::TenantRecord;

use super::quota::Usage;

/// What the whole cluster offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub nodes: u64,
    pub cpus: u64,
    pub memory_gib: u64,
}

/// What `facts` (every enrolled node) add up to.
pub fn capacity(facts: &[super::alloc::NodeFacts]) -> Capacity {
    Capacity {
        nodes: facts.len() as u64,
        cpus: facts.iter().map(|n| u64::from(n.cpus)).sum(),
        memory_gib: facts.iter().map(|n| n.memory_bytes >> 30).sum(),
    }
}

/// One tenant's place in the sharing.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantShare {
    pub tenant: String,
    pub guaranteed_nodes: u64,
    pub used: Usage,
    /// Nodes held beyond the guarantee.
    pub borrowed_nodes: u64,
    pub dominant_share: f64,
    /// `dominant_share / max(guaranteed_nodes, 1)`.
    pub weighted_share: f64,
    pub drf_rank: usize,
}

/// Every tenant's share, in name order, each with its DRF rank.
pub fn shares(
    tenants: &BTreeMap<String, TenantRecord>,
    usage: &BTreeMap<String, Usage>,
    capacity: Capacity,
) -> Vec<TenantShare> {
    let ratio = |used: u64, of: u64| {
        if of == 0 {
            0.0
        } else {
            used as f64 / of as f64
        }
    };
    let mut out: Vec<TenantShare> = tenants
        .values()
        .map(|t| {
            let used = usage.get(&t.name).copied().unwrap_or_default();
            let guaranteed = t.quota.as_ref().map_or(0, |q| q.guaranteed_nodes);
            let dominant =
                ratio(used.cpus, capacity.cpus).max(ratio(used.memory_gib, capacity.memory_gib));
            TenantShare {
                tenant: t.name.clone(),
                guaranteed_nodes: guaranteed,
                used,
                borrowed_nodes: used.nodes.saturating_sub(guaranteed),
                dominant_share: dominant,
                weighted_share: dominant / guaranteed.max(1) as f64,
                drf_rank: 0,
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by(|&a, &b| {
        out[a]
            .weighted_share
            .total_cmp(&out[b].weighted_share)
            .then_with(|| out[a].tenant.cmp(&out[b].tenant))
    });
    for (rank, i) in order.into_iter().enumerate() {
        out[i].drf_rank = rank + 1;
    }
    out
}

/// Jain's fairness index of `values` (1.0: all equal; 1/n: one has everything).
pub fn jain(values: &[f64]) -> Option<f64> {
    let sum: f64 = values.iter().sum();
    let squares: f64 = values.iter().map(|v| v * v).sum();
    (!values.is_empty() && squares > 0.0).then(|| sum * sum / (values.len() as f64 * squares))
}

#[cfg(test)]
mod tests {
    use super::*;
    use glory_keymaster::schema::Quota;

    fn tenant(name: &str, guaranteed: u64) -> (String, TenantRecord) {
        (
            name.to_string(),
            TenantRecord {
                v: 1,
                name: name.into(),
                created_ms: 0,
                description: String::new(),
                quota: (guaranteed > 0).then(|| Quota {
                    guaranteed_nodes: guaranteed,
                    ..Default::default()
                }),
            },
        )
    }

    #[test]
    fn the_dominant_resource_decides_and_guarantees_weigh() {
        // The DRF paper's example: 9 CPUs, 18 GiB; A's tasks are CPU-light and
        // memory-heavy, B's the opposite.
        let tenants: BTreeMap<_, _> = [tenant("a", 0), tenant("b", 0), tenant("c", 2)].into();
        let usage: BTreeMap<_, _> = [
            (
                "a".to_string(),
                Usage {
                    nodes: 3,
                    cpus: 3,
                    memory_gib: 12,
                },
            ),
            (
                "b".to_string(),
                Usage {
                    nodes: 2,
                    cpus: 6,
                    memory_gib: 2,
                },
            ),
            (
                "c".to_string(),
                Usage {
                    nodes: 3,
                    cpus: 6,
                    memory_gib: 4,
                },
            ),
        ]
        .into();
        let cap = Capacity {
            nodes: 9,
            cpus: 9,
            memory_gib: 18,
        };
        let s = shares(&tenants, &usage, cap);
        let by = |n: &str| s.iter().find(|t| t.tenant == n).unwrap().clone();
        assert!(
            (by("a").dominant_share - 12.0 / 18.0).abs() < 1e-9,
            "memory dominates a"
        );
        assert!(
            (by("b").dominant_share - 6.0 / 9.0).abs() < 1e-9,
            "CPU dominates b"
        );
        // c holds as much CPU as b, but its guarantee of 2 halves its weighted share:
        // it is served first.
        assert!((by("c").weighted_share - (6.0 / 9.0) / 2.0).abs() < 1e-9);
        assert_eq!(by("c").drf_rank, 1);
        assert_eq!((by("a").drf_rank, by("b").drf_rank), (2, 3), "ties by name");
        assert_eq!(by("c").borrowed_nodes, 1);
        assert_eq!(by("a").borrowed_nodes, 3);
        // An empty cluster divides by nothing.
        let empty = shares(&tenants, &BTreeMap::new(), Capacity::default());
        assert!(empty.iter().all(|t| t.dominant_share == 0.0));
    }

    #[test]
    fn jains_index_is_one_when_equal() {
        assert!((jain(&[0.3, 0.3, 0.3]).unwrap() - 1.0).abs() < 1e-12);
        let skewed = jain(&[1.0, 0.0, 0.0, 0.0]).unwrap();
        assert!((skewed - 0.25).abs() < 1e-9);
        assert_eq!(jain(&[]), None);
        assert_eq!(jain(&[0.0, 0.0]), None);
    }
}
