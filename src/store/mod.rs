//! The storage seam: one trait, a SQLite and a PostgreSQL implementation, each with its own
//! migrations under `migrations/<engine>/`. Nothing outside this module writes SQL.

pub mod accounts;
pub mod ledger;
pub mod payments;
mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::DatabaseConfig;

pub use accounts::{AccountStore, SessionRow, SpendOutcome};
pub use ledger::{EventPlan, LedgerStore, NewEvent, Recorded};
pub use payments::{Applied, IdempotencyStart, OrderRef, PaymentStore};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }

    /// The engine a database URL names, if any.
    pub fn from_url(url: &str) -> Option<Engine> {
        if url.starts_with("sqlite:") {
            Some(Engine::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Engine::Postgres)
        } else {
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL (expected sqlite: or postgres://)")]
    UnsupportedUrl,
    /// A uniqueness constraint refused the write.
    #[error("conflict with an existing record")]
    Conflict,
    /// The stored data broke a domain rule (an illegal order transition, an unreadable grant).
    #[error("{0}")]
    Rule(String),
}

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

/// Migration state, for readiness and `tollgate migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub applied: Vec<i64>,
    pub pending: Vec<i64>,
}

#[async_trait]
pub trait Store: AccountStore + LedgerStore + PaymentStore + Send + Sync + 'static {
    fn engine(&self) -> Engine;
    /// Applies pending migrations; returns the versions applied now.
    async fn migrate(&self) -> Result<Vec<i64>, StoreError>;
    async fn migration_status(&self) -> Result<MigrationStatus, StoreError>;
    /// A round trip to the database.
    async fn ping(&self) -> Result<(), StoreError>;
    async fn append_audit(&self, entry: NewAuditEntry) -> Result<i64, StoreError>;
    /// Newest first, entries older than `before_id` when given.
    async fn list_audit_page(&self, limit: i64, before_id: Option<i64>) -> Result<Vec<AuditEntry>, StoreError>;
    /// The newest `limit` entries.
    async fn list_audit(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        self.list_audit_page(limit, None).await
    }
    async fn close(&self);
}

/// Opens the database the configuration names. Does not migrate.
pub async fn connect(config: &DatabaseConfig) -> Result<Arc<dyn Store>, StoreError> {
    let url = config.url.expose_secret();
    match Engine::from_url(url) {
        Some(Engine::Sqlite) => Ok(Arc::new(SqliteStore::connect(url, config).await?)),
        Some(Engine::Postgres) => Ok(Arc::new(PgStore::connect(url, config).await?)),
        None => Err(StoreError::UnsupportedUrl),
    }
}

fn status_of(migrator: &sqlx::migrate::Migrator, applied: Vec<i64>) -> MigrationStatus {
    let pending = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    MigrationStatus { applied, pending }
}
