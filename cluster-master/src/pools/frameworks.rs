//! Frameworks and offers on the cluster master. A framework is registered in the key
//! master (it survives failovers); its offers live only on the active master, which
//! makes a round of offers on every reconciler pass ([`super::offers`] decides who
//! gets what). Offer events go on the framework pool's stream, which the framework's
//! offer stream filters.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use glory_keymaster::schema::{self, Elastic, FrameworkRecord, PoolRecord, RECORD_VERSION};
use glory_keymaster::{Compare, KeyMaster, KeyMasterError, Txn, TxnOp};
use tracing::info;

use super::offers::{Bidder, Load, Offer, OfferError};
use super::{check_name, quota, reclaim, sharing, OpError, OpResultT};
use crate::cluster::Cluster;
use crate::events::{EventData, OfferedNode};

/// The largest an automatically created framework pool may grow (its tenant's quota
/// bounds it further).
const FRAMEWORK_POOL_MAX: usize = 100_000;

/// Every framework in the key master, by id.
pub(crate) async fn load_frameworks(
    km: &dyn KeyMaster,
) -> Result<BTreeMap<String, FrameworkRecord>, KeyMasterError> {
    let (kvs, _) = km.get_prefix(schema::FRAMEWORKS_PREFIX).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| schema::decode::<FrameworkRecord>(&kv.key, &kv.value).ok())
        .map(|f| (f.id.clone(), f))
        .collect())
}

/// Held while a framework's offer stream is open; the framework gets offers while
/// at least one is.
pub struct Listening {
    cluster: Arc<Cluster>,
    framework: String,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let mut l = self
            .cluster
            .pools
            .listening
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = l.get_mut(&self.framework) {
            *n -= 1;
            if *n == 0 {
                l.remove(&self.framework);
            }
        }
        self.cluster.pool_changed.notify_one();
    }
}

impl Cluster {
    pub fn frameworks(&self) -> Vec<FrameworkRecord> {
        let f = self
            .pools
            .frameworks
            .read()
            .unwrap_or_else(|p| p.into_inner());
        f.values().cloned().collect()
    }

    pub fn framework(&self, id: &str) -> Option<FrameworkRecord> {
        let f = self
            .pools
            .frameworks
            .read()
            .unwrap_or_else(|p| p.into_inner());
        f.get(id).cloned()
    }

    pub fn framework_listening(&self, id: &str) -> bool {
        let l = self
            .pools
            .listening
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        l.contains_key(id)
    }

    /// Nodes in outstanding offers.
    pub(crate) fn offered_nodes(&self) -> HashSet<String> {
        self.pools
            .offers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .offered_nodes()
    }

    /// Outstanding offers, oldest first.
    pub fn outstanding_offers(&self) -> Vec<Offer> {
        let o = self.pools.offers.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Offer> = o.outstanding().cloned().collect();
        v.sort_by_key(|o| o.made_ms);
        v
    }

    /// Register a framework for `tenant`'s `pool`, creating the pool empty and
    /// elastic when it does not exist.
    pub async fn register_framework(
        &self,
        name: &str,
        tenant: &str,
        pool: &str,
        roles: Vec<String>,
    ) -> OpResultT<FrameworkRecord> {
        check_name("name", name)?;
        check_name("pool", pool)?;
        for r in &roles {
            check_name("roles", r)?;
        }
        if roles.len() > 16 {
            return Err(OpError::Invalid("roles: at most 16".into()));
        }
        if !self.pools.tenants().contains_key(tenant) {
            return Err(OpError::Unprocessable(format!(
                "tenant: {tenant} does not exist"
            )));
        }
        if self
            .frameworks()
            .iter()
            .any(|f| f.tenant == tenant && f.name == name)
        {
            return Err(OpError::conflict(format!(
                "framework {name} of tenant {tenant} is already registered"
            )));
        }
        let existing = self.pools.book().get(pool).cloned();
        match existing {
            Some(p) if p.tenant != tenant => {
                return Err(OpError::conflict(format!(
                    "pool {pool} belongs to another tenant"
                )))
            }
            Some(_) => {}
            None => {
                let record = PoolRecord {
                    v: RECORD_VERSION,
                    name: pool.to_string(),
                    tenant: tenant.to_string(),
                    component: format!("custom:{name}"),
                    selector: Default::default(),
                    spread: Default::default(),
                    replace_failed: false,
                    replace_delay_ms: 0,
                    master_spec: Default::default(),
                    nodes: vec![],
                    candidates: vec![],
                    master: None,
                    epoch: 0,
                    created_ms: glory_protocol::now_ms(),
                    elastic: Some(Elastic {
                        min: 0,
                        max: FRAMEWORK_POOL_MAX,
                    }),
                    reclaims: vec![],
                };
                self.create_pool(record, Some(0)).await?;
            }
        }
        let record = FrameworkRecord {
            v: RECORD_VERSION,
            id: format!("fw-{}", hex::encode(rand::random::<[u8; 6]>())),
            name: name.to_string(),
            tenant: tenant.to_string(),
            pool: pool.to_string(),
            roles,
            registered_ms: glory_protocol::now_ms(),
        };
        let key = schema::framework_key(&record.id);
        let resp = self
            .km_txn(Txn {
                compares: vec![Compare::absent(key.clone())],
                success: vec![TxnOp::put(key, schema::encode(&record))],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(OpError::conflict("framework id taken; try again"));
        }
        self.pools
            .frameworks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.id.clone(), record.clone());
        info!(framework = %record.id, %name, %tenant, %pool, "framework registered");
        self.events.emit(
            Some((pool, tenant)),
            EventData::FrameworkRegistered {
                framework: record.id.clone(),
                name: name.to_string(),
            },
        );
        Ok(record)
    }

