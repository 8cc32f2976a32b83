//! Resource offers (issue 21), pure: two-level scheduling as in Apache Mesos. The
//! cluster master offers free nodes to the frameworks that listen; a framework
//! accepts some (they join its pool) or declines (they are not offered to it again for
//! `refuse_seconds`). A node is in at most one outstanding offer; an offer expires
//! after the offer timeout and its nodes are offered again.
//!
//! Who gets what: Dominant Resource Fairness by progressive filling. Free nodes are
//! handed out one at a time, each to the framework whose tenant has the lowest
//! weighted dominant share counting what this round already gave it (see
//! [`super::sharing`]), within what its quota and its pool's bounds still allow.

use std::collections::{BTreeMap, HashMap, HashSet};

use glory_keymaster::schema::PoolSelector;

use super::alloc::{fits, NodeFacts};
use super::quota::Usage;
use super::sharing::Capacity;

/// Nodes offered but not accepted stay away from that framework this long.
pub const DEFAULT_REFUSE_MS: u64 = 5_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub id: String,
    pub framework: String,
    pub nodes: Vec<String>,
    pub made_ms: u64,
    pub expires_ms: u64,
}

/// A framework taking part in a round.
#[derive(Clone, Debug)]
pub struct Bidder<'a> {
    pub id: &'a str,
    pub tenant: &'a str,
    pub selector: &'a PoolSelector,
    pub roles: &'a [String],
    /// How many more nodes it may receive (its quota and its pool's bounds).
    pub headroom: usize,
}

/// A tenant's load as DRF sees it: what it holds and its weight (guaranteed nodes,
/// at least 1).
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    pub used: Usage,
    pub weight: u64,
}

/// Why an accept or decline was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("offer {0} is not outstanding (accepted, declined, rescinded or expired)")]
    NotFound(String),
    #[error("nodes: {node} is not in offer {offer}")]
    NotInOffer { node: String, offer: String },
    #[error("nodes: name at least one node of the offer")]
    Empty,
}

/// Whether a node may go to a framework with `roles`: a node labelled `role=r` only
/// to frameworks with role `r`, an unlabelled node to anyone.
pub fn role_allows(roles: &[String], node: &NodeFacts) -> bool {
    node.labels
        .get("role")
        .is_none_or(|r| roles.iter().any(|x| x == r))
}

/// Outstanding offers and refusals.
#[derive(Debug, Default)]
pub struct OfferBook {
    offers: BTreeMap<String, Offer>,
    /// Node -> the offer that holds it.
    offered: HashMap<String, String>,
    /// Framework -> node -> refused until (ms).
    refused: HashMap<String, HashMap<String, u64>>,
    prefix: String,
    next: u64,
}

impl OfferBook {
    /// Offer ids are `<prefix>-<n>`; a prefix unique to this master keeps ids unique
    /// across failovers.
    pub fn new(prefix: &str) -> Self {
        OfferBook {
            prefix: prefix.to_string(),
            ..Default::default()
        }
    }

    pub fn outstanding(&self) -> impl Iterator<Item = &Offer> {
        self.offers.values()
    }

    pub fn get(&self, id: &str) -> Option<&Offer> {
        self.offers.get(id)
    }

    /// The offer that holds `node`, if any.
    pub fn holder(&self, node: &str) -> Option<&str> {
        self.offered.get(node).map(String::as_str)
    }

    pub fn offered_nodes(&self) -> HashSet<String> {
        self.offered.keys().cloned().collect()
    }

    /// Whether `framework` refuses `node` at `now_ms`.
    pub fn refuses(&self, framework: &str, node: &str, now_ms: u64) -> bool {
        self.refused
            .get(framework)
            .and_then(|r| r.get(node))
            .is_some_and(|until| *until > now_ms)
    }

    fn remove(&mut self, id: &str) -> Option<Offer> {
        let offer = self.offers.remove(id)?;
        for n in &offer.nodes {
            if self.offered.get(n).is_some_and(|o| o == id) {
                self.offered.remove(n);
            }
        }
        Some(offer)
    }

