//! The HTTP layer: thin routes over the domain, one error type, one edge middleware.

pub mod apikey;
pub mod audit;
pub mod auth;
pub mod budget;
pub mod cors;
pub mod error;
pub mod extract;
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
use axum::http::{header, HeaderName};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;

use crate::http::cors::{cors, CorsPolicy};
use crate::http::error::ApiError;
use crate::http::middleware::{edge, EdgeConfig};
use crate::http::state::AppState;

/// The API's routes and the OpenAPI document (JSON) describing them, from the same declarations.
pub fn api() -> (Router<AppState>, String) {
    let (routes, operations) = routes::router().split_for_parts();
    (routes, openapi::document_json(operations))
}

/// The whole application: `routes` (the [`api`] and whatever embedders and tests add), all behind
/// the same stack. Layers are listed innermost first; `edge` is outermost, so even a response made
/// by another layer (CORS preflight, 408, 413) gets the request id, problem shape and headers.
pub fn router(state: AppState, routes: Router<AppState>, tls: bool) -> Router {
    let http = &state.config.http;
    let edge_config = EdgeConfig { trusted_proxies: Arc::new(http.trusted_proxies.clone()), tls, meters: state.meters.clone() };
    routes
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::from_fn_with_state(state.clone(), budget::budget))
        .layer(DefaultBodyLimit::max(http.body_limit))
        .layer(RequestBodyLimitLayer::new(http.body_limit))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, http.request_timeout))
        .layer(axum::middleware::from_fn_with_state(CorsPolicy(Arc::new(http.cors_origins.clone())), cors))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            HeaderName::from_static("stripe-signature"),
            HeaderName::from_static("x-csrf-token"),
        ]))
        .layer(axum::middleware::from_fn_with_state(edge_config, edge))
        .with_state(state)
}
