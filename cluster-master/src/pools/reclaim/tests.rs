use super::*;
use crate::pools::offers::{Bidder, Load, OfferBook};
use crate::pools::quota;
use crate::pools::sharing::Capacity;
use glory_keymaster::schema::{Elastic, PoolMaster, PoolSelector, Quota};
use proptest::prelude::*;

fn node(i: usize) -> NodeFacts {
    NodeFacts {
        id: format!("n{i:02}"),
        group: format!("g{}", i % 3),
        cpus: 8,
        memory_bytes: 32 << 30,
        disk_bytes: 0,
        labels: Default::default(),
        up: true,
    }
}

fn tenant(name: &str, guaranteed: u64, max: Option<u64>) -> (String, TenantRecord) {
    (
        name.to_string(),
        TenantRecord {
            v: 1,
            name: name.into(),
            created_ms: 0,
            description: String::new(),
            quota: Some(Quota {
                guaranteed_nodes: guaranteed,
                max_nodes: max,
                ..Default::default()
            }),
        },
    )
}

fn pool(name: &str, tenant: &str, nodes: &[usize], elastic: Option<(usize, usize)>) -> PoolRecord {
    PoolRecord {
        v: 1,
        name: name.into(),
        tenant: tenant.into(),
        component: "fs".into(),
        selector: Default::default(),
        spread: Default::default(),
        replace_failed: false,
        replace_delay_ms: 0,
        master_spec: Default::default(),
        nodes: {
            let mut v: Vec<String> = nodes.iter().map(|i| format!("n{i:02}")).collect();
            v.sort();
            v
        },
        candidates: vec![],
        master: None,
        epoch: 0,
        created_ms: 0,
        elastic: elastic.map(|(min, max)| Elastic { min, max }),
        reclaims: vec![],
    }
}

#[test]
fn claims_take_borrowed_nodes_from_the_fewest_pools_sparing_masters() {
    let facts: Vec<NodeFacts> = (0..10).map(node).collect();
    // b is guaranteed 2 and holds 8: 6 are borrowed. Pool "big" is elastic above its
    // min; "small" holds its master on n00.
    let tenants: BTreeMap<_, _> = [tenant("a", 4, Some(6)), tenant("b", 2, None)].into();
    let mut book = PoolBook::default();
    let mut small = pool("small", "b", &[0, 1], None);
    small.master = Some(PoolMaster {
        node: "n00".into(),
        address: String::new(),
        epoch: 1,
        since_ms: 0,
    });
    book.put(small, 1);
    book.put(pool("big", "b", &[2, 3, 4, 5, 6, 7], Some((2, 8))), 1);
    let mut fa = pool("fa", "a", &[8, 9], None);
    assert_eq!(entitlement(&book, &tenants, "a", Some(&fa)), 2);
    // Asking 3 beyond the 2 held passes the guarantee of 4: refused.
    assert_eq!(
        claim(&book, &facts, &tenants, &fa, 3, 100, 1000),
        Err(Short {
            entitled: 2,
            found: 0
        })
    );
    let written = claim(&book, &facts, &tenants, &fa, 2, 100, 1000).unwrap();
    assert_eq!(written.len(), 1, "one pool disturbed");
    assert_eq!(written[0].name, "big");
    let marked: Vec<&str> = written[0]
        .reclaims
        .iter()
        .map(|r| r.node.as_str())
        .collect();
    assert_eq!(marked.len(), 2);
    assert!(written[0].reclaims.iter().all(|r| r.deadline_ms == 1100));
    for p in written {
        book.put(p, 2);
    }
    // Entitlement counts what is on its way.
    assert_eq!(entitlement(&book, &tenants, "a", Some(&fa)), 0);
    assert_eq!(incoming(&book, "fa"), 2);
    // b can give 6 - 2 = 4 more; pick never takes its master while others remain.
    fa.tenant = "c".into();
    let tenants: BTreeMap<_, _> = [tenant("c", 10, None), tenant("b", 2, None)].into();
    let picked = pick(&book, &facts, &tenants, &fa, 10, &HashSet::new());
    assert_eq!(picked.len(), 4, "never below b's guarantee");
    assert!(picked.iter().all(|(_, n)| n != "n00"), "{picked:?}");
}

