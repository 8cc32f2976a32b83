//! Server-Sent Events: `GET /api/v1/pools/{name}/events` for a pool's owner and
//! `GET /api/v1/events` (everything) for operators. Each event is `event: <kind>`,
//! `id: <id>` and one JSON `data:` line; a client that reconnects with `Last-Event-ID`
//! gets what it missed (of the last few thousand events). A pool stream starts with a
//! `snapshot` event (the pool's master and nodes now) and ends after `pool_deleted`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures::stream::{self, Stream};
use serde_json::json;
use tokio::sync::broadcast;

use super::{Active, ApiResult, Caller};
use crate::events::{Event, EventData};
use crate::role::Node;

/// Every event, for operators. A pool's stream is among the pool routes.
pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new().route("/events", get(cluster_events))
}

pub(super) fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn to_sse(e: &Event) -> SseEvent {
    SseEvent::default()
        .event(e.kind())
        .id(e.id.to_string())
        .data(serde_json::to_string(e).unwrap_or_default())
}

pub(super) type Filter = Box<dyn Fn(&Event) -> bool + Send>;

/// `first` (if any), then the kept events after the client's last id, then live ones,
/// all passing `keep`; ends after an event for which `last` holds.
pub(super) fn event_stream(
    closed: tokio_util::sync::CancellationToken,
    first: Option<SseEvent>,
    past: Vec<Arc<Event>>,
    rx: broadcast::Receiver<Arc<Event>>,
    keep: Filter,
    last: Filter,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct St {
        first: Option<SseEvent>,
        past: std::vec::IntoIter<Arc<Event>>,
        rx: broadcast::Receiver<Arc<Event>>,
        keep: Filter,
        last: Filter,
        done: bool,
        seen: u64,
        closed: tokio_util::sync::CancellationToken,
    }
    let st = St {
        closed,
        first,
        past: past.into_iter(),
        rx,
        keep,
        last,
        done: false,
        seen: 0,
    };
    stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(first) = st.first.take() {
            return Some((Ok(first), st));
        }
        loop {
            let event = match st.past.next() {
                Some(e) => e,
                None => match tokio::select! {
                    r = st.rx.recv() => r,
                    _ = st.closed.cancelled() => return None,
                } {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let e = SseEvent::default()
                            .event("lagged")
                            .data(json!({"missed": missed}).to_string());
                        return Some((Ok(e), st));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            // Replayed and live events may overlap by a few; ids only grow.
            if event.id <= st.seen || !(st.keep)(&event) {
                continue;
            }
            st.seen = event.id;
            st.done = (st.last)(&event);
            return Some((Ok(to_sse(&event)), st));
        }
    })
}

pub(super) async fn pool_events(
    Active(cluster): Active,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let pool = super::pools::visible_pool(&cluster, &caller, &name)?;
    let (past, rx) = cluster.events.subscribe(last_event_id(&headers));
    let snapshot = SseEvent::default().event("snapshot").data(
        json!({
            "pool": pool.name,
            "tenant": pool.tenant,
            "master": pool.master.as_ref().map(|m| super::pools::master_view(&cluster, &pool.name, m)),
            "nodes": pool.nodes.len(),
            "candidates": pool.candidates,
        })
        .to_string(),
    );
    let (n1, n2) = (name.clone(), name);
    let stream = event_stream(
        cluster.events.closed(),
        Some(snapshot),
        past,
        rx,
        Box::new(move |e: &Event| e.pool.as_deref() == Some(&n1)),
        Box::new(move |e: &Event| {
            matches!(e.data, EventData::PoolDeleted { .. }) && e.pool.as_deref() == Some(&n2)
        }),
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn cluster_events(
    Active(cluster): Active,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let (past, rx) = cluster.events.subscribe(last_event_id(&headers));
    let stream = event_stream(
        cluster.events.closed(),
        None,
        past,
        rx,
        Box::new(|_| true),
        Box::new(|_| false),
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
