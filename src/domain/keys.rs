//! The API-key service: creating, listing and revoking keys (audited), and authenticating a key a
//! request presents: found by its prefix, compared by hash in constant time, refused when
//! revoked, expired or of the other mode (one answer for all of these and for unknown keys), and
//! limited per key. Use is recorded at most once a minute per key, off the request path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::account::new_id;
use super::apikeys::{
    check_expiry, generate_key, parse_key_name, parse_scopes, refusal, scopes_from_text, scopes_to_text, KeyMode, PresentedKey,
    Scope,
};
use super::auth::{record_audit, RequestMeta};
use super::FieldError;
use crate::ratelimit::{Decision, Quota, RateLimiter};
use crate::store::{ApiKeyRow, Store, StoreError};

/// `last_used_at` is written at most this often per key.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Who made a key from the command line.
pub const CLI_ACTOR: &str = "cli";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// One answer for unknown, malformed, revoked, expired and other-mode keys.
    #[error("invalid API key")]
    Unauthenticated,
    #[error("rate limited")]
    RateLimited { limit: u32, retry_after: Duration },
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for KeyError {
    fn from(e: StoreError) -> Self {
        KeyError::Internal(e.into())
    }
}

/// What an admin asks for.
pub struct NewApiKey {
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key just made: its row and the key itself, which is shown this once.
pub struct CreatedKey {
    pub row: ApiKeyRow,
    pub key: SecretString,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey").field("id", &self.row.id).field("prefix", &self.row.prefix).finish_non_exhaustive()
    }
}

impl CreatedKey {
    pub fn reveal(&self) -> &str {
        self.key.expose_secret()
    }
}

/// A key that may be used now.
#[derive(Debug, Clone)]
pub struct AuthenticatedKey {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
}

pub struct ApiKeyService {
    store: Arc<dyn Store>,
    limiter: Arc<dyn RateLimiter>,
    mode: KeyMode,
    quota: Quota,
    /// When each key's use was last written (this process).
    touched: Mutex<HashMap<String, Instant>>,
}

impl ApiKeyService {
    /// Keys are made and accepted in `mode` (the server's); each may make `per_minute` requests.
    pub fn new(store: Arc<dyn Store>, limiter: Arc<dyn RateLimiter>, mode: KeyMode, per_minute: u32) -> ApiKeyService {
        ApiKeyService {
            store,
            limiter,
            mode,
            quota: Quota { limit: per_minute.max(1), period: Duration::from_secs(60) },
            touched: Mutex::new(HashMap::new()),
        }
    }

    pub fn mode(&self) -> KeyMode {
        self.mode
    }

