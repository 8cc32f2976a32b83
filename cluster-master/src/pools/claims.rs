//! Reclaim on the cluster master: a pool created or grown within its tenant's
//! guarantee when too few nodes are free claims borrowed nodes of other tenants
//! ([`super::reclaim`] decides which), and the reconciler carries the claims out:
//! at the deadline the node moves, sooner when a free node can stand in.

use std::collections::HashSet;

use glory_keymaster::schema::PoolRecord;
use tracing::{info, warn};

use super::alloc::{NodeFacts, NotEnough, PlanError, PoolBook};
use super::membership::within_bounds;
use super::reclaim::{self, Step};
use super::{OpError, OpResultT, Write};
use crate::cluster::Cluster;
use crate::events::EventData;

impl Cluster {
    /// `partial` (the pool with the free nodes it could get) and the victims marked
    /// for the `shortfall`, or why not: too few free nodes (`ne`), and what reclaim
    /// could add.
    pub(super) fn plan_with_reclaim(
        &self,
        book: &PoolBook,
        facts: &[NodeFacts],
        partial: PoolRecord,
        shortfall: usize,
        ne: NotEnough,
    ) -> OpResultT<Vec<Write>> {
        let now = glory_protocol::now_ms();
        let grace = self.settings.reclaim_grace.as_millis() as u64;
        let victims = {
            let tenants = self.pools.tenants();
            reclaim::claim(book, facts, &tenants, &partial, shortfall, now, grace)
        };
        let victims = victims.map_err(|short| OpError::Conflict {
            message: format!(
                "{}; reclaim cannot make up the {shortfall} missing: tenant {} may claim {} \
                 more within its guarantee and {} borrowed nodes fit",
                PlanError::NotEnough(ne),
                partial.tenant,
                short.entitled,
                short.found
            ),
            fit: Some(ne.fit),
        })?;
        within_bounds(&partial, shortfall)?;
        self.within_quota(book, facts, &partial)?;
        let mut writes = vec![Write::Put(partial)];
        writes.extend(victims.into_iter().map(Write::Put));
        Ok(writes)
    }

    /// Tell both sides about the reclaims `written` (victim pools) start for
    /// `claimant`.
    pub(super) fn announce_claims(&self, claimant: &PoolRecord, written: &[Option<PoolRecord>]) {
        let grace = self.settings.reclaim_grace.as_secs_f64();
        for victim in written.iter().flatten().filter(|p| p.name != claimant.name) {
            for r in victim
                .reclaims
                .iter()
                .filter(|r| r.for_pool == claimant.name)
            {
                info!(node = %r.node, from = %victim.name, to = %claimant.name, "node reclaim pending");
                self.events.emit(
                    Some((&victim.name, &victim.tenant)),
                    EventData::NodeReclaimPending {
                        node: r.node.clone(),
                        for_pool: claimant.name.clone(),
                        for_tenant: claimant.tenant.clone(),
                        deadline_ms: r.deadline_ms,
                        grace_seconds: grace,
                    },
                );
                self.events.emit(
                    Some((&claimant.name, &claimant.tenant)),
                    EventData::ReclaimStarted {
                        node: r.node.clone(),
                        from_pool: victim.name.clone(),
                        deadline_ms: r.deadline_ms,
                    },
                );
            }
        }
    }