    fn refuse(&mut self, framework: &str, nodes: &[String], until_ms: u64) {
        let r = self.refused.entry(framework.to_string()).or_default();
        for n in nodes {
            r.insert(n.clone(), until_ms);
        }
    }

    /// One round: offer `free` nodes (free of pools and reclaims; the round skips
    /// nodes already offered or down) to the bidders without an outstanding offer, in
    /// DRF order, at most `max_per_offer` nodes each. Returns the new offers.
    #[allow(clippy::too_many_arguments)]
    pub fn round(
        &mut self,
        now_ms: u64,
        timeout_ms: u64,
        max_per_offer: usize,
        bidders: &[Bidder],
        free: &[&NodeFacts],
        capacity: Capacity,
        loads: &BTreeMap<String, Load>,
    ) -> Vec<Offer> {
        for r in self.refused.values_mut() {
            r.retain(|_, until| *until > now_ms);
        }
        self.refused.retain(|_, r| !r.is_empty());
        let busy: HashSet<&str> = self.offers.values().map(|o| o.framework.as_str()).collect();
        let mut free: Vec<&NodeFacts> = free
            .iter()
            .copied()
            .filter(|n| n.up && !self.offered.contains_key(&n.id))
            .collect();
        free.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let share = |l: &Load| {
            let ratio = |used: u64, of: u64| {
                if of == 0 {
                    0.0
                } else {
                    used as f64 / of as f64
                }
            };
            ratio(l.used.cpus, capacity.cpus).max(ratio(l.used.memory_gib, capacity.memory_gib))
                / l.weight.max(1) as f64
        };
        let mut load: BTreeMap<&str, Load> = BTreeMap::new();
        struct Slot<'a> {
            bidder: &'a Bidder<'a>,
            /// Next index into `free` to look at.
            at: usize,
            got: Vec<String>,
            open: bool,
        }
        let mut slots: Vec<Slot> = bidders
            .iter()
            .filter(|b| b.headroom > 0 && !busy.contains(b.id))
            .map(|b| {
                load.entry(b.tenant)
                    .or_insert_with(|| loads.get(b.tenant).copied().unwrap_or_default());
                Slot {
                    bidder: b,
                    at: 0,
                    got: Vec::new(),
                    open: true,
                }
            })
            .collect();
        let mut taken: HashSet<usize> = HashSet::new();
        let cap = max_per_offer.max(1);
        // Each time, the open bidder whose tenant is least served (ties: fewest this
        // round, then id).
        while let Some(i) = (0..slots.len())
            .filter(|&i| slots[i].open)
            .min_by(|&a, &b| {
                let (sa, sb) = (&slots[a], &slots[b]);
                share(&load[sa.bidder.tenant])
                    .total_cmp(&share(&load[sb.bidder.tenant]))
                    .then(sa.got.len().cmp(&sb.got.len()))
                    .then(sa.bidder.id.cmp(sb.bidder.id))
            })
        {
            let slot = &mut slots[i];
            let b = slot.bidder;
            let found = (slot.at..free.len()).find(|&k| {
                !taken.contains(&k)
                    && fits(b.selector, free[k])
                    && role_allows(b.roles, free[k])
                    && !self.refuses(b.id, &free[k].id, now_ms)
            });
            let Some(k) = found else {
                slot.open = false;
                continue;
            };
            slot.at = k + 1;
            taken.insert(k);
            slot.got.push(free[k].id.clone());
            if slot.got.len() >= b.headroom.min(cap) {
                slot.open = false;
            }
            let l = load
                .get_mut(b.tenant)
                .expect("every bidder's tenant has a load");
            l.used.nodes += 1;
            l.used.cpus += u64::from(free[k].cpus);
            l.used.memory_gib += free[k].memory_bytes >> 30;
        }
        let mut made = Vec::new();
        for slot in slots.into_iter().filter(|s| !s.got.is_empty()) {
            self.next += 1;
            let offer = Offer {
                id: format!("{}-{}", self.prefix, self.next),
                framework: slot.bidder.id.to_string(),
                nodes: slot.got,
                made_ms: now_ms,
                expires_ms: now_ms.saturating_add(timeout_ms),
            };
            for n in &offer.nodes {
                self.offered.insert(n.clone(), offer.id.clone());
            }
            self.offers.insert(offer.id.clone(), offer.clone());
            made.push(offer);
        }
        made
    }

    /// Take offer `id` of `framework` to accept `nodes` of it: the offer ends, and
    /// the nodes not accepted are refused to the framework for a moment.
    pub fn accept(
        &mut self,
        id: &str,
        framework: &str,
        nodes: &[String],
        now_ms: u64,
    ) -> Result<Offer, OfferError> {
        let offer = self
            .offers
            .get(id)
            .filter(|o| o.framework == framework)
            .ok_or_else(|| OfferError::NotFound(id.to_string()))?;
        if nodes.is_empty() {
            return Err(OfferError::Empty);
        }
        if let Some(n) = nodes.iter().find(|n| !offer.nodes.contains(n)) {
            return Err(OfferError::NotInOffer {
                node: n.clone(),
                offer: id.to_string(),
            });
        }
        let offer = self.remove(id).expect("checked above");
        let unused: Vec<String> = offer
            .nodes
            .iter()
            .filter(|n| !nodes.contains(n))
            .cloned()
            .collect();
        self.refuse(framework, &unused, now_ms.saturating_add(DEFAULT_REFUSE_MS));
        Ok(offer)
    }

    /// Decline offer `id` of `framework`: its nodes are not offered to it again for
    /// `refuse_ms`.
    pub fn decline(
        &mut self,
        id: &str,
        framework: &str,
        refuse_ms: u64,
        now_ms: u64,
    ) -> Result<Offer, OfferError> {
        if self.offers.get(id).is_none_or(|o| o.framework != framework) {
            return Err(OfferError::NotFound(id.to_string()));
        }
        let offer = self.remove(id).expect("checked above");
        self.refuse(framework, &offer.nodes, now_ms.saturating_add(refuse_ms));
        Ok(offer)
    }

    /// End every offer for which `bad` holds (expired, a node taken or down, the
    /// framework gone); their nodes can be offered again at once.
    pub fn rescind(&mut self, bad: impl Fn(&Offer) -> bool) -> Vec<Offer> {
        let ids: Vec<String> = self
            .offers
            .values()
            .filter(|o| bad(o))
            .map(|o| o.id.clone())
            .collect();
        ids.iter().filter_map(|id| self.remove(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: usize, cpus: u32, mem_gib: u64, role: Option<&str>) -> NodeFacts {
        NodeFacts {
            id: format!("n{i:02}"),
            group: "g0".into(),
            cpus,
            memory_bytes: mem_gib << 30,
            disk_bytes: 0,
            labels: role
                .map(|r| BTreeMap::from([("role".to_string(), r.to_string())]))
                .unwrap_or_default(),
            up: true,
        }
    }

    fn bidder<'a>(id: &'a str, tenant: &'a str, sel: &'a PoolSelector) -> Bidder<'a> {
        Bidder {
            id,
            tenant,
            selector: sel,
            roles: &[],
            headroom: usize::MAX,
        }
    }

    #[test]
    fn drf_gives_the_least_served_tenant_first_and_nodes_once() {
        // 9 nodes of 1 CPU and 2 GiB; tenant a already holds 3 nodes' worth.
        let nodes: Vec<NodeFacts> = (0..9).map(|i| node(i, 1, 2, None)).collect();
        let free: Vec<&NodeFacts> = nodes.iter().collect();
        let sel = PoolSelector::default();
        let bidders = [bidder("fa", "a", &sel), bidder("fb", "b", &sel)];
        let cap = Capacity {
            nodes: 12,
            cpus: 12,
            memory_gib: 24,
        };
        let loads: BTreeMap<String, Load> = [(
            "a".to_string(),
            Load {
                used: Usage {
                    nodes: 3,
                    cpus: 3,
                    memory_gib: 6,
                },
                weight: 1,
            },
        )]
        .into();
        let mut book = OfferBook::new("o");
        let made = book.round(0, 1000, 100, &bidders, &free, cap, &loads);
        let got = |f: &str| made.iter().find(|o| o.framework == f).unwrap().nodes.len();
        // b catches up first (3 nodes), then they alternate: 3 + 3 to b, 3 to a.
        assert_eq!((got("fa"), got("fb")), (3, 6));
        let all: HashSet<&String> = made.iter().flat_map(|o| &o.nodes).collect();
        assert_eq!(all.len(), 9, "no node in two offers");
        // Both have an outstanding offer: the next round offers nothing.
        assert!(book
            .round(1, 1000, 100, &bidders, &free, cap, &loads)
            .is_empty());
    }

    #[test]
    fn decline_refuses_for_a_while_and_expiry_rescinds() {
        let nodes: Vec<NodeFacts> = (0..4).map(|i| node(i, 4, 8, None)).collect();
        let free: Vec<&NodeFacts> = nodes.iter().collect();
        let sel = PoolSelector::default();
        let bidders = [bidder("fa", "a", &sel)];
        let cap = Capacity::default();
        let mut book = OfferBook::new("o");
        let o = book.round(0, 1000, 2, &bidders, &free, cap, &BTreeMap::new());
        assert_eq!(o[0].nodes, ["n00", "n01"], "at most 2 per offer");
        assert_eq!(
            book.decline(&o[0].id, "fb", 0, 0),
            Err(OfferError::NotFound(o[0].id.clone())),
            "another framework's offer does not exist for it"
        );
        book.decline(&o[0].id, "fa", 10_000, 5).unwrap();
        let o2 = book.round(10, 1000, 10, &bidders, &free, cap, &BTreeMap::new());
        assert_eq!(o2[0].nodes, ["n02", "n03"], "declined nodes are refused");
        // It expires: rescinded, and re-offered.
        let gone = book.rescind(|o| o.expires_ms <= 2000);
        assert_eq!(gone.len(), 1);
        assert!(book.holder("n02").is_none());
        let o3 = book.round(2001, 1000, 10, &bidders, &free, cap, &BTreeMap::new());
        assert_eq!(o3[0].nodes, ["n02", "n03"]);
        // After the refusal, n00 and n01 come back.
        book.rescind(|_| true);
        let o4 = book.round(10_006, 1000, 10, &bidders, &free, cap, &BTreeMap::new());
        assert_eq!(o4[0].nodes.len(), 4);
    }

    #[test]
    fn accept_checks_the_nodes_and_roles_restrict() {
        let nodes = [node(0, 1, 1, Some("spark")), node(1, 1, 1, None)];
        let free: Vec<&NodeFacts> = nodes.iter().collect();
        let sel = PoolSelector::default();
        let spark = ["spark".to_string()];
        let bidders = [
            bidder("plain", "a", &sel),
            Bidder {
                roles: &spark,
                ..bidder("sp", "b", &sel)
            },
        ];
        let mut book = OfferBook::new("o");
        let made = book.round(
            0,
            1000,
            10,
            &bidders,
            &free,
            Capacity::default(),
            &BTreeMap::new(),
        );
        let of = |f: &str| made.iter().find(|o| o.framework == f).unwrap().clone();
        assert_eq!(of("plain").nodes, ["n01"], "a role's node only to its role");
        assert_eq!(of("sp").nodes, ["n00"]);
        let id = of("sp").id;
        assert_eq!(
            book.accept(&id, "sp", &["n01".into()], 0),
            Err(OfferError::NotInOffer {
                node: "n01".into(),
                offer: id.clone()
            })
        );
        assert_eq!(book.accept(&id, "sp", &[], 0), Err(OfferError::Empty));
        assert!(book.accept(&id, "sp", &["n00".into()], 0).is_ok());
        assert!(book.accept(&id, "sp", &["n00".into()], 0).is_err(), "once");
    }
}
