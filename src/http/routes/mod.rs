//! One module per resource, each exposing `router()`.

pub mod admin;
pub mod auth;
pub mod docs;
pub mod events;
pub mod health;
pub mod me;
pub mod webhooks;

use axum::Router;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(health::router())
        .merge(docs::router())
        .merge(auth::router())
        .merge(me::router())
        .merge(admin::router())
        .merge(webhooks::router())
        .merge(events::router())
}