    /// Carry out every reclaim that needs something now (one pass of the reconciler).
    pub(crate) async fn reconcile_reclaims(&self) {
        if !self.pools.book().pools().any(|p| !p.reclaims.is_empty()) {
            return;
        }
        let now = glory_protocol::now_ms();
        let offered: HashSet<String> = self.offered_nodes();
        let tenants = self.pools.tenants().clone();
        let single = {
            let facts = self.node_facts();
            let plan = reclaim::carry_out(&self.pools.book(), &facts, &tenants, now, &offered);
            if !plan.applied.is_empty() {
                // Everything due in one write, planned again on the view it commits on.
                let result = self
                    .write_pools(true, |book, facts| {
                        let c = reclaim::carry_out(book, facts, &tenants, now, &offered);
                        if c.applied.is_empty() {
                            return Err(OpError::NotFound("nothing to do".into()));
                        }
                        Ok((c.writes.into_iter().map(Write::Put).collect(), c.applied))
                    })
                    .await;
                match result {
                    Ok((_, applied)) => {
                        for a in &applied {
                            self.announce_step(a, now);
                        }
                    }
                    Err(OpError::NotFound(_)) => {}
                    Err(e) => warn!(error = %e, "reclaim steps failed; retrying"),
                }
            }
            plan.single
        };
        // A failed or departed node: another borrowed node is chosen, one at a time.
        for (from, node) in single {
            let result = self
                .write_pools(true, |book, facts| {
                    let applied =
                        reclaim::apply(book, facts, &tenants, &from, &node, now, &offered)
                            .ok_or_else(|| OpError::NotFound("nothing to do".into()))?;
                    let writes = applied.writes.iter().cloned().map(Write::Put).collect();
                    Ok((writes, applied))
                })
                .await;
            match result {
                Ok((_, applied)) => self.announce_step(&applied, now),
                Err(OpError::NotFound(_)) => {}
                Err(e) => warn!(pool = %from, %node, error = %e, "reclaim step failed; retrying"),
            }
        }
    }

    fn announce_step(&self, a: &reclaim::Applied, now: u64) {
        let r = &a.reclaim;
        let from = (r.for_pool.as_str(), r.for_tenant.as_str());
        let victim = (a.from.as_str(), a.from_tenant.as_str());
        let to_claimant = |data: EventData| self.events.emit(Some(from), data);
        let both = |data: EventData| {
            self.events.emit(Some(victim), data.clone());
            self.events.emit(Some(from), data);
        };
        match &a.step {
            Step::Move => {
                info!(node = %r.node, from = %victim.0, to = %r.for_pool, "node reclaimed");
                self.events.emit(
                    Some(victim),
                    EventData::NodeRemoved {
                        node: r.node.clone(),
                        reason: format!("reclaimed for pool {}", r.for_pool),
                    },
                );
                to_claimant(EventData::NodeAdded {
                    node: r.node.clone(),
                    replaces: None,
                });
                both(EventData::ReclaimCompleted {
                    node: r.node.clone(),
                    from_pool: victim.0.to_string(),
                    to_pool: r.for_pool.clone(),
                    waited_ms: now.saturating_sub(r.since_ms),
                });
            }
            Step::Substitute { free } => {
                to_claimant(EventData::NodeAdded {
                    node: free.clone(),
                    replaces: None,
                });
                both(EventData::ReclaimCancelled {
                    node: r.node.clone(),
                    from_pool: victim.0.to_string(),
                    to_pool: r.for_pool.clone(),
                    reason: format!("free node {free} went to {} instead", r.for_pool),
                });
            }
            Step::Retarget { pool, node } => {
                both(EventData::ReclaimCancelled {
                    node: r.node.clone(),
                    from_pool: victim.0.to_string(),
                    to_pool: r.for_pool.clone(),
                    reason: format!(
                        "node failed or left; {node} of pool {pool} is reclaimed instead"
                    ),
                });
                let claimant = a.writes.iter().find(|p| p.name == r.for_pool).cloned();
                let written: Vec<Option<PoolRecord>> = a
                    .writes
                    .iter()
                    .filter(|p| &p.name == pool)
                    .map(|p| {
                        let mut p = p.clone();
                        p.reclaims.retain(|x| &x.node == node);
                        Some(p)
                    })
                    .collect();
                let claimant = claimant.or_else(|| self.pools.book().get(&r.for_pool).cloned());
                if let Some(c) = claimant {
                    self.announce_claims(&c, &written);
                }
            }
            Step::Cancel { reason } => both(EventData::ReclaimCancelled {
                node: r.node.clone(),
                from_pool: victim.0.to_string(),
                to_pool: r.for_pool.clone(),
                reason: reason.clone(),
            }),
        }
    }
}