    /// Unregister a framework: its offers are rescinded; its pool stays.
    pub async fn unregister_framework(&self, id: &str) -> OpResultT<FrameworkRecord> {
        let record = self
            .framework(id)
            .ok_or_else(|| OpError::NotFound(format!("framework {id} does not exist")))?;
        self.km_txn(Txn::alone(TxnOp::delete(schema::framework_key(id))))
            .await?;
        self.pools
            .frameworks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.rescind_offers(|o| o.framework == id, "framework unregistered");
        self.events.emit(
            Some((&record.pool, &record.tenant)),
            EventData::FrameworkUnregistered {
                framework: id.to_string(),
                name: record.name.clone(),
            },
        );
        Ok(record)
    }

    /// Start listening for `framework`'s offers (until the guard drops).
    pub fn listen(self: &Arc<Self>, framework: &str) -> Listening {
        *self
            .pools
            .listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(framework.to_string())
            .or_default() += 1;
        self.pool_changed.notify_one();
        Listening {
            cluster: self.clone(),
            framework: framework.to_string(),
        }
    }

    fn emit_offer(&self, framework: &FrameworkRecord, data: EventData) {
        self.events
            .emit(Some((&framework.pool, &framework.tenant)), data);
    }

    fn rescind_offers(&self, bad: impl Fn(&Offer) -> bool, reason: &str) {
        let gone = self
            .pools
            .offers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rescind(bad);
        for o in gone {
            let framework = self.framework(&o.framework);
            let data = EventData::OfferRescinded {
                framework: o.framework.clone(),
                offer: o.id.clone(),
                reason: reason.to_string(),
            };
            match framework {
                Some(f) => self.emit_offer(&f, data),
                None => self.events.emit(None, data),
            }
        }
    }

    /// One round of offers (a reconciler pass): rescind what no longer holds, then
    /// offer the free nodes to the listening frameworks in DRF order.
    pub(crate) fn offer_round(&self) {
        let now = glory_protocol::now_ms();
        let frameworks: Vec<FrameworkRecord> = self
            .frameworks()
            .into_iter()
            .filter(|f| self.framework_listening(&f.id))
            .collect();
        let listening: HashSet<&str> = frameworks.iter().map(|f| f.id.as_str()).collect();
        self.rescind_offers(|o| o.expires_ms <= now, "expired");
        self.rescind_offers(
            |o| !listening.contains(o.framework.as_str()),
            "the framework stopped listening",
        );
        if frameworks.is_empty() {
            return;
        }
        let facts = self.node_facts();
        let tenants = self.pools.tenants().clone();
        let now_offered = {
            let book = self.pools.book();
            let up: HashSet<&str> = facts
                .iter()
                .filter(|n| n.up)
                .map(|n| n.id.as_str())
                .collect();
            self.rescind_offers(
                |o| {
                    o.nodes
                        .iter()
                        .any(|n| book.owner(n).is_some() || !up.contains(n.as_str()))
                },
                "a node was taken or went down",
            );
            let capacity = sharing::capacity(&facts);
            let mut loads: BTreeMap<String, Load> = BTreeMap::new();
            let mut bidders = Vec::new();
            for f in &frameworks {
                let Some(pool) = book.get(&f.pool) else {
                    continue;
                };
                let q = tenants.get(&f.tenant).and_then(|t| t.quota.clone());
                let used = loads
                    .entry(f.tenant.clone())
                    .or_insert_with(|| Load {
                        used: quota::usage(&book, &facts, &f.tenant, None),
                        weight: q.as_ref().map_or(1, |q| q.guaranteed_nodes.max(1)),
                    })
                    .used;
                let incoming = reclaim::incoming(&book, &pool.name);
                let by_quota = q
                    .and_then(|q| q.max_nodes)
                    .map_or(usize::MAX, |m| m.saturating_sub(used.nodes) as usize);
                let by_pool = pool.elastic.map_or(0, |e| {
                    e.max
                        .saturating_sub(pool.nodes.len())
                        .saturating_sub(incoming)
                });
                bidders.push(Bidder {
                    id: &f.id,
                    tenant: &f.tenant,
                    selector: &pool.selector,
                    roles: &f.roles,
                    headroom: by_quota.min(by_pool),
                });
            }
            let free: Vec<&super::alloc::NodeFacts> = facts
                .iter()
                .filter(|n| book.owner(&n.id).is_none())
                .collect();
            self.pools
                .offers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .round(
                    now,
                    self.settings.offer_timeout.as_millis() as u64,
                    self.settings.offer_max_nodes,
                    &bidders,
                    &free,
                    capacity,
                    &loads,
                )
        };
        let made = now_offered;
        for o in made {
            let Some(f) = frameworks.iter().find(|f| f.id == o.framework) else {
                continue;
            };
            // Large and short-lived: to live listeners only (see `emit_transient`).
            self.events.emit_transient(
                Some((&f.pool, &f.tenant)),
                EventData::OfferMade {
                    framework: f.id.clone(),
                    offer: o.id.clone(),
                    nodes: self.offered_node_details(&o.nodes),
                    expires_ms: o.expires_ms,
                },
            );
        }
    }

