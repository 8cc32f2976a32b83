//! The durable event log: the active cluster master writes every kept event to the
//! key master (`/glory/events/<id>`, a ring of the last [`KEPT`]) before any subscriber
//! sees it, so a subscriber that resumes with `Last-Event-ID` at the next leader after
//! a failover misses nothing and gets nothing twice. Transient events (offers) are not
//! written but keep their place in the order.
//!
//! One writer, group commit: whatever waits when a write ends goes in the next
//! transaction, at most [`BATCH`] events (and as many deletes of the ring's oldest),
//! inside etcd's 128 operations. Writes are fenced like every other (`km_txn`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use glory_keymaster::{KeyMaster, Txn, TxnOp};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::events::{Event, StoredEvent, KEPT};

use glory_keymaster::schema::EVENTS_PREFIX as PREFIX;
/// Events written in one transaction at most.
const BATCH: usize = 50;

fn key(id: u64) -> String {
    format!("{PREFIX}{id:020}")
}

/// The ring a previous leader left: its events, and their ids oldest first. A record
/// that does not parse is skipped (and deleted when the ring moves past it).
pub(crate) async fn load(km: &dyn KeyMaster) -> anyhow::Result<(Vec<Event>, VecDeque<u64>)> {
    let (kvs, _) = km.get_prefix(PREFIX).await?;
    let mut ids: Vec<u64> = Vec::new();
    let mut events = Vec::new();
    for kv in kvs {
        let Some(id) = kv.key.strip_prefix(PREFIX).and_then(|t| t.parse().ok()) else {
            continue;
        };
        ids.push(id);
        match serde_json::from_slice::<StoredEvent>(&kv.value) {
            Ok(e) if e.id == id => events.push(e.into()),
            Ok(_) | Err(_) => warn!(key = %kv.key, "an event record that does not parse; skipped"),
        }
    }
    ids.sort_unstable();
    Ok((events, ids.into()))
}

/// Write waiting events and send them to subscribers, until `shutdown`.
pub(crate) async fn writer(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let mut ring =
        std::mem::take(&mut *cluster.event_ring.lock().unwrap_or_else(|p| p.into_inner()));
    let bus = &cluster.events;
    bus.make_durable();
    let mut backoff = Duration::from_millis(100);
    loop {
        let batch = bus.waiting(BATCH);
        if batch.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = bus.wake.notified() => continue,
            }
        }
        let mut ops = Vec::with_capacity(2 * batch.len());
        let mut added = Vec::new();
        for (event, keep) in &batch {
            if !keep {
                continue;
            }
            match serde_json::to_vec(&StoredEvent::from(&**event)) {
                Ok(value) => {
                    ops.push(TxnOp::put(key(event.id), value));
                    added.push(event.id);
                }
                Err(e) => {
                    warn!(id = event.id, error = %e, "an event that does not serialize; sent, not kept")
                }
            }
        }
        // A ring left longer than KEPT shrinks a batch at a time (etcd's operation limit).
        let evict = (ring.len() + added.len())
            .saturating_sub(KEPT)
            .min(2 * BATCH - added.len());
        ops.extend(
            ring.iter()
                .take(evict)
                .map(|id| TxnOp::Delete { key: key(*id) }),
        );
        if !ops.is_empty() {
            if let Err(e) = cluster
                .km_txn(Txn {
                    success: ops,
                    ..Default::default()
                })
                .await
            {
                // Nothing is sent until it is written: subscribers wait, in order.
                warn!(error = %e, waiting = batch.len(), "events not written to the key master; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            ring.drain(..evict);
            ring.extend(added);
        }
        backoff = Duration::from_millis(100);
        debug!(events = batch.len(), "events written and sent");
        bus.sent(batch.len());
    }
}
