use std::collections::{BTreeMap, HashMap, HashSet};

use glory_keymaster::schema::{MasterSpec, PoolRecord, PoolSelector, Spread};
use proptest::prelude::*;

use super::*;

fn node(i: usize, group: usize, cpus: u32, zone: Option<&str>) -> NodeFacts {
    NodeFacts {
        id: format!("n{i:03}"),
        group: format!("g{group}"),
        cpus,
        memory_bytes: cpus as u64 * 4 * GIB,
        disk_bytes: 500 * GIB,
        labels: zone
            .map(|z| BTreeMap::from([("zone".to_string(), z.to_string())]))
            .unwrap_or_default(),
        up: true,
    }
}

fn pool(name: &str, selector: PoolSelector, spread: Spread) -> PoolRecord {
    PoolRecord {
        v: 1,
        name: name.to_string(),
        tenant: "t".to_string(),
        component: "fs".to_string(),
        selector,
        spread,
        replace_failed: false,
        replace_delay_ms: 0,
        master_spec: MasterSpec::default(),
        nodes: vec![],
        candidates: vec![],
        master: None,
        epoch: 0,
        created_ms: 0,
        elastic: None,
        reclaims: vec![],
    }
}

#[test]
fn spread_places_one_per_group_before_doubling_up() {
    let nodes: Vec<NodeFacts> = (0..40).map(|i| node(i, i % 4, 16, None)).collect();
    let book = PoolBook::default();
    let p = book
        .plan_create(
            pool("p", PoolSelector::default(), Spread::Groups),
            Some(6),
            &nodes,
        )
        .unwrap();
    let mut per_group: HashMap<&str, usize> = HashMap::new();
    for id in &p.nodes {
        let n = nodes.iter().find(|n| &n.id == id).unwrap();
        *per_group.entry(n.group.as_str()).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_group.values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![1, 1, 2, 2]);
}

#[test]
fn packing_without_spread_stays_in_few_groups() {
    let nodes: Vec<NodeFacts> = (0..40).map(|i| node(i, i % 4, 16, None)).collect();
    let p = PoolBook::default()
        .plan_create(
            pool("p", PoolSelector::default(), Spread::None),
            Some(8),
            &nodes,
        )
        .unwrap();
    let groups: HashSet<&str> = p
        .nodes
        .iter()
        .map(|id| nodes.iter().find(|n| &n.id == id).unwrap().group.as_str())
        .collect();
    assert_eq!(groups.len(), 1);
}

#[test]
fn not_enough_reports_how_many_fit_and_selectors_filter() {
    let mut nodes: Vec<NodeFacts> = (0..10)
        .map(|i| node(i, 0, if i < 3 { 64 } else { 8 }, None))
        .collect();
    nodes[0].up = false;
    let selector = PoolSelector {
        min_cpus: 32,
        ..Default::default()
    };
    let err = PoolBook::default()
        .plan_create(pool("p", selector.clone(), Spread::None), Some(3), &nodes)
        .unwrap_err();
    assert_eq!(err, PlanError::NotEnough(NotEnough { wanted: 3, fit: 2 }));
    // Without a size: every fitting free node.
    let p = PoolBook::default()
        .plan_create(pool("p", selector, Spread::None), None, &nodes)
        .unwrap();
    assert_eq!(p.nodes, vec!["n001", "n002"]);
}

#[test]
fn election_takes_the_first_live_candidate_in_order() {
    let c: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    assert_eq!(elect(&c, None, |n| n != "a"), Some("b"));
    assert_eq!(elect(&c, Some("b"), |n| n != "a"), Some("c"));
    assert_eq!(elect(&c, None, |_| false), None);
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        min_cpus: u32,
        zone: Option<u8>,
        spread: bool,
        size: Option<usize>,
    },
    Grow(usize, usize),
    AddNamed(usize, usize),
    Release(usize, usize),
    Delete(usize),
    Down(usize),
    Up(usize),
    Replace(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            prop_oneof![Just(0u32), Just(16), Just(32)],
            proptest::option::of(0u8..3),
            any::<bool>(),
            proptest::option::of(1usize..12)
        )
            .prop_map(|(min_cpus, zone, spread, size)| Op::Create {
                min_cpus,
                zone,
                spread,
                size
            }),
        (0usize..8, 1usize..6).prop_map(|(p, n)| Op::Grow(p, n)),
        (0usize..8, 0usize..60).prop_map(|(p, n)| Op::AddNamed(p, n)),
        (0usize..8, 0usize..60).prop_map(|(p, n)| Op::Release(p, n)),
        (0usize..8).prop_map(Op::Delete),
        (0usize..60).prop_map(Op::Down),
        (0usize..60).prop_map(Op::Up),
        (0usize..8).prop_map(Op::Replace),
    ]
}