#[test]
fn steps_move_at_the_deadline_and_prefer_a_free_node() {
    let mut facts: Vec<NodeFacts> = (0..4).map(node).collect();
    let tenants: BTreeMap<_, _> = [tenant("a", 2, None), tenant("b", 0, None)].into();
    let mut book = PoolBook::default();
    book.put(pool("pb", "b", &[0, 1, 2, 3], None), 1);
    book.put(pool("pa", "a", &[], Some((0, 4))), 1);
    let pa = book.get("pa").unwrap().clone();
    for p in claim(&book, &facts, &tenants, &pa, 2, 0, 1000).unwrap() {
        book.put(p, 2);
    }
    let none = HashSet::new();
    let marked: Vec<String> = book
        .get("pb")
        .unwrap()
        .reclaims
        .iter()
        .map(|r| r.node.clone())
        .collect();
    assert!(due(&book, &facts, &tenants, 999, &none).is_empty(), "grace");
    assert_eq!(due(&book, &facts, &tenants, 1000, &none).len(), 2);
    // At the deadline the node moves, with its entry.
    let a = apply(&book, &facts, &tenants, "pb", &marked[0], 1000, &none).unwrap();
    assert_eq!(a.step, Step::Move);
    for p in a.writes {
        book.put(p, 3);
    }
    assert_eq!(book.owner(&marked[0]), Some("pa"));
    assert_eq!(book.get("pb").unwrap().reclaims.len(), 1);
    // The other node fails: another borrowed node is marked, same deadline.
    facts.iter_mut().find(|n| n.id == marked[1]).unwrap().up = false;
    let a = apply(&book, &facts, &tenants, "pb", &marked[1], 500, &none).unwrap();
    let Step::Retarget { node: other, .. } = &a.step else {
        panic!("{:?}", a.step)
    };
    for p in a.writes {
        book.put(p, 4);
    }
    let r = &book.get("pb").unwrap().reclaims;
    assert_eq!((r.len(), &r[0].node, r[0].deadline_ms), (1, other, 1000));
    // A node released by b: free, it stands in at once.
    let mut pb = book.get("pb").unwrap().clone();
    let spare = pb
        .nodes
        .iter()
        .find(|n| *n != other && **n != marked[1])
        .unwrap()
        .clone();
    pb.nodes.retain(|n| *n != spare);
    book.put(pb, 5);
    let a = apply(&book, &facts, &tenants, "pb", other, 600, &none).unwrap();
    assert_eq!(
        a.step,
        Step::Substitute {
            free: spare.clone()
        }
    );
    for p in a.writes {
        book.put(p, 6);
    }
    assert_eq!(book.owner(&spare), Some("pa"));
    assert!(book.get("pb").unwrap().reclaims.is_empty());
    assert_eq!(
        book.get("pa").unwrap().nodes.len(),
        2,
        "the guarantee, in time"
    );
}

#[derive(Clone, Debug)]
enum Op {
    Quota {
        t: usize,
        g: u64,
        max: Option<u64>,
    },
    Create {
        t: usize,
        size: usize,
        elastic: bool,
    },
    Grow {
        p: usize,
        n: usize,
    },
    Release {
        p: usize,
        n: usize,
    },
    Delete(usize),
    Down(usize),
    Up(usize),
    Offer,
    Accept {
        f: usize,
        take: usize,
    },
    Decline {
        f: usize,
        refuse: u64,
    },
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0usize..3, 0u64..12, proptest::option::of(4u64..20))
            .prop_map(|(t, g, max)| Op::Quota { t, g, max }),
        4 => (0usize..3, 1usize..8, any::<bool>()).prop_map(|(t, size, elastic)| Op::Create {
            t,
            size,
            elastic
        }),
        4 => (0usize..8, 1usize..6).prop_map(|(p, n)| Op::Grow { p, n }),
        1 => (0usize..8, 0usize..30).prop_map(|(p, n)| Op::Release { p, n }),
        1 => (0usize..8).prop_map(Op::Delete),
        1 => (0usize..30).prop_map(Op::Down),
        1 => (0usize..30).prop_map(Op::Up),
        2 => Just(Op::Offer),
        2 => (0usize..3, 0usize..6).prop_map(|(f, take)| Op::Accept { f, take }),
        1 => (0usize..3, 0u64..3000).prop_map(|(f, refuse)| Op::Decline { f, refuse }),
        3 => (1u64..1500).prop_map(Op::Tick),
    ]
}

