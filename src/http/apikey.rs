//! The API-key extractor: a merchant's server calling with `Authorization: Bearer tg_live_…` /
//! `tg_test_…`. Handlers of key routes take an [`ApiKeyCaller`] and call [`ApiKeyCaller::require`]
//! with the scope their route needs (deny by default).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::domain::apikeys::Scope;
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// An authenticated API key (never the key itself).
#[derive(Debug, Clone)]
pub struct ApiKeyCaller {
    /// `key_…`: the principal for idempotency keys, limits and the audit log.
    pub key_id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
}

impl ApiKeyCaller {
    /// 403 unless this key holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("this API key lacks the scope {}", scope.as_str())))
        }
    }
}

impl FromRequestParts<AppState> for ApiKeyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        // Interface stub: the API-key work replaces this with the real lookup.
        Err(ApiError::Unauthorized("API key required".to_owned()))
    }
}