/// For the nodes just added to a spread pool: no group received a node while another
/// group with a fitting free node left held two fewer of the pool's nodes.
fn check_spread(
    pool: &PoolRecord,
    added: &[String],
    nodes: &[NodeFacts],
    book_after: &PoolBook,
) -> Result<(), TestCaseError> {
    if pool.spread != Spread::Groups || added.is_empty() {
        return Ok(());
    }
    let group_of = |id: &str| nodes.iter().find(|n| n.id == id).unwrap().group.clone();
    let mut held: HashMap<String, usize> = HashMap::new();
    for id in &pool.nodes {
        *held.entry(group_of(id)).or_default() += 1;
    }
    let open: HashSet<String> = nodes
        .iter()
        .filter(|n| book_after.owner(&n.id).is_none() && n.up && fits(&pool.selector, n))
        .map(|n| n.group.clone())
        .collect();
    for id in added {
        let g = group_of(id);
        for other in &open {
            prop_assert!(
                held[&g] <= held.get(other).copied().unwrap_or(0) + 1,
                "group {g} got {id} (now {}) while {other} with free nodes holds {}",
                held[&g],
                held.get(other).copied().unwrap_or(0)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn allocator_never_double_allocates_and_respects_selectors_and_spread(
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let zones = ["a", "b", "c"];
        let mut nodes: Vec<NodeFacts> = (0..60)
            .map(|i| node(i, i % 5, [8, 16, 32, 64][i % 4], Some(zones[i / 7 % 3])))
            .collect();
        let mut book = PoolBook::default();
        let mut names: Vec<String> = Vec::new();
        let mut next = 0;
        for op in ops {
            let name_at = |i: usize| names.get(i % names.len().max(1)).cloned();
            match op {
                Op::Create { min_cpus, zone, spread, size } => {
                    let selector = PoolSelector {
                        min_cpus,
                        labels: zone
                            .map(|z| BTreeMap::from([("zone".to_string(), zones[z as usize].to_string())]))
                            .unwrap_or_default(),
                        ..Default::default()
                    };
                    let spread = if spread { Spread::Groups } else { Spread::None };
                    let name = format!("p{next}");
                    next += 1;
                    let fitting = book.fitting(&nodes, &selector);
                    match book.plan_create(pool(&name, selector.clone(), spread), size, &nodes) {
                        Ok(p) => {
                            prop_assert!(fitting >= size.unwrap_or(1));
                            prop_assert_eq!(p.nodes.len(), size.unwrap_or(fitting));
                            for id in &p.nodes {
                                let n = nodes.iter().find(|n| &n.id == id).unwrap();
                                prop_assert!(n.up && fits(&selector, n));
                                prop_assert!(book.owner(id).is_none());
                            }
                            let added = p.nodes.clone();
                            book.put(p.clone(), 1);
                            check_spread(&p, &added, &nodes, &book)?;
                            names.push(name);
                        }
                        Err(PlanError::NotEnough(e)) => {
                            prop_assert_eq!(e.fit, fitting);
                            prop_assert!(fitting < size.unwrap_or(1));
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Grow(p, n) => {
                    let Some(name) = name_at(p) else { continue };
                    let before = book.get(&name).unwrap().clone();
                    let fitting = book.fitting(&nodes, &before.selector);
                    match book.plan_grow(&name, n, &nodes) {
                        Ok((after, added)) => {
                            prop_assert_eq!(added.len(), n);
                            prop_assert_eq!(after.nodes.len(), before.nodes.len() + n);
                            for id in &added {
                                prop_assert!(book.owner(id).is_none());
                            }
                            book.put(after.clone(), 1);
                            check_spread(&after, &added, &nodes, &book)?;
                        }
                        Err(PlanError::NotEnough(e)) => prop_assert_eq!(e.fit, fitting),
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::AddNamed(p, n) => {
                    let Some(name) = name_at(p) else { continue };
                    let id = nodes[n].id.clone();
                    let taken = book.owner(&id).is_some();
                    match book.plan_add_named(&name, std::slice::from_ref(&id), &nodes) {
                        Ok(after) => {
                            prop_assert!(!taken);
                            book.put(after, 1);
                        }
                        Err(PlanError::Taken { .. }) => prop_assert!(taken),
                        Err(PlanError::Unfit { .. }) => {}
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Release(p, n) => {
                    let Some(name) = name_at(p) else { continue };
                    let id = nodes[n].id.clone();
                    if let Ok(after) = book.plan_release(&name, &id) {
                        book.put(after, 1);
                        prop_assert!(book.owner(&id).is_none());
                    } else {
                        prop_assert!(book.owner(&id) != Some(name.as_str()));
                    }
                }
                Op::Delete(p) => {
                    let Some(name) = name_at(p) else { continue };
                    book.remove(&name);
                    names.retain(|x| x != &name);
                }
                Op::Down(n) => nodes[n].up = false,
                Op::Up(n) => nodes[n].up = true,
                Op::Replace(p) => {
                    let Some(name) = name_at(p) else { continue };
                    let down: Vec<String> = book.get(&name).unwrap().nodes.iter()
                        .filter(|id| !nodes.iter().find(|n| &n.id == *id).unwrap().up)
                        .cloned().collect();
                    for id in down {
                        if let Ok((after, new)) = book.plan_replace(&name, &id, &nodes) {
                            prop_assert!(book.owner(&new).is_none());
                            prop_assert!(!after.nodes.contains(&id));
                            book.put(after.clone(), 1);
                            check_spread(&after, &[new], &nodes, &book)?;
                        }
                    }
                }
            }
            // The invariant: every node is in at most one pool, and the owner index
            // agrees with the pools.
            let mut seen: HashMap<&str, &str> = HashMap::new();
            for p in book.pools() {
                for id in &p.nodes {
                    prop_assert!(seen.insert(id.as_str(), p.name.as_str()).is_none(),
                        "node {id} in two pools");
                    prop_assert_eq!(book.owner(id), Some(p.name.as_str()));
                }
            }
        }
    }
}