    /// What a framework is told about offered nodes: group, CPUs, memory, labels.
    pub fn offered_node_details(&self, ids: &[String]) -> Vec<OfferedNode> {
        let reg = self.read();
        ids.iter()
            .filter_map(|id| reg.nodes.get(id))
            .map(|n| OfferedNode {
                id: n.record.id.clone(),
                group: n.record.group.clone(),
                cpus: n.record.inventory.cpus,
                memory_gib: n.record.inventory.memory_bytes >> 30,
                labels: n.record.labels.clone(),
            })
            .collect()
    }

    /// The framework an outstanding offer was made to.
    pub fn offer_framework(&self, offer: &str) -> Option<FrameworkRecord> {
        let id = {
            let o = self.pools.offers.lock().unwrap_or_else(|p| p.into_inner());
            o.get(offer)?.framework.clone()
        };
        self.framework(&id)
    }

    /// Accept `nodes` of an offer: they join the framework's pool (within its quota
    /// and bounds); the rest are refused to it for a few seconds.
    pub async fn accept_offer(
        &self,
        offer: &str,
        nodes: &[String],
    ) -> OpResultT<(PoolRecord, Vec<String>)> {
        let f = self
            .offer_framework(offer)
            .ok_or_else(|| OpError::NotFound(OfferError::NotFound(offer.into()).to_string()))?;
        let now = glory_protocol::now_ms();
        self.pools
            .offers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accept(offer, &f.id, nodes, now)
            .map_err(offer_error)?;
        let result = self.add_pool_nodes(&f.pool, nodes).await;
        self.pool_changed.notify_one();
        let (pool, added) = result?;
        self.emit_offer(
            &f,
            EventData::OfferAccepted {
                framework: f.id.clone(),
                offer: offer.to_string(),
                nodes: added.clone(),
            },
        );
        Ok((pool, added))
    }

    /// Decline an offer: its nodes are not offered to the framework for
    /// `refuse_seconds`.
    pub fn decline_offer(&self, offer: &str, refuse_seconds: f64) -> OpResultT<Offer> {
        let f = self
            .offer_framework(offer)
            .ok_or_else(|| OpError::NotFound(OfferError::NotFound(offer.into()).to_string()))?;
        let now = glory_protocol::now_ms();
        let o = self
            .pools
            .offers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .decline(offer, &f.id, (refuse_seconds * 1000.0) as u64, now)
            .map_err(offer_error)?;
        self.pool_changed.notify_one();
        self.emit_offer(
            &f,
            EventData::OfferDeclined {
                framework: f.id.clone(),
                offer: offer.to_string(),
                refuse_seconds,
            },
        );
        Ok(o)
    }
}

fn offer_error(e: OfferError) -> OpError {
    match e {
        OfferError::NotFound(_) => OpError::NotFound(e.to_string()),
        OfferError::NotInOffer { .. } | OfferError::Empty => OpError::Invalid(e.to_string()),
    }
}
