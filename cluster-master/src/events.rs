//! The cluster's event stream: node transitions, pool changes, master elections. Events
//! fan out to live subscribers (the API's Server-Sent Events) and the last few thousand
//! are kept, so a subscriber that reconnects with `Last-Event-ID` misses nothing that
//! is still kept. Events live in memory: a new cluster master starts a new stream whose
//! ids are larger than the old one's (they start at the start time in microseconds).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// How many past events are kept for reconnecting subscribers and pool details.
const KEPT: usize = 4096;

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub id: u64,
    pub kind: &'static str,
    pub at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Kind-specific fields (node, epoch, reason...).
    #[serde(flatten)]
    pub data: serde_json::Map<String, Value>,
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
    pub fn emit(&self, kind: &'static str, pool: Option<(&str, &str)>, data: Value) {
        let data = match data {
            Value::Object(map) => map,
            Value::Null => Default::default(),
            other => [("value".to_string(), other)].into_iter().collect(),
        };
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        // Ids are taken under the lock so the kept list and the stream agree on order.
        let event = Arc::new(Event {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            kind,
            at_ms: glory_protocol::now_ms(),
            pool: pool.map(|p| p.0.to_string()),
            tenant: pool.map(|p| p.1.to_string()),
            data,
        });
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(event.clone());
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
    use serde_json::json;

    #[tokio::test]
    async fn resume_after_an_id_replays_what_followed() {
        let bus = EventBus::default();
        bus.emit("a", None, json!({"n": 1}));
        let first = bus.recent(10, |_| true)[0].id;
        bus.emit("b", Some(("p", "t")), json!({"n": 2}));
        let (past, mut rx) = bus.subscribe(Some(first));
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].kind, "b");
        bus.emit("c", None, Value::Null);
        assert_eq!(rx.recv().await.unwrap().kind, "c");
        let line = serde_json::to_value(&*past[0]).unwrap();
        assert_eq!(line["pool"], "p");
        assert_eq!(line["n"], 2);
    }
}
