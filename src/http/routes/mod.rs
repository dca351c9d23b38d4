//! One module per resource, each exposing `router()`.

pub mod admin;
pub mod auth;
pub mod checkout;
pub mod docs;
pub mod events;
pub mod health;
pub mod me;
pub mod products;
pub mod sandbox;
pub mod webhooks;

use axum::Router;

use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(health::router())
        .merge(docs::router())
        .merge(auth::router())
        .merge(me::router())
        .merge(admin::router())
        .merge(webhooks::router())
        .merge(events::router())
        .merge(products::router())
        .merge(checkout::router())
        .merge(sandbox::router())
}
