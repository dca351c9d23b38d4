//! The SQLite store: one file (WAL, `synchronous = FULL`), writers taking turns in-process, and
//! connections that are never reused after a storage fault or with a transaction left open.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, Sqlite, SqliteConnection, SqlitePool};

use super::health::Health;
use super::{status_of, AuditEntry, Engine, MigrationStatus, NewAuditEntry, Store, StoreError};
use crate::config::DatabaseConfig;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

super::accounts::impl_account_store!(SqliteStore);
super::ledger::impl_ledger_store!(SqliteStore, sqlx::Sqlite);
super::payments::impl_payment_store!(SqliteStore, sqlx::Sqlite);

pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite has one writer at a time. Taking turns here, in arrival order, replaces its busy
    /// handler's sleep-and-retry (which left some writers waiting hundreds of milliseconds).
    writer: tokio::sync::Mutex<()>,
    health: Arc<Health>,
    max_connections: u32,
}

/// Whether a connection going back to (or coming out of) the pool may be used again. After a
/// full disk or an I/O error SQLite may have rolled a transaction back on its own, or failed to
/// end one; sqlx's count of open transactions can then disagree with SQLite's, and the next
/// "transaction" on that connection becomes a savepoint inside a transaction that never commits
/// (while holding the write lock). Such a connection is closed, never reused, as is any
/// connection opened before the last storage fault.
async fn reusable(conn: &mut SqliteConnection, age: Duration, health: &Health) -> bool {
    if conn.is_in_transaction() {
        tracing::warn!("closing a SQLite connection released inside a transaction");
        return false;
    }
    if health.predates_last_fault(age) {
        return false;
    }
    match conn.lock_handle().await {
        Ok(mut handle) => {
            // SAFETY: the handle is locked for the duration of the call; sqlite3_get_autocommit only
            // reads the connection's state.
            let autocommit = unsafe { libsqlite3_sys::sqlite3_get_autocommit(handle.as_raw_handle().as_ptr()) } != 0;
            if !autocommit {
                tracing::warn!("closing a SQLite connection that SQLite says is inside a transaction");
            }
            autocommit
        }
        Err(_) => false,
    }
}

impl SqliteStore {
    pub async fn connect(url: &str, config: &DatabaseConfig) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before we acknowledge it, even across a power cut.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // Each connection to an in-memory database is a database of its own: keep exactly one.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let max_connections = if in_memory { 1 } else { config.max_connections };
        let health = Arc::new(Health::new());
        let (on_release, on_acquire) = (health.clone(), health.clone());
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            // An in-memory database lives in its one connection: closing it would lose the data.
            .after_release(move |conn, meta| {
                let health = on_release.clone();
                Box::pin(async move { Ok(in_memory || reusable(conn, meta.age, &health).await) })
            })
            // Idle connections opened before a storage fault are not handed out either.
            .before_acquire(move |_, meta| {
                let stale = !in_memory && on_acquire.predates_last_fault(meta.age);
                Box::pin(async move { Ok(!stale) })
            })
            .min_connections(u32::from(in_memory))
            .idle_timeout(if in_memory { None } else { Some(Duration::from_secs(600)) })
            .max_lifetime(if in_memory { None } else { Some(Duration::from_secs(1800)) })
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool, writer: tokio::sync::Mutex::new(()), health, max_connections })
    }

    /// A connection, unless the database is known to be unreachable (see `store::acquire`).
    pub(crate) async fn conn(&self) -> Result<PoolConnection<Sqlite>, StoreError> {
        super::acquire(&self.pool, &self.health, self.max_connections).await
    }

    pub(crate) fn settle<T>(&self, conn: PoolConnection<Sqlite>, result: Result<T, StoreError>) -> Result<T, StoreError> {
        super::settle(&self.health, conn, result)
    }

    /// The right to write, held for a whole write transaction.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        Some(self.writer.lock().await)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }

    async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let before = self.migration_status().await?;
        MIGRATOR.run(&self.pool).await?;
        Ok(before.pending)
    }

    async fn migration_status(&self) -> Result<MigrationStatus, StoreError> {
        let exists: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
                .fetch_one(&mut *self.conn().await?)
                .await?;
        let applied = if exists == 0 {
            Vec::new()
        } else {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(&mut *self.conn().await?)
                .await?
        };
        Ok(status_of(&MIGRATOR, applied))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&mut *self.conn().await?).await?;
        Ok(())
    }

    async fn check_writable(&self) -> Result<(), String> {
        let _turn = self.write_turn().await;
        let probe = super::transaction!(self, tx => {
            sqlx::query(
                "INSERT INTO health_probe (id, checked_at, filler) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at, filler = excluded.filler",
            )
            .bind(Utc::now())
            .bind(super::probe_filler())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        });
        super::writable_verdict(&self.health, probe)
    }

    async fn append_audit(&self, e: NewAuditEntry) -> Result<i64, StoreError> {
        let id = sqlx::query_scalar(
            "INSERT INTO audit_log (occurred_at, actor, action, resource, ip, user_agent, request_id, detail)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(Utc::now())
        .bind(e.actor)
        .bind(e.action)
        .bind(e.resource)
        .bind(e.ip)
        .bind(e.user_agent)
        .bind(e.request_id)
        .bind(e.detail.to_string())
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(id)
    }

    async fn list_audit_page(&self, limit: i64, before_id: Option<i64>) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, occurred_at, actor, action, resource, ip, user_agent, request_id, detail
             FROM audit_log WHERE id < COALESCE(?, 9223372036854775807) ORDER BY id DESC LIMIT ?",
        )
        .bind(before_id)
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.into_iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    occurred_at: r.try_get::<DateTime<Utc>, _>("occurred_at")?,
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
            .map_err(StoreError::from)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