const GRACE: u64 = 1000;

/// The model: what the cluster master does with these pure parts, minus the store.
struct World {
    facts: Vec<NodeFacts>,
    tenants: BTreeMap<String, TenantRecord>,
    book: PoolBook,
    offers: OfferBook,
    now: u64,
    next: usize,
}

impl World {
    fn quota_ok(&self, planned: &PoolRecord) -> bool {
        let Some(q) = self.tenants[&planned.tenant].quota.clone() else {
            return true;
        };
        let before = quota::usage(&self.book, &self.facts, &planned.tenant, None);
        let after = quota::usage(&self.book, &self.facts, &planned.tenant, Some(planned));
        quota::check(&q, before, after).is_ok()
    }

    /// `planned` with `shortfall` more by reclaim, if the guarantee allows.
    fn commit_with_reclaim(&mut self, planned: PoolRecord, shortfall: usize) -> bool {
        if !self.quota_ok(&planned) {
            return false;
        }
        if shortfall == 0 {
            self.book.put(planned, 1);
            return true;
        }
        match claim(
            &self.book,
            &self.facts,
            &self.tenants,
            &planned,
            shortfall,
            self.now,
            GRACE,
        ) {
            Ok(victims) => {
                self.book.put(planned, 1);
                for v in victims {
                    self.book.put(v, 1);
                }
                true
            }
            Err(_) => false,
        }
    }

    /// What the reconciler's pass does: everything due at once, then the failed or
    /// departed nodes one by one. Checked against the step-by-step path.
    fn process_due(&mut self) {
        let offered = self.offers.offered_nodes();
        let mut stepwise = self.book.clone();
        for (from, node) in due(&stepwise, &self.facts, &self.tenants, self.now, &offered) {
            if let Some(a) = apply(
                &stepwise,
                &self.facts,
                &self.tenants,
                &from,
                &node,
                self.now,
                &offered,
            ) {
                if !matches!(a.step, Step::Retarget { .. }) {
                    for p in a.writes {
                        stepwise.put(p, 1);
                    }
                }
            }
        }
        let c = carry_out(&self.book, &self.facts, &self.tenants, self.now, &offered);
        for p in c.writes {
            self.book.put(p, 1);
        }
        // Bulk and step by step agree on who holds what (retargets aside).
        for p in self.book.pools() {
            let q = stepwise.get(&p.name).unwrap();
            assert_eq!(
                p.nodes.len(),
                q.nodes.len(),
                "pool {} bulk vs stepwise",
                p.name
            );
        }
        for (from, node) in c.single {
            if let Some(a) = apply(
                &self.book,
                &self.facts,
                &self.tenants,
                &from,
                &node,
                self.now,
                &offered,
            ) {
                for p in a.writes {
                    self.book.put(p, 1);
                }
            }
        }
    }

