//! The API-key extractor: a merchant's server calling with `Authorization: Bearer tg_live_…` /
//! `tg_test_…`. Handlers of key routes take an [`ApiKeyCaller`] and call [`ApiKeyCaller::require`]
//! with the scope their route needs (deny by default).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::domain::apikeys::{looks_like_key, Scope};
use crate::domain::auth::RequestMeta;
use crate::domain::keys::{ApiKeyService, KeyError};
use crate::http::auth::request_meta;
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// The one answer for a missing, malformed, unknown, revoked, expired or other-mode key.
pub const INVALID_KEY: &str = "a valid API key is required (Authorization: Bearer tg_…)";

/// An authenticated API key (never the key itself).
#[derive(Debug, Clone)]
pub struct ApiKeyCaller {
    /// `key_…`: the principal for idempotency keys, limits and the audit log.
    pub key_id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Where a refused scope is audited.
    refusals: Option<Refusals>,
}

#[derive(Clone)]
struct Refusals {
    keys: Arc<ApiKeyService>,
    meta: RequestMeta,
}

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusals").finish_non_exhaustive()
    }
}

impl ApiKeyCaller {
    /// 403 unless this key holds `scope`; the refusal is audited.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            return Ok(());
        }
        if let (Some(r), Ok(runtime)) = (&self.refusals, tokio::runtime::Handle::try_current()) {
            let (r, key_id) = (r.clone(), self.key_id.clone());
            // The answer does not wait for the audit write.
            runtime.spawn(async move { r.keys.refused_scope(&key_id, scope, &r.meta).await });
        }
        Err(ApiError::Forbidden(format!("this API key lacks the scope {}", scope.as_str())))
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Unauthenticated => ApiError::Unauthorized(INVALID_KEY.to_owned()),
            KeyError::RateLimited { limit, retry_after } => ApiError::RateLimited { limit, retry_after },
            KeyError::Validation(errors) => ApiError::Validation(errors),
            KeyError::NotFound => ApiError::NotFound,
            KeyError::Internal(e) => ApiError::from(e),
        }
    }
}

impl FromRequestParts<AppState> for ApiKeyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|k| looks_like_key(k))
            .ok_or_else(|| ApiError::Unauthorized(INVALID_KEY.to_owned()))?;
        let meta = request_meta(parts);
        let found = state.keys.authenticate(key, &meta).await?;
        Ok(ApiKeyCaller {
            key_id: found.id,
            name: found.name,
            scopes: found.scopes,
            refusals: Some(Refusals { keys: state.keys.clone(), meta }),
        })
    }
}
