//! Frameworks and offers (two-level scheduling). A framework registers for its
//! tenant's pool, listens on `GET /frameworks/{id}/offers` (Server-Sent Events) and
//! accepts or declines what it is offered. Tenant and component tokens see their own
//! tenant's frameworks and offers; another tenant's are answered as not existing.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{Stream, StreamExt};
use glory_keymaster::schema::FrameworkRecord;
use serde::Deserialize;
use serde_json::{json, Value};

use super::events::{event_stream, last_event_id};
use super::{Active, ApiError, ApiResult, ApiRole, Caller, J};
use crate::cluster::Cluster;
use crate::events::{Event, EventData};
use crate::pools::offers::Offer;
use crate::role::Node;

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/frameworks", get(list).post(register))
        .route("/frameworks/{id}", get(show).delete(unregister))
        .route("/frameworks/{id}/offers", get(offers_stream))
        .route("/offers", get(list_offers))
        .route("/offers/{id}/accept", post(accept))
        .route("/offers/{id}/decline", post(decline))
}

fn offer_view(o: &Offer) -> Value {
    json!({
        "id": o.id,
        "framework": o.framework,
        "nodes": o.nodes,
        "made_ms": o.made_ms,
        "expires_ms": o.expires_ms,
    })
}

fn framework_view(cluster: &Cluster, f: &FrameworkRecord) -> Value {
    let offers: Vec<Value> = cluster
        .outstanding_offers()
        .iter()
        .filter(|o| o.framework == f.id)
        .map(offer_view)
        .collect();
    json!({
        "id": f.id,
        "name": f.name,
        "tenant": f.tenant,
        "pool": f.pool,
        "roles": f.roles,
        "registered_ms": f.registered_ms,
        "listening": cluster.framework_listening(&f.id),
        "offers": offers,
    })
}

/// The framework, if the caller may see it.
fn visible(cluster: &Cluster, caller: &Caller, id: &str) -> ApiResult<FrameworkRecord> {
    cluster
        .framework(id)
        .filter(|f| caller.sees(&f.tenant))
        .ok_or_else(|| ApiError::not_found(format!("framework {id} does not exist")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFramework {
    name: String,
    /// Default: the caller's tenant (required for operators).
    tenant: Option<String>,
    pool: String,
    #[serde(default)]
    roles: Vec<String>,
}

async fn register(
    Active(cluster): Active,
    caller: Caller,
    J(body): J<NewFramework>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant = match caller.role {
        ApiRole::Operator => body
            .tenant
            .ok_or_else(|| ApiError::unprocessable("tenant: required for operators"))?,
        ApiRole::Tenant | ApiRole::Component => match body.tenant {
            Some(t) if !caller.sees(&t) => {
                return Err(ApiError::forbidden(
                    "a tenant or component token registers frameworks of its own tenant only",
                ))
            }
            _ => caller.tenant.clone().unwrap_or_default(),
        },
    };
    let f = cluster
        .register_framework(&body.name, &tenant, &body.pool, body.roles)
        .await?;
    Ok((StatusCode::CREATED, Json(framework_view(&cluster, &f))))
}

async fn list(Active(cluster): Active, caller: Caller) -> Json<Value> {
    let items: Vec<Value> = cluster
        .frameworks()
        .iter()
        .filter(|f| caller.sees(&f.tenant))
        .map(|f| framework_view(&cluster, f))
        .collect();
    Json(json!({"total": items.len(), "items": items}))
}

async fn show(
    Active(cluster): Active,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let f = visible(&cluster, &caller, &id)?;
    Ok(Json(framework_view(&cluster, &f)))
}

async fn unregister(
    Active(cluster): Active,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    visible(&cluster, &caller, &id)?;
    let f = cluster.unregister_framework(&id).await?;
    Ok(Json(json!({"unregistered": f.id, "pool": f.pool})))
}

/// The framework's offers as Server-Sent Events: a `snapshot` of its outstanding
/// offers (with their nodes' resources), then `offer_made`, `offer_accepted`, `offer_declined` and
/// `offer_rescinded`; ends when the framework is unregistered. While a stream is
/// open the framework is offered free nodes.
async fn offers_stream(
    Active(cluster): Active,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let f = visible(&cluster, &caller, &id)?;
    let (past, rx) = cluster.events.subscribe(last_event_id(&headers));
    // Offer events are not replayed (they are large and expire): the snapshot carries
    // the outstanding ones with their nodes' resources.
    let offers: Vec<Value> = cluster
        .outstanding_offers()
        .iter()
        .filter(|o| o.framework == f.id)
        .map(|o| {
            let mut v = offer_view(o);
            v["nodes"] =
                serde_json::to_value(cluster.offered_node_details(&o.nodes)).unwrap_or(Value::Null);
            v
        })
        .collect();
    let snapshot = SseEvent::default()
        .event("snapshot")
        .data(json!({"framework": f.id, "pool": f.pool, "offers": offers}).to_string());
    let (a, b) = (f.id.clone(), f.id.clone());
    let guard = cluster.listen(&f.id);
    let stream = event_stream(
        cluster.events.closed(),
        Some(snapshot),
        past,
        rx,
        Box::new(move |e: &Event| e.data.framework() == Some(a.as_str())),
        Box::new(move |e: &Event| {
            matches!(&e.data, EventData::FrameworkUnregistered { framework, .. } if *framework == b)
        }),
    )
    // The framework listens as long as the stream lives.
    .map(move |item| {
        let _listening = &guard;
        item
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn list_offers(Active(cluster): Active, caller: Caller) -> Json<Value> {
    let items: Vec<Value> = cluster
        .outstanding_offers()
        .iter()
        .filter(|o| {
            cluster
                .framework(&o.framework)
                .is_some_and(|f| caller.sees(&f.tenant))
        })
        .map(offer_view)
        .collect();
    Json(json!({"total": items.len(), "items": items}))
}

/// The offer's framework, if the caller may see it.
fn offer_owner(cluster: &Cluster, caller: &Caller, offer: &str) -> ApiResult<FrameworkRecord> {
    cluster
        .offer_framework(offer)
        .filter(|f| caller.sees(&f.tenant))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "offer {offer} is not outstanding (accepted, declined, rescinded or expired)"
            ))
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Accept {
    nodes: Vec<String>,
}

async fn accept(
    Active(cluster): Active,
    caller: Caller,
    Path(id): Path<String>,
    J(body): J<Accept>,
) -> ApiResult<Json<Value>> {
    let f = offer_owner(&cluster, &caller, &id)?;
    if body.nodes.len() > 100_000 {
        return Err(ApiError::bad_request("nodes: at most 100000"));
    }
    let (pool, added) = cluster.accept_offer(&id, &body.nodes).await?;
    Ok(Json(json!({
        "offer": id,
        "framework": f.id,
        "pool": pool.name,
        "added": added,
        "size": pool.nodes.len(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decline {
    refuse_seconds: Option<f64>,
}

async fn decline(
    Active(cluster): Active,
    caller: Caller,
    Path(id): Path<String>,
    J(body): J<Decline>,
) -> ApiResult<Json<Value>> {
    let f = offer_owner(&cluster, &caller, &id)?;
    let refuse = body.refuse_seconds.unwrap_or(5.0);
    if !(0.0..=86_400.0).contains(&refuse) {
        return Err(ApiError::bad_request(
            "refuse_seconds: must be between 0 and 86400",
        ));
    }
    let o = cluster.decline_offer(&id, refuse)?;
    Ok(Json(json!({
        "offer": o.id,
        "framework": f.id,
        "declined": o.nodes,
        "refuse_seconds": refuse,
    })))
}