    fn frameworks(&self) -> Vec<(String, String, String)> {
        // Framework i belongs to tenant i and its elastic pool "fw{i}".
        (0..3)
            .map(|i| (format!("f{i}"), format!("t{i}"), format!("fw{i}")))
            .filter(|(_, _, p)| self.book.get(p).is_some())
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn sharing_never_double_allocates_and_keeps_guarantees_and_quotas(
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut w = World {
            facts: (0..30).map(node).collect(),
            // Two tenants with guarantees, one without: its nodes are all borrowed.
            tenants: [(0, 10), (1, 8), (2, 0)]
                .iter()
                .map(|(i, g)| tenant(&format!("t{i}"), *g, None))
                .collect(),
            book: PoolBook::default(),
            offers: OfferBook::new("o"),
            now: 0,
            next: 0,
        };
        for i in 0..3 {
            w.book.put(pool(&format!("fw{i}"), &format!("t{i}"), &[], Some((0, 30))), 1);
        }
        let sel = PoolSelector::default();
        for op in ops {
            let held_before: BTreeMap<String, u64> =
                w.tenants.keys().map(|t| (t.clone(), held(&w.book, t, None))).collect();
            let names: Vec<String> = w.book.pools().map(|p| p.name.clone()).collect();
            let name_at = |i: usize| names.get(i % names.len().max(1)).cloned();
            match op {
                Op::Quota { t, g, max } => {
                    let q = Quota { guaranteed_nodes: g, max_nodes: max, ..Default::default() };
                    let name = format!("t{t}");
                    if quota::validate(&q).is_ok()
                        && quota::check_guarantees(&w.tenants, &name, &q, 30).is_ok()
                    {
                        w.tenants.get_mut(&name).unwrap().quota = Some(q);
                    }
                }
                Op::Create { t, size, elastic } => {
                    w.next += 1;
                    let mut p = pool(&format!("p{}", w.next), &format!("t{t}"), &[], None);
                    if elastic {
                        p.elastic = Some(Elastic { min: size, max: size + 4 });
                    }
                    match w.book.plan_create(p.clone(), Some(size), &w.facts) {
                        Ok(planned) => { w.commit_with_reclaim(planned, 0); }
                        Err(super::super::alloc::PlanError::NotEnough(ne)) => {
                            let partial = w.book.plan_create(p, Some(ne.fit), &w.facts).unwrap();
                            w.commit_with_reclaim(partial, size - ne.fit);
                        }
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Grow { p, n } => {
                    let Some(name) = name_at(p) else { continue };
                    match w.book.plan_grow(&name, n, &w.facts) {
                        Ok((planned, _)) => { w.commit_with_reclaim(planned, 0); }
                        Err(super::super::alloc::PlanError::NotEnough(ne)) => {
                            let (partial, _) = w.book.plan_grow(&name, ne.fit, &w.facts).unwrap();
                            w.commit_with_reclaim(partial, n - ne.fit);
                        }
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Release { p, n } => {
                    let Some(name) = name_at(p) else { continue };
                    let id = format!("n{n:02}");
                    let old = w.book.get(&name).unwrap().clone();
                    if let Ok(mut after) = w.book.plan_release(&name, &id) {
                        let given = hand_over(&w.book, &old, std::slice::from_ref(&id));
                        after.reclaims.retain(|r| r.node != id || given.is_empty());
                        w.book.put(after, 1);
                        for c in given {
                            w.book.put(c, 1);
                        }
                    }
                }
                Op::Delete(p) => {
                    let Some(name) = name_at(p) else { continue };
                    if name.starts_with("fw") { continue }
                    let old = w.book.get(&name).unwrap().clone();
                    let given = hand_over(&w.book, &old, &old.nodes);
                    w.book.remove(&name);
                    for c in given {
                        w.book.put(c, 1);
                    }
                }
                Op::Down(n) => w.facts[n].up = false,
                Op::Up(n) => w.facts[n].up = true,
                Op::Offer => {
                    let fws = w.frameworks();
                    let book = w.book.clone();
                    let up: HashSet<String> = w.facts.iter().filter(|n| n.up).map(|n| n.id.clone()).collect();
                    w.offers.rescind(|o| o.nodes.iter().any(|n| book.owner(n).is_some() || !up.contains(n)));
                    let loads: BTreeMap<String, Load> = w.tenants.keys().map(|t| {
                        (t.clone(), Load { used: quota::usage(&book, &w.facts, t, None), weight: 1 })
                    }).collect();
                    let bidders: Vec<Bidder> = fws.iter().map(|(id, t, p)| {
                        let used = loads[t].used.nodes;
                        let max = w.tenants[t].quota.as_ref().and_then(|q| q.max_nodes);
                        let pool = book.get(p).unwrap();
                        Bidder {
                            id, tenant: t, selector: &sel, roles: &[],
                            headroom: max.map_or(usize::MAX, |m| m.saturating_sub(used) as usize)
                                .min(30usize.saturating_sub(pool.nodes.len() + incoming(&book, p))),
                        }
                    }).collect();
                    let free: Vec<&NodeFacts> = w.facts.iter().filter(|n| book.owner(&n.id).is_none()).collect();
                    let cap = Capacity { nodes: 30, cpus: 240, memory_gib: 960 };
                    w.offers.round(w.now, 2000, 8, &bidders, &free, cap, &loads);
                }
                Op::Accept { f, take } => {
                    let fid = format!("f{f}");
                    let Some(o) = w.offers.outstanding().find(|o| o.framework == fid).cloned() else { continue };
                    let nodes: Vec<String> = o.nodes.iter().take(take.max(1)).cloned().collect();
                    w.offers.accept(&o.id, &fid, &nodes, w.now).unwrap();
                    if let Ok(planned) = w.book.plan_add_named(&format!("fw{f}"), &nodes, &w.facts) {
                        w.commit_with_reclaim(planned, 0);
                    }
                }
                Op::Decline { f, refuse } => {
                    let fid = format!("f{f}");
                    let Some(o) = w.offers.outstanding().find(|o| o.framework == fid).cloned() else { continue };
                    w.offers.decline(&o.id, &fid, refuse, w.now).unwrap();
                }
                Op::Tick(ms) => {
                    w.now += ms;
                    let now = w.now;
                    w.offers.rescind(|o| o.expires_ms <= now);
                    w.process_due();
                    // Whatever was due is done: no reclaim is past its deadline with
                    // its node still in the victim pool and its claimant there.
                    for p in w.book.pools() {
                        for r in &p.reclaims {
                            prop_assert!(
                                !(r.deadline_ms <= w.now
                                    && p.nodes.contains(&r.node)
                                    && w.book.get(&r.for_pool).is_some()),
                                "reclaim of {} from {} overdue at {}", r.node, p.name, w.now
                            );
                        }
                    }
                }
            }
            // Never a node in two pools; the owner index agrees.
            let mut seen: HashMap<&str, &str> = HashMap::new();
            for p in w.book.pools() {
                for id in &p.nodes {
                    prop_assert!(seen.insert(id.as_str(), p.name.as_str()).is_none(), "node {id} in two pools");
                    prop_assert_eq!(w.book.owner(id), Some(p.name.as_str()));
                }
            }
            // Never a node in two outstanding offers, nor under two reclaims.
            let mut offered: HashSet<&str> = HashSet::new();
            for o in w.offers.outstanding() {
                for n in &o.nodes {
                    prop_assert!(offered.insert(n.as_str()), "node {n} in two offers");
                }
            }
            let mut marked: HashSet<&str> = HashSet::new();
            for p in w.book.pools() {
                for r in &p.reclaims {
                    prop_assert!(marked.insert(r.node.as_str()), "node {} under two reclaims", r.node);
                    prop_assert!(r.for_tenant != p.tenant);
                }
            }
            // A tenant that grew is within its max_nodes.
            for (t, before) in &held_before {
                let after = held(&w.book, t, None);
                if let Some(max) = w.tenants[t].quota.as_ref().and_then(|q| q.max_nodes) {
                    prop_assert!(after <= *before || after <= max,
                        "tenant {t} grew from {before} to {after} past max_nodes {max}");
                }
            }
        }
    }
}

#[test]
fn carry_out_moves_what_is_due() {
    let facts: Vec<NodeFacts> = (0..4).map(node).collect();
    let tenants: BTreeMap<_, _> = [tenant("a", 2, None), tenant("b", 0, None)].into();
    let mut book = PoolBook::default();
    book.put(pool("pb", "b", &[0, 1, 2, 3], None), 1);
    book.put(pool("pa", "a", &[], Some((0, 4))), 1);
    let pa = book.get("pa").unwrap().clone();
    for p in claim(&book, &facts, &tenants, &pa, 2, 0, 1000).unwrap() {
        book.put(p, 2);
    }
    let none = HashSet::new();
    assert!(carry_out(&book, &facts, &tenants, 999, &none)
        .applied
        .is_empty());
    let c = carry_out(&book, &facts, &tenants, 1000, &none);
    assert_eq!(c.applied.len(), 2, "{c:?}");
    assert!(c.applied.iter().all(|a| a.step == Step::Move));
    for p in c.writes {
        book.put(p, 3);
    }
    assert_eq!(book.get("pa").unwrap().nodes.len(), 2);
    assert_eq!(book.get("pb").unwrap().nodes.len(), 2);
    assert!(book.get("pb").unwrap().reclaims.is_empty());
}