    /// A new key of the server's mode; audited as `api_key.create` by `actor` (a user id or `cli`).
    pub async fn create(&self, input: NewApiKey, actor: &str, meta: &RequestMeta) -> Result<CreatedKey, KeyError> {
        let now = Utc::now();
        let mut errors = Vec::new();
        let name = parse_key_name("name", &input.name).map_err(|e| errors.push(e)).ok();
        let scopes = parse_scopes("scopes", &input.scopes).map_err(|e| errors.extend(e)).ok();
        if let Err(e) = check_expiry("expires_at", input.expires_at, now) {
            errors.push(e);
        }
        let (Some(name), Some(scopes), true) = (name, scopes, errors.is_empty()) else {
            return Err(KeyError::Validation(errors));
        };
        // A prefix is 47 random bits: a collision is next to impossible, and a retry settles it.
        for _ in 0..3 {
            let generated = generate_key(self.mode);
            let row = ApiKeyRow {
                id: new_id("key"),
                name: name.clone(),
                prefix: generated.prefix.clone(),
                secret_hash: generated.hash.clone(),
                mode: self.mode.as_str().to_owned(),
                scopes: scopes_to_text(&scopes),
                created_by: actor.to_owned(),
                created_at: now,
                expires_at: input.expires_at,
                revoked_at: None,
                last_used_at: None,
            };
            match self.store.insert_api_key(&row).await {
                Ok(()) => {
                    let detail = serde_json::json!({
                        "name": row.name,
                        "prefix": row.prefix,
                        "scopes": scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                        "mode": row.mode,
                        "expires_at": row.expires_at,
                    });
                    record_audit(self.store.as_ref(), meta, Some(actor), "api_key.create", Some(&row.id), detail).await;
                    return Ok(CreatedKey { row, key: generated.secret });
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(KeyError::Internal(anyhow::anyhow!("could not find a free API key prefix")))
    }

    /// Newest first.
    pub async fn list(&self, limit: i64, starting_after: Option<&str>) -> Result<Vec<ApiKeyRow>, KeyError> {
        Ok(self.store.list_api_keys(limit, starting_after).await?)
    }

    /// Revokes a key: it answers 401 from the next request on. Revoking it again changes nothing.
    pub async fn revoke(&self, id: &str, actor: &str, meta: &RequestMeta) -> Result<(), KeyError> {
        match self.store.revoke_api_key(id, Utc::now()).await? {
            None => Err(KeyError::NotFound),
            Some(newly) => {
                if newly {
                    record_audit(self.store.as_ref(), meta, Some(actor), "api_key.revoke", Some(id), serde_json::json!({})).await;
                }
                Ok(())
            }
        }
    }

    /// The key `presented` names, if it may be used now. Every use of an identified key counts
    /// against its limit; a refused use (revoked, expired, other mode) is audited while within
    /// it, so a stolen revoked key hammering us cannot flood the audit log. Unknown keys are
    /// logged (never the key) and not audited.
    pub async fn authenticate(&self, presented: &str, meta: &RequestMeta) -> Result<AuthenticatedKey, KeyError> {
        let Some(key) = PresentedKey::parse(presented) else {
            tracing::info!(ip = %meta.ip, "malformed API key refused");
            return Err(self.unknown_key_from(meta).await);
        };
        let row = match self.store.api_key_by_prefix(&key.prefix).await? {
            Some(row) if key.matches(&row.secret_hash) => row,
            _ => {
                tracing::warn!(ip = %meta.ip, "unknown API key refused");
                return Err(self.unknown_key_from(meta).await);
            }
        };
        let now = Utc::now();
        let decision = self.limiter.hit(&format!("apikey:{}", row.id), self.quota).await;
        let mode = KeyMode::parse(&row.mode).ok_or_else(|| anyhow::anyhow!("API key {} has mode {:?}", row.id, row.mode))?;
        if let Some(why) = refusal(mode, row.revoked_at, row.expires_at, self.mode, now) {
            if decision.is_allowed() {
                self.audit_refusal(&row.id, why.as_str(), meta).await;
            }
            tracing::warn!(key_id = %row.id, reason = why.as_str(), "API key refused");
            return Err(KeyError::Unauthenticated);
        }
        if let Decision::Limited { limit, retry_after } = decision {
            return Err(KeyError::RateLimited { limit, retry_after });
        }
        self.touch(&row.id);
        Ok(AuthenticatedKey { scopes: scopes_from_text(&row.scopes), id: row.id, name: row.name })
    }

    /// The answer to an unknown or malformed key: 401, or 429 once the address has sent more of
    /// them than one key may make requests (guessing is limited per address, as a key's use is
    /// per key).
    async fn unknown_key_from(&self, meta: &RequestMeta) -> KeyError {
        let from = format!("apikey:unknown:{}", crate::ratelimit::client_key(&meta.ip));
        match self.limiter.hit(&from, self.quota).await {
            Decision::Limited { limit, retry_after } => KeyError::RateLimited { limit, retry_after },
            _ => KeyError::Unauthenticated,
        }
    }

    /// Audits a use refused for want of `scope`.
    pub async fn refused_scope(&self, key_id: &str, scope: Scope, meta: &RequestMeta) {
        self.audit_refusal(key_id, &format!("missing_scope:{}", scope.as_str()), meta).await;
    }

    async fn audit_refusal(&self, key_id: &str, reason: &str, meta: &RequestMeta) {
        let detail = serde_json::json!({ "reason": reason });
        record_audit(self.store.as_ref(), meta, Some(key_id), "api_key.refused", Some(key_id), detail).await;
    }

    /// Records the key's use unless it was recorded in the last minute: in the background, so a
    /// request never waits for it, and at most one write a minute per key.
    fn touch(&self, id: &str) {
        let now = Instant::now();
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            match touched.get(id) {
                Some(last) if now.duration_since(*last) < TOUCH_EVERY => return,
                _ => {
                    touched.insert(id.to_owned(), now);
                }
            }
        }
        let (store, id) = (self.store.clone(), id.to_owned());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.touch_api_key(&id, Utc::now()).await {
                    tracing::warn!(key_id = %id, error = %e, "cannot record an API key's use");
                }
            });
        }
    }
}
