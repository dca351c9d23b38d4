//! One module per resource, each exposing `router()`: its routes with their OpenAPI operations,
//! both from each handler's `#[utoipa::path]` (path and method are declared there, once).

pub mod admin;
pub mod apikeys;
pub mod auth;
pub mod checkout;
pub mod credits;
pub mod docs;
pub mod email_messages;
pub mod events;
pub mod health;
pub mod introspect;
pub mod licences;
pub mod me;
pub mod products;
pub mod sandbox;
pub mod users;
pub mod webhook_endpoints;
pub mod webhooks;

use utoipa_axum::router::OpenApiRouter;

use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(health::router())
        .merge(docs::router())
        .merge(auth::router())
        .merge(me::router())
        .merge(admin::router())
        .merge(apikeys::router())
        .merge(users::router())
        .merge(introspect::router())
        .merge(webhooks::router())
        .merge(events::router())
        .merge(products::router())
        .merge(checkout::router())
        .merge(credits::router())
        .merge(sandbox::router())
        .merge(licences::router())
        .merge(webhook_endpoints::router())
        .merge(email_messages::router())
}
