//! The SQLite store: one file (WAL, `synchronous = FULL`), writers taking turns in-process (verified
//! events, and the dispatcher's delivery attempts, in batches: one commit for many), and
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
use super::settle::SettleBatcher;
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
super::ledger::impl_ledger_store!(SqliteStore, sqlx::Sqlite, false);
super::payments::impl_payment_store!(SqliteStore, sqlx::Sqlite);
super::credits::impl_credit_store!(SqliteStore, sqlx::Sqlite);
super::licences::impl_licence_store!(SqliteStore, sqlx::Sqlite);
super::outbox::impl_outbox_store!(SqliteStore, sqlx::Sqlite, "", false);
super::settle::impl_settle_writer!(SqliteStore, sqlx::Sqlite, false);

pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite has one writer at a time. Taking turns here, in arrival order, replaces its busy
    /// handler's sleep-and-retry (which left some writers waiting hundreds of milliseconds).
    writer: Arc<tokio::sync::Mutex<()>>,
    health: Arc<Health>,
    max_connections: u32,
    /// The database lives in memory, in the pool's one connection (the writer's copy is in its
    /// `Parts`; this one is read only by `batch_parts`, for the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    in_memory: bool,
    /// Another process (the CLI) may write the same file unseen: entries live `view::MAX_AGE`.
    view: View,
    /// The one writer of verified events (group commit, `batch.rs`): it takes the writers' turn
    /// once per batch.
    ingest: IngestBatcher,
    /// The one writer of the dispatcher's delivery attempts (`outbox.rs::finish_attempt`, group
    /// commit): one turn and one commit for every attempt that finished meanwhile.
    settle: SettleBatcher,
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
    let Some(autocommit) = autocommit(conn).await else { return false };
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

/// Whether SQLite is outside any transaction on `conn` (autocommit mode). The handle is handed over
/// only after the connection's worker has carried out what was queued before it.
async fn autocommit(conn: &mut SqliteConnection) -> Option<bool> {
    let mut handle = conn.lock_handle().await.ok()?;
    // SAFETY: the handle is locked for the duration of the call; sqlite3_get_autocommit only reads
    // the connection's state.
    Some((unsafe { libsqlite3_sys::sqlite3_get_autocommit(handle.as_raw_handle().as_ptr()) }) != 0)
}

/// Brings sqlx's count of open transactions on `conn` back in line with SQLite's after SQLite
/// ended a transaction on its own: opens in SQLite, behind sqlx's back, the transaction and
/// savepoints sqlx still counts (`BEGIN`, then sqlx's own savepoint names), then rolls each back
/// through sqlx, which counts it closed. Whether both now agree that no transaction is open.
///
/// This uses sqlx's `TransactionManager` (public, though hidden from its documentation) and the
/// savepoint names of sqlx 0.8 (`_sqlx_savepoint_N`, pinned by Cargo.lock); should either change,
/// the check at the end fails and the caller does not reuse the connection as it is.
///
/// Boxed: the callers' futures must be `Send`, which the compiler cannot prove through this one's
/// borrows unboxed ("implementation of `Send` is not general enough").
fn realign(conn: &mut SqliteConnection) -> futures_util::future::BoxFuture<'_, bool> {
    Box::pin(realign_now(conn))
}

async fn realign_now(conn: &mut SqliteConnection) -> bool {
    use sqlx::TransactionManager;
    type Manager = <sqlx::Sqlite as sqlx::Database>::TransactionManager;
    // First, so the rollbacks the dropped transaction queued have been carried out (and failed).
    let Some(ended) = autocommit(conn).await else { return false };
    let depth = Manager::get_transaction_depth(conn);
    if depth > 0 && ended {
        let statements = std::iter::once("BEGIN".to_owned()).chain((1..depth).map(|n| format!("SAVEPOINT _sqlx_savepoint_{n}")));
        for sql in statements {
            if let Err(e) = sqlx::query(&sql).persistent(false).execute(&mut *conn).await {
                tracing::warn!(error = %e, "could not reopen the transaction SQLite ended on its own");
                return false;
            }
        }
    }
    for _ in 0..depth {
        if let Err(e) = Manager::rollback(conn).await {
            tracing::warn!(error = %e, "could not roll back the transaction SQLite ended on its own");
            return false;
        }
    }
    autocommit(conn).await == Some(true) && !conn.is_in_transaction()
}

impl SqliteStore {
    pub async fn connect(url: &str, config: &DatabaseConfig) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before we acknowledge it, even across a power cut.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // Statement journals (a batch's multi-row statements need one) in memory: they live
            // only while their statement runs, and on disk each of their pages was written out
            // (12 % of the writer's time at 10,000 events/s, BENCHMARKS.md).
            .pragma("temp_store", "memory");
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
        let parts = || Parts {
            pool: pool.clone(),
            health: health.clone(),
            max_connections,
            in_memory,
            turn: Some(writer.clone()),
            view: view.clone(),
        };
        let ingest = SqliteStore::ingest_batcher(1, parts());
        let settle = SqliteStore::settle_batcher(1, parts());
        Ok(SqliteStore { pool, writer, health, max_connections, in_memory, view, ingest, settle })
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
        // Without a worker (it is gone), nothing of the transaction will commit either.
        autocommit(conn).await.unwrap_or(true)
    }

    /// After SQLite ended, on its own, the transaction the ledger's writer had open on `conn`
    /// ([`transaction_ended`](Self::transaction_ended)), once that transaction (and its savepoint)
    /// were dropped: sqlx still counts them open, since its rollbacks failed with nothing to roll
    /// back, so the next `begin` on `conn` would open a savepoint in a transaction that never
    /// commits. [`realign`] brings the two counts back in line and the connection is reused.
    /// Should that fail, a file database's connection is closed (the pool opens another); an
    /// in-memory database's never is, since the database lives in it and a new connection would
    /// be a new, empty database.
    pub(crate) async fn after_ended_transaction(
        parts: &Parts<sqlx::Sqlite>,
        conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>,
    ) {
        if realign(conn).await {
            return;
        }
        if parts.in_memory {
            tracing::error!("an in-memory SQLite connection is still counted inside a transaction; kept, as closing it would lose the database");
        } else {
            conn.close_on_drop();
        }
    }

    /// What the ledger's and the outbox's writers work with (tests hand them batches of their own
    /// making).
    #[cfg(test)]
    pub(crate) fn batch_parts(&self) -> Parts<sqlx::Sqlite> {
        Parts {
            pool: self.pool.clone(),
            health: self.health.clone(),
            max_connections: self.max_connections,
            in_memory: self.in_memory,
            turn: Some(self.writer.clone()),
            view: self.view.clone(),
        }
    }

    /// SQLite has no notification channel.
    fn follow(&self) -> Option<tokio::task::JoinHandle<()>> {
        None
    }
}
