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
use axum::Json;
use futures::stream::{Stream, StreamExt};
use glory_keymaster::schema::FrameworkRecord;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::events::{event_stream, last_event_id};
use super::{Active, ApiError, ApiResult, ApiRole, Caller, J};
use crate::cluster::Cluster;
use crate::events::{Event, EventData};
use crate::pools::offers::Offer;
use crate::role::Node;

pub(super) fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::default()
        .routes(routes!(list, register))
        .routes(routes!(show, unregister))
        .routes(routes!(offers_stream))
        .routes(routes!(list_offers))
        .routes(routes!(accept))
        .routes(routes!(decline))
}

/// Free nodes offered to a framework until `expires_ms`.
#[derive(Serialize, ToSchema)]
#[schema(as = Offer)]
struct OfferView {
    id: String,
    framework: String,
    nodes: Vec<String>,
    made_ms: u64,
    expires_ms: u64,
}

impl From<&Offer> for OfferView {
    fn from(o: &Offer) -> Self {
        OfferView {
            id: o.id.clone(),
            framework: o.framework.clone(),
            nodes: o.nodes.clone(),
            made_ms: o.made_ms,
            expires_ms: o.expires_ms,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct OfferList {
    total: usize,
    items: Vec<OfferView>,
}

/// A framework: a component that receives offers of free nodes for its tenant's pool.
#[derive(Serialize, ToSchema)]
#[schema(as = Framework)]
struct FrameworkView {
    id: String,
    name: String,
    tenant: String,
    pool: String,
    /// Nodes labelled role=<r> are offered only to frameworks with role r; unlabelled
    /// nodes to anyone.
    roles: Vec<String>,
    registered_ms: u64,
    /// Whether an offer stream is open (only listening frameworks get offers).
    listening: bool,
    offers: Vec<OfferView>,
}

#[derive(Serialize, ToSchema)]
struct FrameworkList {
    total: usize,
    items: Vec<FrameworkView>,
}

#[derive(Serialize, ToSchema)]
struct FrameworkUnregistered {
    unregistered: String,
    pool: String,
}

fn framework_view(cluster: &Cluster, f: &FrameworkRecord) -> FrameworkView {
    let offers = cluster
        .outstanding_offers()
        .iter()
        .filter(|o| o.framework == f.id)
        .map(OfferView::from)
        .collect();
    FrameworkView {
        id: f.id.clone(),
        name: f.name.clone(),
        tenant: f.tenant.clone(),
        pool: f.pool.clone(),
        roles: f.roles.clone(),
        registered_ms: f.registered_ms,
        listening: cluster.framework_listening(&f.id),
        offers,
    }
}

/// The framework, if the caller may see it.
fn visible(cluster: &Cluster, caller: &Caller, id: &str) -> ApiResult<FrameworkRecord> {
    cluster
        .framework(id)
        .filter(|f| caller.sees(&f.tenant))
        .ok_or_else(|| ApiError::not_found(format!("framework {id} does not exist")))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = FrameworkRequest)]
struct NewFramework {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    name: String,
    /// Default: the caller's tenant; required for operators.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    tenant: Option<String>,
    /// The framework's pool; created empty and elastic when it does not exist.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pool: String,
    #[serde(default)]
    #[schema(schema_with = roles_schema)]
    roles: Vec<String>,
}

/// At most 16 role names.
fn roles_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[a-z0-9][a-z0-9-]{0,62}$")),
        )
        .max_items(Some(16))
        .description(Some(
            "Nodes labelled role=<r> are offered only to frameworks with role r; \
             unlabelled nodes to anyone.",
        ))
        .build()
}

#[utoipa::path(post, path = "/frameworks", tag = "frameworks", operation_id = "registerFramework",
    summary = "Register a framework for a tenant's pool.",
    description = "The pool is created empty and elastic (size {min: 0, max: 100000}) when it does not exist. The framework is offered free nodes while its offer stream is open.",
    request_body(content = NewFramework, example = json!({"name": "spark",
        "tenant": "analytics", "pool": "analytics-spark"})),
    responses((status = 201, description = "The framework.", body = FrameworkView, links(
        ("GetFramework" = (operation_id = "getFramework", parameters(("id" = "$response.body#/id")))),
        ("UnregisterFramework" = (operation_id = "unregisterFramework", parameters(("id" = "$response.body#/id")))),
        ("StreamOffers" = (operation_id = "streamOffers", parameters(("id" = "$response.body#/id")))),
    ))))]
async fn register(
    Active(cluster): Active,
    caller: Caller,
    J(body): J<NewFramework>,
) -> ApiResult<(StatusCode, Json<FrameworkView>)> {
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

#[utoipa::path(get, path = "/frameworks", tag = "frameworks", operation_id = "listFrameworks",
    summary = "List frameworks (a tenant or component token sees its tenant's).",
    responses((status = 200, description = "Frameworks.", body = FrameworkList)))]
async fn list(Active(cluster): Active, caller: Caller) -> Json<FrameworkList> {
    let items: Vec<FrameworkView> = cluster
        .frameworks()
        .iter()
        .filter(|f| caller.sees(&f.tenant))
        .map(|f| framework_view(&cluster, f))
        .collect();
    Json(FrameworkList {
        total: items.len(),
        items,
    })
}

#[utoipa::path(get, path = "/frameworks/{id}", tag = "frameworks", operation_id = "getFramework",
    summary = "A framework and its outstanding offers.",
    params(("id" = String, Path, description = "Framework id.")),
    responses((status = 200, description = "The framework.", body = FrameworkView)))]
