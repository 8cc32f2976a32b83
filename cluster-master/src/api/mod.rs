//! The REST API (JSON over HTTP). Every route but `/healthz`, the spec, the console's
//! files and sign-in needs a bearer token or a console session.
//! Errors are `{"error": {"code", "message"}}` with a fitting status.
//!
//! This file only assembles the router. Each family of routes is a module with a
//! `routes()` function; a new subsystem adds its module and one `merge` line below,
//! among the operator-only families or among those that check per caller what it may
//! see.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use crate::role::Node;

mod auth;
mod boot;
mod bootstrap_tokens;
mod cluster;
mod error;
mod events;
mod extract;
mod frameworks;
mod groups;
mod images;
mod latency;
mod metrics;
mod monitoring;
mod node_filter;
mod nodes;
mod openapi;
mod pools;
mod power;
mod services;
mod session;
mod sim;
mod tenants;
mod users;

pub use error::ApiError;
use error::ApiResult;
pub use extract::Active;
use extract::{ApiRole, Caller, J, Q};
pub(crate) use latency::ApiLatency;

/// The operations and schemas of the families whose handlers declare them
/// (`#[utoipa::path]`), for the served description (`openapi.rs`).
fn derived_openapi() -> utoipa::openapi::OpenApi {
    let mut api = tenants::routes().into_openapi();
    api.merge(pools::routes().into_openapi());
    api.merge(bootstrap_tokens::routes().into_openapi());
    api.merge(users::routes().into_openapi());
    api.merge(cluster::routes().into_openapi());
    api.merge(groups::routes().into_openapi());
    api.merge(sim::routes().into_openapi());
    api.merge(frameworks::routes().into_openapi());
    api.merge(session::routes().into_openapi());
    api.merge(nodes::routes().into_openapi());
    api.merge(boot::routes().into_openapi());
    api.merge(services::routes().into_openapi());
    api.merge(monitoring::routes().into_openapi());
    api.merge(power::routes().into_openapi());
    api.merge(images::routes().into_openapi());
    api.merge(events::routes().into_openapi());
    api.merge(openapi::routes().into_openapi());
    api
}

pub fn router(node: Arc<Node>) -> Router {
    // Families for operators only.
    let operator = Router::new()
        .merge(Router::from(cluster::routes()))
        .merge(Router::from(nodes::routes()))
        .merge(Router::from(groups::routes()))
        .merge(Router::from(bootstrap_tokens::routes()))
        .merge(Router::from(sim::routes()))
        .merge(Router::from(events::routes()))
        .merge(Router::from(monitoring::routes()))
        .merge(Router::from(users::routes()))
        .merge(Router::from(boot::routes()))
        .merge(Router::from(power::routes()))
        .merge(Router::from(images::routes()))
        .route_layer(axum::middleware::from_fn(auth::operator_only));
    // Families that decide per caller (tenant, role) what it may see and do.
    let api = operator
        .merge(Router::from(tenants::routes()))
        .merge(Router::from(pools::routes()))
        .merge(Router::from(services::routes()))
        .merge(Router::from(frameworks::routes()))
        .route_layer(axum::middleware::from_fn_with_state(
            node.clone(),
            auth::authenticate,
        ))
        .merge(Router::from(openapi::routes()))
        // Signing in needs no token; the session routes check the cookie themselves.
        .merge(Router::from(session::routes()))
        .fallback(|| async { ApiError::not_found("no such API route") });
    // Prometheus scrapes with an operator token, beside the API.
    let metrics = Router::new()
        .route("/metrics", get(metrics::scrape))
        .route_layer(axum::middleware::from_fn(auth::operator_only))
        .route_layer(axum::middleware::from_fn_with_state(
            node.clone(),
            auth::authenticate,
        ));
    Router::new()
        .route("/healthz", get(cluster::healthz))
        // Content by hash, for group masters' proxies and agents: no token.
        .route("/content/{sha256}", get(images::serve_content))
        // Torrents of content that spreads peer-to-peer, by hash: no token either.
        .route("/torrent/{sha256}", get(images::serve_torrent))
        // The images' BitTorrent tracker: no token either (clients send none).
        .route("/announce", get(images::announce))
        .merge(metrics)
        .merge(crate::console::routes())
        .nest("/api/v1", api)
        // Every route timed, by its pattern (`/api/v1/nodes/{id}`), for `/metrics`.
        .route_layer(axum::middleware::from_fn_with_state(
            node.clone(),
            latency::timed,
        ))
        .fallback(|| async { ApiError::not_found("no such route") })
        // gzip when the client asks (browsers do; the CLI does not). Its default
        // predicate leaves event streams and small bodies alone.
        .layer(tower_http::compression::CompressionLayer::new())
        .with_state(node)
}
