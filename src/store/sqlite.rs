//! The SQLite store: one file (WAL, `synchronous = FULL`), writers taking turns in-process (verified
//! events in batches, one commit for many), and
//! connections that are never reused after a storage fault or with a transaction left open.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection, SqlitePool};

use super::batch::Parts;
use super::error::StoreError;
use super::health::Health;
use super::ledger::IngestBatcher;
use super::seam::Engine;
use super::view::{View, CAPACITY};
use crate::config::DatabaseConfig;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

super::seam::impl_store!(
    SqliteStore,
    Engine::Sqlite,
    MIGRATOR,
    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    i64
);
super::pool::impl_connections!(SqliteStore, sqlx::Sqlite);
super::accounts::impl_account_store!(SqliteStore);
super::apikeys::impl_api_key_store!(SqliteStore);
super::audit::impl_audit_store!(SqliteStore, "$8", "detail");
super::ledger::impl_ledger_store!(SqliteStore, sqlx::Sqlite);
super::payments::impl_payment_store!(SqliteStore, sqlx::Sqlite);
super::credits::impl_credit_store!(SqliteStore, sqlx::Sqlite);
super::licences::impl_licence_store!(SqliteStore, sqlx::Sqlite);
super::outbox::impl_outbox_store!(SqliteStore, sqlx::Sqlite, "", false);

pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite has one writer at a time. Taking turns here, in arrival order, replaces its busy
    /// handler's sleep-and-retry (which left some writers waiting hundreds of milliseconds).
    writer: Arc<tokio::sync::Mutex<()>>,
    health: Arc<Health>,
    max_connections: u32,
    /// Another process (the CLI) may write the same file unseen: entries live `view::MAX_AGE`.
    view: View,
    /// The one writer of verified events (group commit, `batch.rs`): it takes the writers' turn
    /// once per batch.
    ingest: IngestBatcher,
}

/// Whether a connection going back to (or coming out of) the pool may be used again. After a
/// full disk or an I/O error SQLite may have rolled a transaction back on its own, or failed to
/// end one; sqlx's count of open transactions can then disagree with SQLite's, and the next
/// "transaction" on that connection becomes a savepoint inside a transaction that never commits
/// (while holding the write lock). Such a connection is closed, never reused, as is any
/// connection opened before the last storage fault.
async fn reusable(conn: &mut SqliteConnection, age: Duration, health: &Health) -> bool {
    if health.predates_last_fault(age) {
        return false;
    }
    // The handle is handed over only after the connection's worker has carried out what was
    // queued before (a dropped transaction's ROLLBACK), so both counts below are settled.
    let autocommit = match conn.lock_handle().await {
        // SAFETY: the handle is locked for the duration of the call; sqlite3_get_autocommit only
        // reads the connection's state.
        Ok(mut handle) => (unsafe { libsqlite3_sys::sqlite3_get_autocommit(handle.as_raw_handle().as_ptr()) }) != 0,
        Err(_) => return false,
    };
    if !autocommit || conn.is_in_transaction() {
        tracing::warn!(
            sqlite = !autocommit,
            sqlx = conn.is_in_transaction(),
            "closing a SQLite connection left inside a transaction"
        );
        return false;
    }
    true
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
        let writer = Arc::new(tokio::sync::Mutex::new(()));
        let view = View::new(CAPACITY);
        let parts =
            Parts { pool: pool.clone(), health: health.clone(), max_connections, turn: Some(writer.clone()), view: view.clone() };
        let ingest = SqliteStore::ingest_batcher(1, parts);
        Ok(SqliteStore { pool, writer, health, max_connections, view, ingest })
    }

    /// The right to write, held for a whole write transaction.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        Some(self.writer.lock().await)
    }

    /// Whether SQLite ended, on its own, the transaction `conn` is in: a trigger's
    /// `RAISE(ROLLBACK, …)`, an interrupt, running out of memory or an `ON CONFLICT ROLLBACK`
    /// constraint roll the whole transaction back. sqlx still counts it open, and a rollback (to a
    /// savepoint or whole) then fails. Asked only of a connection inside a transaction.
    pub(crate) async fn transaction_ended(conn: &mut SqliteConnection) -> bool {
        match conn.lock_handle().await {
            // SAFETY: the handle is locked for the duration of the call; sqlite3_get_autocommit
            // only reads the connection's state.
            Ok(mut handle) => (unsafe { libsqlite3_sys::sqlite3_get_autocommit(handle.as_raw_handle().as_ptr()) }) != 0,
            // The connection's worker is gone: nothing of the transaction will commit either.
            Err(_) => true,
        }
    }

    /// What the ledger's writer works with (tests hand it batches of their own making).
    #[cfg(test)]
    pub(crate) fn batch_parts(&self) -> Parts<sqlx::Sqlite> {
        Parts {
            pool: self.pool.clone(),
            health: self.health.clone(),
            max_connections: self.max_connections,
            turn: Some(self.writer.clone()),
            view: self.view.clone(),
        }
    }

    /// SQLite has no notification channel.
    fn follow(&self) -> Option<tokio::task::JoinHandle<()>> {
        None
    }
}
