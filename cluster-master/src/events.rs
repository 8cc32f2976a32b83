//! The cluster's event stream: node transitions, pool changes, master elections. Events
//! fan out to live subscribers (the API's Server-Sent Events) and the last few thousand
//! are kept, so a subscriber that reconnects with `Last-Event-ID` misses nothing that
//! is still kept. Events live in memory: a new cluster master starts a new stream whose
//! ids are larger than the old one's (they start at the start time in microseconds).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use glory_protocol::NodeState;
use serde::Serialize;
use tokio::sync::broadcast;

/// How many past events are kept for reconnecting subscribers and pool details.
const KEPT: usize = 4096;

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub id: u64,
    pub at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// What happened: `kind` and its fields (node, epoch, reason...).
    #[serde(flatten)]
    pub data: EventData,
}

impl Event {
    /// The event's kind, as the SSE `event:` line and the JSON `kind` field name it.
    pub fn kind(&self) -> &'static str {
        self.data.kind()
    }
}

/// Every kind of event and its fields. Subsystems emit these typed values; they
/// become JSON only at the API edge (`api/events.rs`), where serde writes them as
/// `{"kind": "<kind>", <fields>}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventData {
    /// Any node changed state.
    NodeState {
        node: String,
        from: NodeState,
        to: NodeState,
    },
    /// A pool's node came up (on the pool's stream).
    NodeUp {
        node: String,
        state: NodeState,
    },
    /// A pool's node went down or left.
    NodeDown {
        node: String,
        state: NodeState,
    },
    /// A pool's node's group master is unreachable.
    NodeUnreachable {
        node: String,
        state: NodeState,
    },
    /// A second server claimed a live node's identity with another key.
    NodeIdentityConflict {
        node: String,
        identity: String,
        holder: ConflictHolder,
        claimant: ConflictClaimant,
    },
    TenantCreated {
        tenant: String,
    },
    TenantDeleted {
        tenant: String,
    },
    PoolCreated {
        component: String,
        nodes: usize,
    },
    PoolDeleted {
        nodes: usize,
    },
    /// A node joined a pool; `replaces` names the failed node it stands in for.
    NodeAdded {
        node: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
    },
    NodeRemoved {
        node: String,
        reason: String,
    },
    CandidatesChanged {
        candidates: Vec<String>,
    },
    MasterElected {
        node: String,
        address: String,
        epoch: u64,
        since_ms: u64,
        reason: String,
    },
    MasterFailed {
        node: String,
        epoch: u64,
        reason: String,
    },
    /// The pool's master fails on every candidate; it is kept where it is.
    MasterFailing {
        node: String,
        epoch: u64,
        reason: String,
    },
    MasterNone {
        reason: String,
    },
    /// A failed pool node could not be replaced.
    /// A machine on a boot network moved on its way from power-on to enrolled.
    BootChanged {
        mac: String,
        state: glory_protocol::BootState,
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ip: Option<String>,
        detail: String,
    },
    /// A power action was carried out (or failed) on a node or a MAC.
    PowerChanged {
        target: String,
        action: String,
        ok: bool,
        detail: String,
    },
    ReplaceBlocked {
        node: String,
        reason: String,
    },
    ServiceCreated {
        service: String,
    },
    ServiceDeleted {
        service: String,
    },
    /// Changed by an operator: `updated`, `start`, `stop`, `restart` or `scale`.
    ServiceChanged {
        service: String,
        change: String,
        desired: u32,
    },
    /// The reconciler acted on an instance: `placed`, `failed`, `draining`,
    /// `removed`, `stopped`, `restarted`, `unplaced` or `restart_done`.
    ServiceInstance {
        service: String,
        action: String,
        instance: String,
        node: String,
        reason: String,
    },
    /// The autoscaler changed the instance count.
    ServiceScaled {
        service: String,
        from: u32,
        to: u32,
        metric: String,
        value: Option<f64>,
        reason: String,
    },
    /// A node of this pool is reclaimed for another tenant's guarantee: drain it
    /// before `deadline_ms`, when it moves (on the owning pool's stream).
    NodeReclaimPending {
        node: String,
        for_pool: String,
        for_tenant: String,
        deadline_ms: u64,
        grace_seconds: f64,
    },
    /// A borrowed node of another tenant is on its way to this pool.
    ReclaimStarted {
        node: String,
        from_pool: String,
        deadline_ms: u64,
    },
    /// A reclaim ended with `node` in `to_pool` (on both pools' streams).
    ReclaimCompleted {
        node: String,
        from_pool: String,
        to_pool: String,
        waited_ms: u64,
    },
    /// A reclaim ended without moving its node (a free node stood in, the node
    /// failed and another was chosen, or the claimant is gone).
    ReclaimCancelled {
        node: String,
        from_pool: String,
        to_pool: String,
        reason: String,
    },
    FrameworkRegistered {
        framework: String,
        name: String,
    },
    FrameworkUnregistered {
        framework: String,
        name: String,
    },
    /// Free nodes offered to a framework (on its pool's stream and its offer stream).
    OfferMade {
        framework: String,
        offer: String,
        nodes: Vec<OfferedNode>,
        expires_ms: u64,
    },
    OfferAccepted {
        framework: String,
        offer: String,
        nodes: Vec<String>,
    },
    OfferDeclined {
        framework: String,
        offer: String,
        refuse_seconds: f64,
    },
    /// An offer was withdrawn: `expired`, a node was taken or went down, or the
    /// framework stopped listening.
    OfferRescinded {
        framework: String,
        offer: String,
        reason: String,
    },
    /// An alert started firing.
    AlertFiring(AlertEvent),
    /// A firing alert resolved.
    AlertResolved(AlertEvent),
    ImageCreated {
        image: String,
        version: u32,
    },
    ImageDeleted {
        image: String,
        version: u32,
    },
    ProfileChanged {
        profile: String,
        deleted: bool,
    },
    /// A node's agent applied its configuration (`hash`).
    ConfigApplied {
        node: String,
        profile: Option<String>,
        hash: String,
    },
    /// A node's configuration could not be applied.
    ConfigFailed {
        node: String,
        error: String,
    },
    /// Files of a node no longer have their configured content.
    ConfigDrift {
        node: String,
        paths: Vec<String>,
    },
    SoftwareInstalled {
        node: String,
        package: String,
        version: String,
    },
    SoftwareFailed {
        node: String,
        package: String,
        version: String,
        error: String,
    },
}