async fn show(
    Active(cluster): Active,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<FrameworkView>> {
    let f = visible(&cluster, &caller, &id)?;
    Ok(Json(framework_view(&cluster, &f)))
}

#[utoipa::path(delete, path = "/frameworks/{id}", tag = "frameworks",
    operation_id = "unregisterFramework",
    summary = "Unregister a framework (its offers are rescinded; its pool stays).",
    params(("id" = String, Path, description = "Framework id.")),
    responses((status = 200, description = "Unregistered.", body = FrameworkUnregistered)))]
async fn unregister(
    Active(cluster): Active,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<FrameworkUnregistered>> {
    visible(&cluster, &caller, &id)?;
    let f = cluster.unregister_framework(&id).await?;
    Ok(Json(FrameworkUnregistered {
        unregistered: f.id,
        pool: f.pool,
    }))
}

/// The framework's offers as Server-Sent Events: a `snapshot` of its outstanding
/// offers (with their nodes' resources), then `offer_made`, `offer_accepted`, `offer_declined` and
/// `offer_rescinded`; ends when the framework is unregistered. While a stream is
/// open the framework is offered free nodes.
#[utoipa::path(get, path = "/frameworks/{id}/offers", tag = "frameworks", operation_id = "streamOffers",
    summary = "Receive a framework's offers (Server-Sent Events).",
    description = "Starts with a `snapshot` event (`{framework, pool, offers}`: the outstanding offers with their nodes' resources; `offer_made` events are sent live only, never replayed after `Last-Event-ID`), then `offer_made` (`{offer, nodes: [{id, group, cpus, memory_gib, labels}], expires_ms}`), `offer_accepted`, `offer_declined` and `offer_rescinded` (`reason`: expired, a node was taken or went down, the framework stopped listening, framework unregistered); ends after `framework_unregistered`. While a stream is open the framework gets offers, in Dominant Resource Fairness order.",
    params(("id" = String, Path, description = "Framework id (`fw-...`)."),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, description = super::events::LAST_EVENT_ID)),
    responses((status = 200, description = "A stream of Server-Sent Events.",
        content_type = "text/event-stream", body = super::events::SseFrame)))]
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
            let mut v = serde_json::to_value(OfferView::from(o)).unwrap_or(Value::Null);
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

#[utoipa::path(get, path = "/offers", tag = "frameworks", operation_id = "listOffers",
    summary = "Outstanding offers (a tenant or component token sees its tenant's).",
    responses((status = 200, description = "Offers.", body = OfferList)))]
async fn list_offers(Active(cluster): Active, caller: Caller) -> Json<OfferList> {
    let items: Vec<OfferView> = cluster
        .outstanding_offers()
        .iter()
        .filter(|o| {
            cluster
                .framework(&o.framework)
                .is_some_and(|f| caller.sees(&f.tenant))
        })
        .map(OfferView::from)
        .collect();
    Json(OfferList {
        total: items.len(),
        items,
    })
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AcceptRequest)]
struct Accept {
    /// Node ids of the offer to take.
    #[schema(min_items = 1, max_items = 100000)]
    nodes: Vec<String>,
}

/// What joined the pool.
#[derive(Serialize, ToSchema)]
struct Accepted {
    offer: String,
    framework: String,
    pool: String,
    added: Vec<String>,
    size: usize,
}

#[utoipa::path(post, path = "/offers/{id}/accept", tag = "frameworks", operation_id = "acceptOffer",
    summary = "Accept nodes of an offer: they join the framework's pool.",
    description = "The nodes must be in the offer (400 naming `nodes`); the tenant's quota and the pool's bounds hold (409). The offer ends; nodes not accepted are not offered to this framework for 5 s.",
    params(("id" = String, Path, description = "Offer id.")),
    request_body = Accept,
    responses((status = 200, description = "What joined the pool.", body = Accepted)))]
async fn accept(
    Active(cluster): Active,
    caller: Caller,
    Path(id): Path<String>,
    J(body): J<Accept>,
) -> ApiResult<Json<Accepted>> {
    let f = offer_owner(&cluster, &caller, &id)?;
    if body.nodes.len() > 100_000 {
        return Err(ApiError::bad_request("nodes: at most 100000"));
    }
    let (pool, added) = cluster.accept_offer(&id, &body.nodes).await?;
    Ok(Json(Accepted {
        offer: id,
        framework: f.id,
        size: pool.nodes.len(),
        pool: pool.name,
        added,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DeclineRequest)]
struct Decline {
    /// Do not offer these nodes to this framework again for this long (default 5).
    #[schema(minimum = 0, maximum = 86400)]
    refuse_seconds: Option<f64>,
}

#[derive(Serialize, ToSchema)]
struct Declined {
    offer: String,
    framework: String,
    declined: Vec<String>,
    refuse_seconds: f64,
}

#[utoipa::path(post, path = "/offers/{id}/decline", tag = "frameworks", operation_id = "declineOffer",
    summary = "Decline an offer.",
    params(("id" = String, Path, description = "Offer id.")),
    request_body = Decline,
    responses((status = 200, description = "Declined.", body = Declined)))]
async fn decline(
    Active(cluster): Active,
    caller: Caller,
    Path(id): Path<String>,
    J(body): J<Decline>,
) -> ApiResult<Json<Declined>> {
    let f = offer_owner(&cluster, &caller, &id)?;
    let refuse = body.refuse_seconds.unwrap_or(5.0);
    if !(0.0..=86_400.0).contains(&refuse) {
        return Err(ApiError::bad_request(
            "refuse_seconds: must be between 0 and 86400",
        ));
    }
    let o = cluster.decline_offer(&id, refuse)?;
    Ok(Json(Declined {
        offer: o.id,
        framework: f.id,
        declined: o.nodes,
        refuse_seconds: refuse,
    }))
}
