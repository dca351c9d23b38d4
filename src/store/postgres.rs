//! The PostgreSQL store: a pool of connections, writers side by side (row locks, not a database
//! lock), and fast refusals while the server cannot be reached.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use super::batch::Parts;
use super::error::StoreError;
use super::health::Health;
use super::ledger::IngestBatcher;
use super::seam::Engine;
use super::settle::SettleBatcher;
use super::view::{View, CAPACITY};
use crate::config::DatabaseConfig;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

super::seam::impl_store!(PgStore, Engine::Postgres, MIGRATOR, "SELECT to_regclass('_sqlx_migrations') IS NOT NULL", bool);
super::pool::impl_connections!(PgStore, sqlx::Postgres);
super::accounts::impl_account_store!(PgStore);
super::apikeys::impl_api_key_store!(PgStore);
super::audit::impl_audit_store!(PgStore, "$8::jsonb", "detail::text");
super::ledger::impl_ledger_store!(PgStore, sqlx::Postgres, true);
super::payments::impl_payment_store!(PgStore, sqlx::Postgres);
super::credits::impl_credit_store!(PgStore, sqlx::Postgres);
super::licences::impl_licence_store!(PgStore, sqlx::Postgres);
super::outbox::impl_outbox_store!(PgStore, sqlx::Postgres, "FOR UPDATE SKIP LOCKED", true);
super::settle::impl_settle_writer!(PgStore, sqlx::Postgres, true);

pub struct PgStore {
    pool: PgPool,
    health: Arc<Health>,
    max_connections: u32,
    view: View,
    /// For the change feed's own connection (`changes.rs`).
    options: PgConnectOptions,
    /// Verified events' writers (group commit, `batch.rs`): `database_ingest_writers` side by
    /// side, at most half the pool's connections (the rest serve everything else).
    ingest: IngestBatcher,
    /// The writer of the dispatcher's delivery attempts (`outbox.rs::finish_attempt`, group
    /// commit): one, so attempts never wait on each other's row locks across writers.
    settle: SettleBatcher,
}

impl PgStore {
    /// PostgreSQL writers run side by side, locking rows, not the database.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        None
    }

    /// PostgreSQL never ends a transaction on its own: a failed statement leaves it open (aborted)
    /// until the client rolls it back (see `SqliteStore::transaction_ended`).
    pub(crate) async fn transaction_ended(_conn: &mut sqlx::PgConnection) -> bool {
        false
    }

    /// Never called: PostgreSQL never ends a transaction on its own (see
    /// `SqliteStore::after_ended_transaction`). Were it to happen, the connection is not reused.
    pub(crate) async fn after_ended_transaction(
        _parts: &Parts<sqlx::Postgres>,
        conn: &mut sqlx::pool::PoolConnection<sqlx::Postgres>,
    ) {
        conn.close_on_drop();
    }

    /// What the ledger's and the outbox's writers work with (tests hand them batches of their
    /// own making).
    #[cfg(test)]
    pub(crate) fn batch_parts(&self) -> Parts<sqlx::Postgres> {
        Parts {
            pool: self.pool.clone(),
            health: self.health.clone(),
            max_connections: self.max_connections,
            in_memory: false,
            turn: None,
            view: self.view.clone(),
        }
    }

    /// Follows `tollgate_changes` on a connection of its own (`changes.rs`).
    fn follow(&self) -> Option<tokio::task::JoinHandle<()>> {
        Some(tokio::spawn(super::changes::follow(self.options.clone(), self.view.clone())))
    }
}

impl PgStore {
    /// `sslmode` and the other libpq parameters in the URL are honoured by sqlx.
    pub async fn connect(url: &str, config: &DatabaseConfig) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("tollgate");
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            // Never hand out a connection with a transaction left open.
            .after_release(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .connect_with(options.clone())
            .await?;
        let health = Arc::new(Health::new());
        let max_connections = config.max_connections;
        let view = View::new(CAPACITY);
        let parts = || Parts {
            pool: pool.clone(),
            health: health.clone(),
            max_connections,
            in_memory: false,
            turn: None,
            view: view.clone(),
        };
        let writers = config.ingest_writers.min(max_connections / 2).max(1) as usize;
        let ingest = PgStore::ingest_batcher(writers, parts());
        let settle = PgStore::settle_batcher(1, parts());
        Ok(PgStore { pool, health, max_connections, view, options, ingest, settle })
    }
}
