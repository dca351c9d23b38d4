//! The storage seam: one trait, a SQLite and a PostgreSQL implementation, each with its own
//! migrations under `migrations/<engine>/`. Nothing outside this module writes SQL.
//!
//! This file only names the parts: `seam.rs` (the `Store` trait), `error.rs`, the repositories
//! (`accounts.rs`, `apikeys.rs`, `audit.rs`, `credits.rs`, `ledger.rs`, `licences.rs`, `payments.rs`: their rows, their traits and, in a
//! macro, their SQL written once for both engines), `pool.rs` (what both engines do the same with
//! their pool), `view.rs` (the in-memory read view) and `changes.rs` (PostgreSQL's change feed that
//! keeps it fresh), `batch.rs` (group commit: the queue and the writer tasks, for the ledger's events and, in
//! `settle.rs`, the outbox's delivery attempts), `types.rs` (domain
//! enums in and out of text columns), and the engines
//! (`sqlite.rs`, `postgres.rs`). No file here imports this one.

pub mod accounts;
pub mod apikeys;
pub mod audit;
pub mod backup;
mod batch;
mod changes;
pub mod credits;
mod error;
pub mod health;
mod invalidation;
pub mod ledger;
#[cfg(test)]
mod ledger_tests;
pub mod licences;
pub mod outbox;
#[cfg(test)]
mod outbox_tests;
pub mod payments;
mod pool;
mod postgres;
mod seam;
mod settle;
mod sqlite;
mod types;
pub mod view;

use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::config::DatabaseConfig;

pub use accounts::{AccountStore, FamilyRow, FlagsChanged, Keep, PasswordChanged, Purged, SessionRow, SpendOutcome};
pub use apikeys::{ApiKeyRow, ApiKeyStore};
pub use audit::{AuditEntry, AuditStore, NewAuditEntry};
pub use credits::CreditStore;
pub use error::StoreError;
pub use ledger::{LedgerStore, NewEvent};
pub use licences::LicenceStore;
pub use outbox::OutboxStore;
pub use payments::{IdempotencyStart, PaymentStore};
pub use postgres::PgStore;
pub use seam::{Engine, MigrationStatus, Store};
pub use sqlite::SqliteStore;
pub use view::{EntitlementInputs, View};

/// Opens the database the configuration names. Does not migrate.
pub async fn connect(config: &DatabaseConfig) -> Result<Arc<dyn Store>, StoreError> {
    let url = config.url.expose_secret();
    match Engine::from_url(url) {
        Some(Engine::Sqlite) => Ok(Arc::new(SqliteStore::connect(url, config).await?)),
        Some(Engine::Postgres) => Ok(Arc::new(PgStore::connect(url, config).await?)),
        None => Err(StoreError::UnsupportedUrl),
    }
}
