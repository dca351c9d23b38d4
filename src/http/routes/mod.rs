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

/// Appends to the audit log; a failed write is logged loudly (the action already happened).
pub(crate) async fn audit(
    state: &AppState,
    meta: &crate::domain::auth::RequestMeta,
    actor: &str,
    action: &str,
    resource: &str,
    detail: serde_json::Value,
) {
    let entry = crate::store::NewAuditEntry {
        actor: Some(actor.to_owned()),
        action: action.to_owned(),
        resource: Some(resource.to_owned()),
        ip: Some(meta.ip.clone()).filter(|s| !s.is_empty()),
        user_agent: meta.user_agent.clone(),
        request_id: Some(meta.request_id.clone()).filter(|s| !s.is_empty()),
        detail,
    };
    if let Err(e) = state.store.append_audit(entry).await {
        tracing::error!(error = %e, action, "audit write failed");
    }
}
