//! The storage seam: one trait, a SQLite and a PostgreSQL implementation, each with its own
//! migrations under `migrations/<engine>/`. Nothing outside this module writes SQL.

pub mod accounts;
pub mod health;
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

pub use accounts::{AccountStore, FamilyRow, FlagsChanged, Keep, PasswordChanged, Purged, SessionRow, SpendOutcome};
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
    /// The database cannot be reached now (it failed a moment ago and is not tried again yet, or
    /// no connection could be opened): nothing was done.
    #[error("the database is unavailable")]
    Unavailable,
}

impl StoreError {
    /// Whether nothing could be done because the database was unreachable (retrying later may work).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable)
    }
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
    /// Whether the database takes a write now: no storage fault in the last seconds, and an
    /// event-sized row written and committed. `Err` says why not, in words fit for `/readyz`.
    async fn check_writable(&self) -> Result<(), String>;
    async fn append_audit(&self, entry: NewAuditEntry) -> Result<i64, StoreError>;
    /// Newest first, entries older than `before_id` when given.
    async fn list_audit_page(&self, limit: i64, before_id: Option<i64>) -> Result<Vec<AuditEntry>, StoreError>;
    /// The newest `limit` entries.
    async fn list_audit(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        self.list_audit_page(limit, None).await
    }
    async fn close(&self);
}

/// A connection for one operation, unless the database is known to be down: then the answer is
/// `Unavailable` at once (one caller at a time is let through to find out whether it is back),
/// instead of every request waiting out the acquire timeout.
pub(crate) async fn acquire<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    health: &health::Health,
    max_connections: u32,
) -> Result<sqlx::pool::PoolConnection<DB>, StoreError> {
    let _probe = match health.admit() {
        health::Admission::Go => None,
        health::Admission::Probe(guard) => Some(guard),
        health::Admission::Refused => return Err(StoreError::Unavailable),
    };
    match pool.acquire().await {
        Ok(conn) => {
            health.reached();
            Ok(conn)
        }
        Err(e) => {
            let down = match &e {
                // With every connection busy this is load; with fewer open than allowed, new ones
                // could not be opened: the database is not answering.
                sqlx::Error::PoolTimedOut => pool.size() < max_connections,
                other => health::classify(other) == Some(health::Fault::Unreachable),
            };
            if down {
                health.unreachable();
                tracing::error!(error = %e, "database unreachable; refusing requests until it answers again");
                return Err(StoreError::Unavailable);
            }
            Err(e.into())
        }
    }
}

/// The end of an operation on `conn`: an error that says the database could not write (full disk,
/// I/O error) or was lost is noted, and the connection that saw it is closed instead of going back
/// to the pool.
pub(crate) fn settle<DB: sqlx::Database, T>(
    health: &health::Health,
    mut conn: sqlx::pool::PoolConnection<DB>,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    if let Err(StoreError::Database(e)) = &result {
        if let Some(fault) = health.observe(e) {
            tracing::error!(error = %e, fault = ?fault, "database fault; discarding the connection that saw it");
            conn.close_on_drop();
        }
    }
    result
}

/// Runs `$body` inside a transaction `$tx` on a connection of its own (see [`acquire`]); the body
/// commits. Whatever the body returns passes through [`settle`].
macro_rules! transaction {
    ($self:ident, $tx:ident => $body:block) => {{
        match $self.conn().await {
            Err(e) => Err(e),
            Ok(mut conn) => {
                let result: Result<_, $crate::store::StoreError> = async {
                    #[allow(unused_mut)]
                    let mut $tx = sqlx::Connection::begin(&mut *conn).await?;
                    $body
                }
                .await;
                $self.settle(conn, result)
            }
        }
    }};
}
pub(crate) use transaction;

/// Opens the database the configuration names. Does not migrate.
pub async fn connect(config: &DatabaseConfig) -> Result<Arc<dyn Store>, StoreError> {
    let url = config.url.expose_secret();
    match Engine::from_url(url) {
        Some(Engine::Sqlite) => Ok(Arc::new(SqliteStore::connect(url, config).await?)),
        Some(Engine::Postgres) => Ok(Arc::new(PgStore::connect(url, config).await?)),
        None => Err(StoreError::UnsupportedUrl),
    }
}

/// The bytes readiness writes: about the size of a large Stripe event, random so nothing shrinks them.
pub(crate) fn probe_filler() -> Vec<u8> {
    use rand::RngCore;
    let mut filler = vec![0u8; 16 * 1024];
    rand::rngs::OsRng.fill_bytes(&mut filler);
    filler
}

/// The verdict of a write probe.
pub(crate) fn writable_verdict(health: &health::Health, probe: Result<(), StoreError>) -> Result<(), String> {
    match probe {
        Err(StoreError::Unavailable) => Err("unavailable".to_owned()),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: the database refused a write");
            Err("cannot write".to_owned())
        }
        Ok(()) => match health.recent_storage_fault() {
            Some(fault) => {
                tracing::warn!(error = %fault, "readiness: the database failed a write in the last seconds");
                Err("cannot write (a write failed in the last 10 s)".to_owned())
            }
            None => Ok(()),
        },
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