/// What an alert event says: which alert, and the value that fired or resolved it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertEvent {
    pub id: String,
    pub monitor: String,
    /// None for a group rule.
    pub node: Option<String>,
    pub group: String,
    pub level: String,
    pub value: f64,
    /// What else the node said (a check's output).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A node in an offer, with what a framework needs to choose.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OfferedNode {
    pub id: String,
    pub group: String,
    pub cpus: u32,
    pub memory_gib: u64,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The node that holds an identity, in [`EventData::NodeIdentityConflict`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConflictHolder {
    pub hostname: String,
    pub addresses: String,
}

/// The server that claimed it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConflictClaimant {
    pub hostname: String,
    pub address: String,
}

impl EventData {
    pub fn kind(&self) -> &'static str {
        match self {
            EventData::NodeState { .. } => "node_state",
            EventData::NodeUp { .. } => "node_up",
            EventData::NodeDown { .. } => "node_down",
            EventData::NodeUnreachable { .. } => "node_unreachable",
            EventData::NodeIdentityConflict { .. } => "node_identity_conflict",
            EventData::TenantCreated { .. } => "tenant_created",
            EventData::TenantDeleted { .. } => "tenant_deleted",
            EventData::PoolCreated { .. } => "pool_created",
            EventData::PoolDeleted { .. } => "pool_deleted",
            EventData::NodeAdded { .. } => "node_added",
            EventData::NodeRemoved { .. } => "node_removed",
            EventData::CandidatesChanged { .. } => "candidates_changed",
            EventData::MasterElected { .. } => "master_elected",
            EventData::MasterFailed { .. } => "master_failed",
            EventData::MasterFailing { .. } => "master_failing",
            EventData::MasterNone { .. } => "master_none",
            EventData::ReplaceBlocked { .. } => "replace_blocked",
            EventData::AlertFiring(_) => "alert_firing",
            EventData::AlertResolved(_) => "alert_resolved",
            EventData::BootChanged { .. } => "boot_changed",
            EventData::PowerChanged { .. } => "power_changed",
            EventData::ServiceCreated { .. } => "service_created",
            EventData::ServiceDeleted { .. } => "service_deleted",
            EventData::ServiceChanged { .. } => "service_changed",
            EventData::ServiceInstance { .. } => "service_instance",
            EventData::ServiceScaled { .. } => "service_scaled",
            EventData::NodeReclaimPending { .. } => "node_reclaim_pending",
            EventData::ReclaimStarted { .. } => "reclaim_started",
            EventData::ReclaimCompleted { .. } => "reclaim_completed",
            EventData::ReclaimCancelled { .. } => "reclaim_cancelled",
            EventData::FrameworkRegistered { .. } => "framework_registered",
            EventData::FrameworkUnregistered { .. } => "framework_unregistered",
            EventData::OfferMade { .. } => "offer_made",
            EventData::OfferAccepted { .. } => "offer_accepted",
            EventData::OfferDeclined { .. } => "offer_declined",
            EventData::OfferRescinded { .. } => "offer_rescinded",
            EventData::ImageCreated { .. } => "image_created",
            EventData::ImageDeleted { .. } => "image_deleted",
            EventData::ProfileChanged { .. } => "profile_changed",
            EventData::ConfigApplied { .. } => "config_applied",
            EventData::ConfigFailed { .. } => "config_failed",
            EventData::ConfigDrift { .. } => "config_drift",
            EventData::SoftwareInstalled { .. } => "software_installed",
            EventData::SoftwareFailed { .. } => "software_failed",
        }
    }

    /// The framework an offer or framework event is about.
    pub fn framework(&self) -> Option<&str> {
        match self {
            EventData::FrameworkRegistered { framework, .. }
            | EventData::FrameworkUnregistered { framework, .. }
            | EventData::OfferMade { framework, .. }
            | EventData::OfferAccepted { framework, .. }
            | EventData::OfferDeclined { framework, .. }
            | EventData::OfferRescinded { framework, .. } => Some(framework),
            _ => None,
        }
    }
}

pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
    kept: Mutex<VecDeque<Arc<Event>>>,
    next: AtomicU64,
    /// Cancelled at shutdown: streams end, so the API server can stop.
    closed: tokio_util::sync::CancellationToken,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(KEPT).0,
            kept: Mutex::new(VecDeque::with_capacity(KEPT)),
            next: AtomicU64::new(glory_protocol::now_ms() * 1000),
            closed: Default::default(),
        }
    }
}

impl EventBus {
    /// Publish an event. `pool` is `(pool, tenant)` for pool events.
    pub fn emit(&self, pool: Option<(&str, &str)>, data: EventData) {
        self.publish(pool, data, true);
    }

    /// Publish an event to live subscribers only, without keeping it for replay: for
    /// large, short-lived events (an offer of hundreds of nodes expires in seconds, and
    /// a reconnecting framework gets its outstanding offers in its stream's snapshot),
    /// so they cannot fill the kept events with megabytes.
    pub fn emit_transient(&self, pool: Option<(&str, &str)>, data: EventData) {
        self.publish(pool, data, false);
    }

    fn publish(&self, pool: Option<(&str, &str)>, data: EventData, keep: bool) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        // Ids are taken under the lock so the kept list and the stream agree on order.
        let event = Arc::new(Event {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            at_ms: glory_protocol::now_ms(),
            pool: pool.map(|p| p.0.to_string()),
            tenant: pool.map(|p| p.1.to_string()),
            data,
        });
        if keep {
            if kept.len() == KEPT {
                kept.pop_front();
            }
            kept.push_back(event.clone());
        }
        let _ = self.tx.send(event);
    }

    /// Subscribe: the kept events after `after` (none without it), then the live
    /// receiver. Nothing falls between the two.
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let past = match after {
            Some(id) => kept.iter().filter(|e| e.id > id).cloned().collect(),
            None => Vec::new(),
        };
        (past, rx)
    }

    /// End every stream (shutdown).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Cancelled when the bus is closed.
    pub fn closed(&self) -> tokio_util::sync::CancellationToken {
        self.closed.clone()
    }

    /// The kept events that match, oldest first, at most `limit`.
    pub fn recent(&self, limit: usize, keep: impl Fn(&Event) -> bool) -> Vec<Arc<Event>> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Arc<Event>> = kept
            .iter()
            .rev()
            .filter(|e| keep(e))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> EventData {
        EventData::TenantCreated {
            tenant: name.into(),
        }
    }

    #[tokio::test]
    async fn resume_after_an_id_replays_what_followed() {
        let bus = EventBus::default();
        bus.emit(None, tenant("a"));
        let first = bus.recent(10, |_| true)[0].id;
        bus.emit(Some(("p", "t")), EventData::PoolDeleted { nodes: 2 });
        let (past, mut rx) = bus.subscribe(Some(first));
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].kind(), "pool_deleted");
        bus.emit(None, tenant("c"));
        assert_eq!(rx.recv().await.unwrap().kind(), "tenant_created");
        // A transient event reaches live subscribers but is not kept for replay.
        bus.emit_transient(None, tenant("d"));
        assert_eq!(rx.recv().await.unwrap().kind(), "tenant_created");
        let (past, _) = bus.subscribe(Some(first));
        assert_eq!(past.len(), 2, "the transient one is not replayed");
        let line = serde_json::to_value(&*past[0]).unwrap();
        assert_eq!(line["pool"], "p");
        assert_eq!(line["nodes"], 2);
        assert_eq!(line["kind"], "pool_deleted");
    }

    fn alert_event() -> AlertEvent {
        AlertEvent {
            id: "a".into(),
            monitor: "m".into(),
            node: None,
            group: "g".into(),
            level: "critical".into(),
            value: 1.0,
            detail: None,
        }
    }

    #[test]
    fn every_kind_is_the_name_serde_writes() {
        let all = [
            EventData::NodeState {
                node: "n".into(),
                from: NodeState::Up,
                to: NodeState::Down,
            },
            EventData::NodeUp {
                node: "n".into(),
                state: NodeState::Up,
            },
            EventData::NodeDown {
                node: "n".into(),
                state: NodeState::Down,
            },
            EventData::NodeUnreachable {
                node: "n".into(),
                state: NodeState::Unreachable,
            },
            EventData::NodeIdentityConflict {
                node: "n".into(),
                identity: "uuid:1".into(),
                holder: ConflictHolder {
                    hostname: "a".into(),
                    addresses: "10.0.0.1".into(),
                },
                claimant: ConflictClaimant {
                    hostname: "b".into(),
                    address: "10.0.0.2:1".into(),
                },
            },
            tenant("t"),
            EventData::TenantDeleted { tenant: "t".into() },
            EventData::PoolCreated {
                component: "c".into(),
                nodes: 1,
            },
            EventData::PoolDeleted { nodes: 1 },
            EventData::NodeAdded {
                node: "n".into(),
                replaces: None,
            },
            EventData::NodeRemoved {
                node: "n".into(),
                reason: "r".into(),
            },
            EventData::CandidatesChanged { candidates: vec![] },
            EventData::MasterElected {
                node: "n".into(),
                address: "a".into(),
                epoch: 1,
                since_ms: 1,
                reason: "r".into(),
            },
            EventData::MasterFailed {
                node: "n".into(),
                epoch: 1,
                reason: "r".into(),
            },
            EventData::MasterFailing {
                node: "n".into(),
                epoch: 1,
                reason: "r".into(),
            },
            EventData::MasterNone { reason: "r".into() },
            EventData::ReplaceBlocked {
                node: "n".into(),
                reason: "r".into(),
            },
            EventData::AlertFiring(alert_event()),
            EventData::AlertResolved(alert_event()),
            EventData::ServiceCreated {
                service: "s".into(),
            },
            EventData::ServiceDeleted {
                service: "s".into(),
            },
            EventData::ServiceChanged {
                service: "s".into(),
                change: "scale".into(),
                desired: 2,
            },
            EventData::ServiceInstance {
                service: "s".into(),
                action: "placed".into(),
                instance: "s-1".into(),
                node: "n".into(),
                reason: "r".into(),
            },
            EventData::ServiceScaled {
                service: "s".into(),
                from: 1,
                to: 2,
                metric: "cpu.percent".into(),
                value: Some(90.0),
                reason: "r".into(),
            },
            EventData::NodeReclaimPending {
                node: "n".into(),
                for_pool: "p".into(),
                for_tenant: "t".into(),
                deadline_ms: 1,
                grace_seconds: 1.0,
            },
            EventData::ReclaimStarted {
                node: "n".into(),
                from_pool: "p".into(),
                deadline_ms: 1,
            },
            EventData::ReclaimCompleted {
                node: "n".into(),
                from_pool: "p".into(),
                to_pool: "q".into(),
                waited_ms: 1,
            },
            EventData::ReclaimCancelled {
                node: "n".into(),
                from_pool: "p".into(),
                to_pool: "q".into(),
                reason: "r".into(),
            },
            EventData::FrameworkRegistered {
                framework: "f".into(),
                name: "n".into(),
            },
            EventData::FrameworkUnregistered {
                framework: "f".into(),
                name: "n".into(),
            },
            EventData::OfferMade {
                framework: "f".into(),
                offer: "o".into(),
                nodes: vec![],
                expires_ms: 1,
            },
            EventData::OfferAccepted {
                framework: "f".into(),
                offer: "o".into(),
                nodes: vec![],
            },
            EventData::OfferDeclined {
                framework: "f".into(),
                offer: "o".into(),
                refuse_seconds: 1.0,
            },
            EventData::OfferRescinded {
                framework: "f".into(),
                offer: "o".into(),
                reason: "r".into(),
            },
        ];
        for data in all {
            let json = serde_json::to_value(&data).unwrap();
            assert_eq!(json["kind"], data.kind(), "{json}");
        }
    }
}
