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
use futures::stream::{self, Stream};
use serde_json::json;
use tokio::sync::broadcast;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Active, ApiResult, Caller};
use crate::events::{Event, EventData};
use crate::role::Node;

/// Every event, for operators. A pool's stream is among the pool routes.
pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default().routes(routes!(cluster_events))
}

/// The description of the `Last-Event-ID` header the streams take.
pub(super) const LAST_EVENT_ID: &str = "Id of the last event received: the kept events after it are replayed first (an id that is not a number is ignored).";

const STREAM: &str = "A stream of Server-Sent Events (`event: <kind>`, `id: <id>`, one JSON `data:` line); a comment line is sent every 15 s to keep the connection open.";

/// One Server-Sent Event, as the streams send it (`text/event-stream`).
pub(super) struct SseFrame;

impl utoipa::PartialSchema for SseFrame {
    fn schema() -> RefOr<Schema> {
        let string = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
        };
        Schema::Object(
            ObjectBuilder::new()
                .description(Some(
                    "One Server-Sent Event. `data` is a JSON object: an `Event`, a stream's \
                     `snapshot`, or `lagged` `{missed}` (how many events a slow reader lost).",
                ))
                .property(
                    "event",
                    string("The event kind (`snapshot`, `lagged`, or an `Event.kind`)."),
                )
                .property("data", string("One JSON object."))
                .property("id", string("Event id, for `Last-Event-ID`."))
                .build(),
        )
        .into()
    }
}

impl ToSchema for SseFrame {
    fn name() -> std::borrow::Cow<'static, str> {
        "SseEvent".into()
    }
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

#[utoipa::path(get, path = "/pools/{name}/events", tag = "events", operation_id = "streamPoolEvents",
    summary = "Stream a pool's events (Server-Sent Events).",
    description = "Starts with a `snapshot` event (`{pool, tenant, master, nodes, candidates}`, without id), then the kept events after `Last-Event-ID` (if given), then live ones; ends after `pool_deleted`.",
    params(("name" = String, Path, description = "Pool name."),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, description = LAST_EVENT_ID)),
    responses((status = 200, description = STREAM,
        content_type = "text/event-stream", body = SseFrame)))]
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

#[utoipa::path(get, path = "/events", tag = "events", operation_id = "streamClusterEvents",
    summary = "Stream every cluster event (Server-Sent Events).",
    description = "Operators only. Live events from now on (after `Last-Event-ID`, the kept ones that followed it first); the stream does not end. A `lagged` event `{missed}` tells a slow reader how many it lost.",
    params(("Last-Event-ID" = Option<String>, Header, nullable = false, description = LAST_EVENT_ID)),
    responses((status = 200, description = STREAM,
        content_type = "text/event-stream", body = SseFrame)))]
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
