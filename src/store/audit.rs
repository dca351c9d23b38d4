//! The append-only audit log: what an entry holds, and its repository, written once for both
//! engines (they differ only in how the JSON detail is stored).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::StoreError;

/// Something that happened, for the append-only audit log. Never holds a password or a token.
#[derive(Debug, Clone, Default)]
pub struct NewAuditEntry {
    pub actor: Option<String>,
    pub action: String,
    pub resource: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub detail: serde_json::Value,
}

/// One audit-log entry, as stored and as `GET /api/v1/admin/audit` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    /// Who did it (a user id), when known.
    pub actor: Option<String>,
    #[schema(example = "login.failure")]
    pub action: String,
    /// What it was done to.
    pub resource: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub detail: serde_json::Value,
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn append_audit(&self, entry: NewAuditEntry) -> Result<i64, StoreError>;
    /// Newest first, entries older than `before_id` when given.
    async fn list_audit_page(&self, limit: i64, before_id: Option<i64>) -> Result<Vec<AuditEntry>, StoreError>;
    /// The newest `limit` entries.
    async fn list_audit(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        self.list_audit_page(limit, None).await
    }
}

/// `detail_in`: the placeholder that stores the JSON text (`$8`, or `$8::jsonb` on PostgreSQL);
/// `detail_out`: the column read back as text.
macro_rules! impl_audit_store {
    ($store:ty, $detail_in:literal, $detail_out:literal) => {
        #[async_trait::async_trait]
        impl $crate::store::audit::AuditStore for $store {
            async fn append_audit(
                &self,
                e: $crate::store::audit::NewAuditEntry,
            ) -> Result<i64, $crate::store::error::StoreError> {
                let sql = concat!(
                    "INSERT INTO audit_log (occurred_at, actor, action, resource, ip, user_agent, request_id, detail)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, ",
                    $detail_in,
                    ") RETURNING id"
                );
                let id = $crate::store::pool::on_conn!(self, c => sqlx::query_scalar(sql)
                    .bind(chrono::Utc::now())
                    .bind(e.actor)
                    .bind(e.action)
                    .bind(e.resource)
                    .bind(e.ip)
                    .bind(e.user_agent)
                    .bind(e.request_id)
                    .bind(e.detail.to_string())
                    .fetch_one(&mut *c)
                    .await)?;
                Ok(id)
            }

            async fn list_audit_page(
                &self,
                limit: i64,
                before_id: Option<i64>,
            ) -> Result<Vec<$crate::store::audit::AuditEntry>, $crate::store::error::StoreError> {
                use sqlx::Row;
                let sql = concat!(
                    "SELECT id, occurred_at, actor, action, resource, ip, user_agent, request_id, ",
                    $detail_out,
                    " AS detail FROM audit_log WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
                );
                let rows = $crate::store::pool::on_conn!(self, c => sqlx::query(sql).bind(before_id).bind(limit).fetch_all(&mut *c).await)?;
                rows.into_iter()
                    .map(|r| {
                        let detail: String = r.try_get("detail")?;
                        Ok($crate::store::audit::AuditEntry {
                            id: r.try_get("id")?,
                            occurred_at: r.try_get("occurred_at")?,
                            actor: r.try_get("actor")?,
                            action: r.try_get("action")?,
                            resource: r.try_get("resource")?,
                            ip: r.try_get("ip")?,
                            user_agent: r.try_get("user_agent")?,
                            request_id: r.try_get("request_id")?,
                            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err($crate::store::error::StoreError::from)
            }
        }
    };
}

pub(crate) use impl_audit_store;
