//! API keys: their rows and repository, one SQL text for both engines (see `accounts.rs`). A row
//! holds the key's SHA-256 and a short lookup prefix, never the key.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::error::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    pub name: String,
    /// `tg_test_` + the first 8 characters of the random part: finds the row, proves nothing.
    pub prefix: String,
    pub secret_hash: String,
    /// `live` or `test`.
    pub mode: String,
    /// Scope names, space-separated.
    pub scopes: String,
    /// A user id, or `cli`.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// `Conflict` when the prefix or hash is taken.
    async fn insert_api_key(&self, key: &ApiKeyRow) -> Result<(), StoreError>;
    async fn api_key_by_prefix(&self, prefix: &str) -> Result<Option<ApiKeyRow>, StoreError>;
    /// Newest first.
    async fn list_api_keys(&self, limit: i64, starting_after: Option<&str>) -> Result<Vec<ApiKeyRow>, StoreError>;
    /// Revokes the key (a revoked key keeps its first revocation time): `Some(true)` when this
    /// call revoked it, `Some(false)` when it already was, `None` when there is no such key.
    async fn revoke_api_key(&self, id: &str, now: DateTime<Utc>) -> Result<Option<bool>, StoreError>;
    /// Records use (never moves backwards).
    async fn touch_api_key(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError>;
}

pub(crate) const API_KEY_COLUMNS: &str =
    "id, name, prefix, secret_hash, mode, scopes, created_by, created_at, expires_at, revoked_at, last_used_at";

macro_rules! impl_api_key_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::apikeys::ApiKeyStore for $store {
            async fn insert_api_key(&self, k: &$crate::store::apikeys::ApiKeyRow) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "INSERT INTO api_keys (id, name, prefix, secret_hash, mode, scopes, created_by, created_at, expires_at, revoked_at, last_used_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(&k.id)
                .bind(&k.name)
                .bind(&k.prefix)
                .bind(&k.secret_hash)
                .bind(&k.mode)
                .bind(&k.scopes)
                .bind(&k.created_by)
                .bind(k.created_at)
                .bind(k.expires_at)
                .bind(k.revoked_at)
                .bind(k.last_used_at)
                .execute(&mut *c)
                .await)
                .map_err($crate::store::accounts::conflict)?;
                Ok(())
            }

            async fn api_key_by_prefix(&self, prefix: &str) -> Result<Option<$crate::store::apikeys::ApiKeyRow>, $crate::store::error::StoreError> {
                let sql = format!("SELECT {} FROM api_keys WHERE prefix = $1", $crate::store::apikeys::API_KEY_COLUMNS);
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(prefix).fetch_optional(&mut *c).await)?)
            }

            async fn list_api_keys(&self, limit: i64, starting_after: Option<&str>) -> Result<Vec<$crate::store::apikeys::ApiKeyRow>, $crate::store::error::StoreError> {
                let sql = format!(
                    "SELECT {} FROM api_keys WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
                    $crate::store::apikeys::API_KEY_COLUMNS
                );
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(starting_after).bind(limit).fetch_all(&mut *c).await)?)
            }

            async fn revoke_api_key(&self, id: &str, now: chrono::DateTime<chrono::Utc>) -> Result<Option<bool>, $crate::store::error::StoreError> {
                let changed = $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(id)
                .bind(now)
                .execute(&mut *c)
                .await)?;
                if changed.rows_affected() > 0 {
                    return Ok(Some(true));
                }
                let exists: Option<String> = $crate::store::pool::on_conn!(self, c => sqlx::query_scalar("SELECT id FROM api_keys WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *c)
                    .await)?;
                Ok(exists.map(|_| false))
            }

            async fn touch_api_key(&self, id: &str, now: chrono::DateTime<chrono::Utc>) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
                )
                .bind(id)
                .bind(now)
                .execute(&mut *c)
                .await)?;
                Ok(())
            }
        }
    };
}

pub(crate) use impl_api_key_store;
