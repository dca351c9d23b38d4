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
        .merge(products::router())
        .merge(checkout::router())
        .merge(sandbox::router())
}

/// Appends to the audit log what an admin did (see [`record_audit`](crate::domain::auth::record_audit)).
pub(crate) async fn audit(
    state: &AppState,
    meta: &crate::domain::auth::RequestMeta,
    actor: &str,
    action: &str,
    resource: &str,
    detail: serde_json::Value,
) {
    crate::domain::auth::record_audit(state.store.as_ref(), meta, Some(actor), action, Some(resource), detail).await;
}
