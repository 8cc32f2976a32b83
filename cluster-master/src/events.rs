//! The cluster's event stream: node transitions, pool changes, master elections. Events
//! fan out to live subscribers (the API's Server-Sent Events) and the last few thousand
//! are kept, so a subscriber that reconnects with `Last-Event-ID` misses nothing that
//! is still kept.
//!
//! The active cluster master keeps them durable (`event_log.rs`): an event reaches
//! subscribers only once it is written to the key master's ring of the last [`KEPT`],
//! so a subscriber that resumes at the next leader after a failover gets every event
//! it missed, none twice. Ids grow across masters: a new leader continues after the
//! ring's last id (or from its start time in microseconds, if later).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use glory_protocol::NodeState;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// How many past events are kept for reconnecting subscribers and pool details (in
/// memory, and in the key master's ring).
pub(crate) const KEPT: usize = 4096;
/// Events waiting for the key master at most; past it (a long key master outage) the
/// oldest are dropped, counted and logged.
const MAX_PENDING: usize = 65_536;

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

/// An event as the key master keeps it: its data nested, not flattened as the API
/// writes it (there a pool event's `tenant` and a tenant event's share the name).
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredEvent {
    pub id: u64,
    pub at_ms: u64,
    pub pool: Option<String>,
    pub tenant: Option<String>,
    pub data: EventData,
}

impl From<&Event> for StoredEvent {
    fn from(e: &Event) -> Self {
        StoredEvent {
            id: e.id,
            at_ms: e.at_ms,
            pool: e.pool.clone(),
            tenant: e.tenant.clone(),
            data: e.data.clone(),
        }
    }
}

impl From<StoredEvent> for Event {
    fn from(e: StoredEvent) -> Self {
        Event {
            id: e.id,
            at_ms: e.at_ms,
            pool: e.pool,
            tenant: e.tenant,
            data: e.data,
        }
    }
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OfferedNode {
    pub id: String,
    pub group: String,
    pub cpus: u32,
    pub memory_gib: u64,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The node that holds an identity, in [`EventData::NodeIdentityConflict`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictHolder {
    pub hostname: String,
    pub addresses: String,
}

/// The server that claimed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// The kept events, and (under the same lock) the highest id sent to streams.
    kept: Mutex<Kept>,
    next: AtomicU64,
    /// Cancelled at shutdown: streams end, so the API server can stop.
    closed: tokio_util::sync::CancellationToken,
    /// Whether a writer makes events durable before they are sent (the active
    /// master's `event_log::writer`); without one they are sent at once.
    durable: AtomicBool,
    /// Events emitted and not sent yet, in id order, with whether each is kept.
    pending: Mutex<VecDeque<(Arc<Event>, bool)>>,
    /// Something was added to `pending`.
    pub(crate) wake: tokio::sync::Notify,
    /// Events dropped because the key master was away too long.
    dropped: AtomicU64,
}

#[derive(Default)]
struct Kept {
    events: VecDeque<Arc<Event>>,
    /// The highest id sent to streams: a subscriber's replay stops here, its live
    /// receiver goes on from here.
    sent: u64,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(KEPT).0,
            kept: Mutex::new(Kept::default()),
            next: AtomicU64::new(glory_protocol::now_ms() * 1000),
            closed: Default::default(),
            durable: AtomicBool::new(false),
            pending: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut kept = lock(&self.kept);
        // Ids are taken under the lock so the kept list and the stream agree on order.
        let event = Arc::new(Event {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            at_ms: glory_protocol::now_ms(),
            pool: pool.map(|p| p.0.to_string()),
            tenant: pool.map(|p| p.1.to_string()),
            data,
        });
        if keep {
            if kept.events.len() == KEPT {
                kept.events.pop_front();
            }
            kept.events.push_back(event.clone());
        }
        if self.durable.load(Ordering::Acquire) {
            let mut pending = lock(&self.pending);
            if pending.len() == MAX_PENDING {
                pending.pop_front();
                if self
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(1000)
                {
                    tracing::warn!(
                        dropped = self.dropped.load(Ordering::Relaxed),
                        "events wait for the key master: dropping the oldest unwritten"
                    );
                }
            }
            pending.push_back((event, keep));
            drop(pending);
            self.wake.notify_one();
            return;
        }
        kept.sent = event.id;
        let _ = self.tx.send(event);
    }

    /// From now on events reach subscribers only through [`EventBus::sent`], after
    /// the writer has made them durable.
    pub(crate) fn make_durable(&self) {
        self.durable.store(true, Ordering::Release);
    }

    /// Up to `max` events waiting to be written and sent, oldest first (they stay
    /// queued until [`EventBus::sent`]).
    pub(crate) fn waiting(&self, max: usize) -> Vec<(Arc<Event>, bool)> {
        lock(&self.pending).iter().take(max).cloned().collect()
    }

    /// The first `n` waiting events are durable: send them to subscribers, in order.
    pub(crate) fn sent(&self, n: usize) {
        let mut kept = lock(&self.kept);
        let mut pending = lock(&self.pending);
        let n = n.min(pending.len());
        for (event, _) in pending.drain(..n) {
            kept.sent = event.id;
            let _ = self.tx.send(event);
        }
    }

    /// Events a previous leader made durable (the key master's ring, any order): kept
    /// for replay and counted as sent; new ids continue after them.
    pub(crate) fn restore(&self, mut events: Vec<Event>) {
        events.sort_by_key(|e| e.id);
        let mut kept = lock(&self.kept);
        for event in events.into_iter().rev().take(KEPT).rev() {
            kept.sent = kept.sent.max(event.id);
            self.next.fetch_max(event.id + 1, Ordering::Relaxed);
            kept.events.push_back(Arc::new(event));
        }
        kept.events.make_contiguous().sort_by_key(|e| e.id);
        while kept.events.len() > KEPT {
            kept.events.pop_front();
        }
    }

    /// Subscribe: the kept events after `after` (none without it), then the live
    /// receiver. Nothing falls between the two.
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let kept = lock(&self.kept);
        let rx = self.tx.subscribe();
        let past = match after {
            Some(id) => kept
                .events
                .iter()
                .filter(|e| e.id > id && e.id <= kept.sent)
                .cloned()
                .collect(),
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
        let kept = lock(&self.kept);
        let mut out: Vec<Arc<Event>> = kept
            .events
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
mod tests;
