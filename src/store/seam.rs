//! The seam itself: the `Store` trait every engine implements, what it says about itself, and
//! (in a macro) the part of it both engines implement the same way.

use async_trait::async_trait;

use super::accounts::AccountStore;
use super::apikeys::ApiKeyStore;
use super::audit::AuditStore;
use super::credits::CreditStore;
use super::error::StoreError;
use super::ledger::LedgerStore;
use super::licences::LicenceStore;
use super::outbox::OutboxStore;
use super::payments::PaymentStore;
use super::view::View;

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

/// Migration state, for readiness and `tollgate migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub applied: Vec<i64>,
    pub pending: Vec<i64>,
}

#[async_trait]
pub trait Store:
    AccountStore
    + ApiKeyStore
    + AuditStore
    + CreditStore
    + LedgerStore
    + LicenceStore
    + OutboxStore
    + PaymentStore
    + Send
    + Sync
    + 'static
{
    fn engine(&self) -> Engine;
    /// Applies pending migrations; returns the versions applied now.
    async fn migrate(&self) -> Result<Vec<i64>, StoreError>;
    async fn migration_status(&self) -> Result<MigrationStatus, StoreError>;
    /// A round trip to the database.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Whether the database takes a write now: no storage fault in the last seconds, and an
    /// event-sized row written and committed. `Err` says why not, in words fit for `/readyz`.
    async fn check_writable(&self) -> Result<(), String>;
    /// Faults met since start, (storage, unreachable), as [`super::health::Health::fault_counts`].
    fn fault_counts(&self) -> (u64, u64);
    async fn close(&self);
    /// This store's read view (`view.rs`): what authenticated reads consult first.
    fn view(&self) -> &View;
    /// Starts keeping the view fresh from other writers' changes (PostgreSQL: LISTEN, with a
    /// heartbeat); `None` when the engine has no such channel (SQLite: the view's maximum age).
    fn follow_changes(&self) -> Option<tokio::task::JoinHandle<()>>;
}

pub(crate) fn status_of(migrator: &sqlx::migrate::Migrator, applied: Vec<i64>) -> MigrationStatus {
    let pending = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    MigrationStatus { applied, pending }
}

/// `Store` for an engine whose type has `pool`, `health`, `view`, `conn()`, `settle()`, `write_turn()` and `follow()`;
/// `$exists` asks whether sqlx's migrations table exists (a count, or a boolean).
macro_rules! impl_store {
    ($store:ty, $engine:expr, $migrator:expr, $exists:literal, $exists_ty:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::seam::Store for $store {
            fn engine(&self) -> $crate::store::seam::Engine {
                $engine
            }

            async fn migrate(&self) -> Result<Vec<i64>, $crate::store::error::StoreError> {
                let before = self.migration_status().await?;
                $migrator.run(&self.pool).await?;
                Ok(before.pending)
            }

            async fn migration_status(&self) -> Result<$crate::store::seam::MigrationStatus, $crate::store::error::StoreError> {
                let exists: $exists_ty = $crate::store::pool::on_conn!(self, c => sqlx::query_scalar($exists).fetch_one(&mut *c).await)?;
                let applied = if exists == <$exists_ty>::default() {
                    Vec::new()
                } else {
                    $crate::store::pool::on_conn!(self, c => sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                        .fetch_all(&mut *c)
                        .await)?
                };
                Ok($crate::store::seam::status_of(&$migrator, applied))
            }

            async fn ping(&self) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::on_conn!(self, c => sqlx::query("SELECT 1").execute(&mut *c).await)?;
                Ok(())
            }

            async fn check_writable(&self) -> Result<(), String> {
                let probe = async {
                    let _turn = self.write_turn().await;
                    let written = $crate::store::pool::transaction!(self, tx => {
                        sqlx::query(
                            "INSERT INTO health_probe (id, checked_at, filler) VALUES (1, $1, $2)
                             ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at, filler = excluded.filler",
                        )
                        .bind(chrono::Utc::now())
                        .bind($crate::store::pool::probe_filler())
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                        Ok(())
                    });
                    $crate::store::pool::writable_verdict(&self.health, written)
                };
                self.health.probe_once(probe).await
            }

            fn fault_counts(&self) -> (u64, u64) {
                self.health.fault_counts()
            }

            async fn close(&self) {
                self.pool.close().await;
            }

            fn view(&self) -> &$crate::store::view::View {
                &self.view
            }

            fn follow_changes(&self) -> Option<tokio::task::JoinHandle<()>> {
                self.follow()
            }
        }
    };
}

pub(crate) use impl_store;
