//! The HTTP layer: thin routes over the domain, one error type, one edge middleware.

pub mod apikey;
pub mod audit;
pub mod auth;
pub mod budget;
pub mod cors;
pub mod error;
pub mod extract;
pub mod gate;
pub mod idempotency;
pub mod middleware;
pub mod openapi;
pub mod pagination;
pub mod redirect;
pub mod responses;
pub mod routes;
pub mod server;
pub mod state;
pub mod tls;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;

use crate::http::cors::CorsPolicy;
use crate::http::error::ApiError;
use crate::http::gate::{Gate, GateLayer};
use crate::http::middleware::EdgeConfig;
use crate::http::state::AppState;

/// The API's routes and the OpenAPI document (JSON) describing them, from the same declarations.
pub fn api() -> (Router<AppState>, String) {
    let (routes, operations) = routes::router().split_for_parts();
    (routes, openapi::document_json(operations))
}

/// The whole application: `routes` (the [`api`] and whatever embedders and tests add), all behind
/// the same stack (`gate.rs`: edge outermost, so even a response made by another part of the stack
/// — CORS preflight, 408, 413 — gets the request id, problem shape and headers; then CORS, the
/// timeout, the global budget) around each route and its body limits.
pub fn router(state: AppState, routes: Router<AppState>, tls: bool) -> Router {
    let http = &state.config.http;
    let gate = Gate {
        edge: EdgeConfig { trusted_proxies: Arc::new(http.trusted_proxies.clone()), tls, meters: state.meters.clone() },
        cors: CorsPolicy(Arc::new(http.cors_origins.clone())),
        timeout: http.request_timeout,
        body_limit: http.body_limit,
        state: state.clone(),
    };
    routes
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(http.body_limit))
        .layer(RequestBodyLimitLayer::new(http.body_limit))
        .layer(GateLayer(Arc::new(gate)))
        .with_state(state)
}
