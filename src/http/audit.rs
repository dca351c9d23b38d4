//! What admins do through the API goes to the audit log.

use crate::domain::auth::{record_audit, RequestMeta};
use crate::http::state::AppState;

/// Appends to the audit log what an admin did (see [`record_audit`]).
pub(crate) async fn audit(
    state: &AppState,
    meta: &RequestMeta,
    actor: &str,
    action: &str,
    resource: &str,
    detail: serde_json::Value,
) {
    record_audit(state.store.as_ref(), meta, Some(actor), action, Some(resource), detail).await;
}
