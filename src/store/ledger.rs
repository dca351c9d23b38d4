//! The event ledger repository, one SQL text for both engines (see `accounts.rs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::StoreError;

/// A verified event to store, with the exact bytes Stripe sent.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub kind: String,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub created: i64,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub event_id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub created: i64,
    pub received_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub status: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct HistoryRow {
    pub at: DateTime<Utc>,
    /// The status this step left the event in.
    pub status: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// New in the ledger, stored with the given status.
    Inserted,
    /// Already in the ledger (a redelivery): nothing written.
    Duplicate { status: String },
}

#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// Stores the event and its first history entry in one transaction; the event id is unique
    /// in the database, so concurrent deliveries of one event store it once.
    async fn record_event(
        &self,
        event: &NewEvent,
        status: &str,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError>;
    /// Newest first, optionally filtered; `starting_after` is the last event id of the previous page.
    async fn list_events(
        &self,
        kind: Option<&str>,
        status: Option<&str>,
        limit: i64,
        starting_after: Option<&str>,
    ) -> Result<Vec<EventRow>, StoreError>;
    async fn event(&self, event_id: &str) -> Result<Option<(EventRow, Vec<HistoryRow>)>, StoreError>;
}

pub(crate) const EVENT_COLUMNS: &str = "event_id, type, livemode, api_version, created, received_at, updated_at, status, payload";

macro_rules! impl_ledger_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::ledger::LedgerStore for $store {
            async fn record_event(
                &self,
                e: &$crate::store::ledger::NewEvent,
                status: &str,
                detail: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::ledger::Recorded, $crate::store::StoreError> {
                let mut tx = self.pool.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO stripe_events (event_id, type, livemode, api_version, created, received_at, updated_at, status, payload)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(&e.event_id)
                .bind(&e.kind)
                .bind(e.livemode)
                .bind(&e.api_version)
                .bind(e.created)
                .bind(now)
                .bind(now)
                .bind(status)
                .bind(&e.payload)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    let existing: String = sqlx::query_scalar("SELECT status FROM stripe_events WHERE event_id = $1").bind(&e.event_id).fetch_one(&mut *tx).await?;
                    tx.rollback().await?;
                    return Ok($crate::store::ledger::Recorded::Duplicate { status: existing });
                }
                sqlx::query("INSERT INTO stripe_event_history (event_id, at, status, detail) VALUES ($1, $2, $3, $4)")
                    .bind(&e.event_id)
                    .bind(now)
                    .bind(status)
                    .bind(detail)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok($crate::store::ledger::Recorded::Inserted)
            }

            async fn list_events(
                &self,
                kind: Option<&str>,
                status: Option<&str>,
                limit: i64,
                starting_after: Option<&str>,
            ) -> Result<Vec<$crate::store::ledger::EventRow>, $crate::store::StoreError> {
                let sql = format!(
                    "SELECT {} FROM stripe_events
                     WHERE ($1 IS NULL OR type = $1) AND ($2 IS NULL OR status = $2)
                       AND seq < COALESCE((SELECT seq FROM stripe_events WHERE event_id = $3), 9223372036854775807)
                     ORDER BY seq DESC LIMIT $4",
                    $crate::store::ledger::EVENT_COLUMNS
                );
                Ok(sqlx::query_as(&sql).bind(kind).bind(status).bind(starting_after).bind(limit).fetch_all(&self.pool).await?)
            }

            async fn event(
                &self,
                event_id: &str,
            ) -> Result<Option<($crate::store::ledger::EventRow, Vec<$crate::store::ledger::HistoryRow>)>, $crate::store::StoreError> {
                let sql = format!("SELECT {} FROM stripe_events WHERE event_id = $1", $crate::store::ledger::EVENT_COLUMNS);
                let Some(row): Option<$crate::store::ledger::EventRow> = sqlx::query_as(&sql).bind(event_id).fetch_optional(&self.pool).await? else {
                    return Ok(None);
                };
                let history = sqlx::query_as("SELECT at, status, detail FROM stripe_event_history WHERE event_id = $1 ORDER BY id")
                    .bind(event_id)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(Some((row, history)))
            }
        }
    };
}

pub(crate) use impl_ledger_store;
