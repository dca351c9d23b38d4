//! The event ledger repository, one SQL text for both engines (see `accounts.rs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::StoreError;
use crate::domain::ledger::{EventPlan, EventStatus, Recorded};

/// A verified event to store, with the exact bytes Stripe sent.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub kind: String,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub created: i64,
    pub payload: Vec<u8>,
    /// `stripe` or `nowpayments`.
    pub provider: &'static str,
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
    pub status: EventStatus,
    pub payload: Vec<u8>,
    /// `stripe` or `nowpayments`.
    pub provider: String,
}

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct HistoryRow {
    pub at: DateTime<Utc>,
    /// The status this step left the event in.
    pub status: String,
    pub detail: String,
}

#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// In one transaction: stores the event (its id is unique in the database, so concurrent
    /// deliveries store it once) and, when it is new or its earlier processing failed, carries out
    /// `plan` and records the outcome in its history. An error rolls everything back.
    async fn record_event(&self, event: &NewEvent, plan: &EventPlan, now: DateTime<Utc>) -> Result<Recorded, StoreError>;
    /// After `record_event` failed: keeps the event (status `failed`, the reason in its history)
    /// so nothing verified is lost; a redelivery or a replay processes it again.
    async fn mark_event_failed(&self, event: &NewEvent, detail: &str, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Carries out `plan` again for a stored event; `None` when there is no such event.
    async fn replay_event(
        &self,
        event_id: &str,
        plan: &EventPlan,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(EventStatus, String)>, StoreError>;
    /// Newest first, optionally filtered; `starting_after` is the last event id of the previous page.
    async fn list_events(
        &self,
        kind: Option<&str>,
        status: Option<EventStatus>,
        limit: i64,
        starting_after: Option<&str>,
    ) -> Result<Vec<EventRow>, StoreError>;
    /// As [`list_events`](Self::list_events), of one provider's events only when `provider` is set.
    async fn list_provider_events(
        &self,
        provider: Option<&str>,
        kind: Option<&str>,
        status: Option<EventStatus>,
        limit: i64,
        starting_after: Option<&str>,
    ) -> Result<Vec<EventRow>, StoreError>;
    async fn event(&self, event_id: &str) -> Result<Option<(EventRow, Vec<HistoryRow>)>, StoreError>;
}

/// A verified event waiting for the ledger's writer (see [`LedgerStore::record_event`]).
pub(crate) struct Delivery {
    pub event: NewEvent,
    pub plan: EventPlan,
    pub now: DateTime<Utc>,
}

/// Without savepoints, a batch writes its events' statuses and history lines together at its end:
/// these, and the status each event of the batch got.
#[derive(Default)]
pub(crate) struct Deferred {
    pub lines: Vec<(String, EventStatus, String, DateTime<Utc>)>,
    pub seen: std::collections::HashMap<String, EventStatus>,
    /// Ids the batch's first statement stored, until their event is carried out. That statement
    /// tries every event of the batch.
    pub inserted: std::collections::HashSet<String>,
    /// Ids the batch's first statement stored with their final status already (see
    /// [`outcome_without_store`]): only their history lines remain to be written.
    pub settled: std::collections::HashSet<String>,
}

/// The outcome of a plan that neither reads nor writes anything but the ledger, known before it
/// is carried out: a batch stores such an event with its final status at once, so its row is
/// written once, not inserted and then updated.
pub(crate) fn outcome_without_store(plan: &EventPlan) -> Option<(EventStatus, String)> {
    use crate::domain::ledger::{held_outcome, ignored_outcome, unmatched_outcome};
    match plan {
        EventPlan::Ignore(why) => Some(ignored_outcome(why)),
        EventPlan::Unmatched(why) => Some(unmatched_outcome(why)),
        EventPlan::Hold(why) => Some(held_outcome(why)),
        EventPlan::SettleRefund { .. } | EventPlan::Apply(..) | EventPlan::ApplyNoted(..) => None,
    }
}

/// Rows per closing statement (4 parameters each, well under either engine's limit).
pub(crate) const LINES_PER_STATEMENT: usize = 256;

/// `rows` parenthesised rows of `columns` placeholders each, bound in order: `$1, $2, …` for
/// PostgreSQL, and plain `?` for SQLite, whose parser looks every `$N` up among the statement's
/// earlier names and whose `sqlite3_bind_parameter_name` (called by sqlx for each parameter)
/// walks the same list: both quadratic in a batch's thousand parameters, about an eighth of the
/// server's time at 128 events per batch (measured with perf, BENCHMARKS.md). A `?` takes the next
/// number and is in no list.
pub(crate) fn value_rows(rows: usize, columns: usize, numbered: bool) -> String {
    use std::fmt::Write;
    let mut sql = String::with_capacity(rows * columns * 6);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            if numbered {
                let _ = write!(sql, "${}", row * columns + column + 1);
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

pub(crate) type IngestJob = super::batch::Job<Delivery, Recorded>;
pub(crate) type IngestBatcher = super::batch::Batcher<Delivery, Recorded>;

/// A PostgreSQL deadlock or serialization failure: the event is tried again, alone, after its
/// batch (two writers' batches may lock the same orders, refunds or grants in opposite orders:
/// sorting a batch by event id orders its `stripe_events` rows, not the rows its events change).
pub(crate) fn retry_alone(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|code| code == "40P01" || code == "40001")
}

/// How many times in all an event carried out alone is tried when it meets a deadlock or a
/// serialization failure.
pub(crate) const ALONE_TRIES: u32 = 5;

/// How long after a batch's commit the events it left to be carried out alone may still be tried
/// again: each try that meets a deadlock may first wait PostgreSQL's `deadlock_timeout` (1 s by
/// default) before it is chosen as the victim, and the writer takes no new batch meanwhile. A try
/// begun before the deadline runs to its end; an event not yet tried is still tried once.
pub(crate) const ALONE_RETRIES_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// How many events of one batch are carried out alone side by side: up to 4, at least one, and no
/// more than a quarter of the pool's connections (other requests need them too).
pub(crate) fn alone_at_once(max_connections: u32) -> usize {
    (max_connections as usize / 4).clamp(1, 4)
}

/// The pause before the next try of an event carried out alone, after `tries` tries: 5 ms doubled
/// each try, plus up to as much again at random, so writers that collided do not collide again in
/// step (at most about 150 ms over all tries).
pub(crate) fn alone_backoff(tries: u32) -> std::time::Duration {
    use rand::Rng;
    let base = 5u64 << tries.saturating_sub(1).min(6);
    std::time::Duration::from_millis(base + rand::thread_rng().gen_range(0..=base))
}

/// The end of one try at a batch (`run_ingest_batch`).
pub(crate) enum Attempt {
    /// Committed: each event's answer, `None` for one to carry out again alone.
    Committed(Vec<Option<Result<Recorded, StoreError>>>),
    /// Without savepoints, an event failed: nothing was committed.
    RolledBack,
    /// With savepoints, the event at this index failed with this error, and its failure ended the
    /// whole transaction (SQLite): nothing was committed.
    Ended(usize, StoreError),
}

pub(crate) const EVENT_COLUMNS: &str =
    "event_id, type, livemode, api_version, created, received_at, updated_at, status, payload, provider";

macro_rules! impl_ledger_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::ledger::LedgerStore for $store {
            async fn record_event(
                &self,
                e: &$crate::store::ledger::NewEvent,
                plan: &$crate::domain::ledger::EventPlan,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::domain::ledger::Recorded, $crate::store::error::StoreError> {
                // Group commit: the event shares a transaction with whatever else arrived while the
                // previous one ran; the answer comes after that transaction committed.
                self.ingest
                    .submit($crate::store::ledger::Delivery { event: e.clone(), plan: plan.clone(), now })
                    .await
            }

            async fn mark_event_failed(
                &self,
                e: &$crate::store::ledger::NewEvent,
                detail: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::error::StoreError> {
                let _turn = self.write_turn().await;
                $crate::store::pool::transaction!(self, tx => {
                    use $crate::domain::ledger::EventStatus;
                    Self::insert_event(&mut tx, e, EventStatus::Failed, now).await?;
                    // Only an event nobody finished is marked; a concurrent success stands.
                    let open: Option<EventStatus> = sqlx::query_scalar(
                        "UPDATE stripe_events SET status = $3, updated_at = $2 WHERE event_id = $1 AND status IN ($4, $3) RETURNING status",
                    )
                    .bind(&e.event_id)
                    .bind(now)
                    .bind(EventStatus::Failed)
                    .bind(EventStatus::Received)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if open.is_some() {
                        sqlx::query("INSERT INTO stripe_event_history (event_id, at, status, detail) VALUES ($1, $2, $3, $4)")
                            .bind(&e.event_id)
                            .bind(now)
                            .bind(EventStatus::Failed)
                            .bind(detail)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(())
                })
            }

            async fn replay_event(
                &self,
                event_id: &str,
                plan: &$crate::domain::ledger::EventPlan,
                why: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<($crate::domain::ledger::EventStatus, String)>, $crate::store::error::StoreError> {
                let _turn = self.write_turn().await;
                $crate::store::pool::transaction!(self, tx => {
                    let found: Option<$crate::domain::ledger::EventStatus> = sqlx::query_scalar("UPDATE stripe_events SET updated_at = updated_at WHERE event_id = $1 RETURNING status")
                        .bind(event_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if found.is_none() {
                        tx.rollback().await?;
                        return Ok(None);
                    }
                    let (status, detail) = Self::carry_out(&mut tx, plan, now).await?;
                    let detail = format!("{why}: {detail}");
                    Self::set_event_status(&mut tx, event_id, status, &detail, now).await?;
                    tx.commit().await?;
                    Ok(Some((status, detail)))
                })
                .inspect(|_| $crate::store::outbox::wake_after_commit())
            }

            async fn list_events(
                &self,
                kind: Option<&str>,
                status: Option<$crate::domain::ledger::EventStatus>,
                limit: i64,
                starting_after: Option<&str>,
            ) -> Result<Vec<$crate::store::ledger::EventRow>, $crate::store::error::StoreError> {
                self.list_provider_events(None, kind, status, limit, starting_after).await
            }

            async fn list_provider_events(
                &self,
                provider: Option<&str>,
                kind: Option<&str>,
                status: Option<$crate::domain::ledger::EventStatus>,
                limit: i64,
                starting_after: Option<&str>,
            ) -> Result<Vec<$crate::store::ledger::EventRow>, $crate::store::error::StoreError> {
                let sql = format!(
                    "SELECT {} FROM stripe_events
                     WHERE ($1 IS NULL OR type = $1) AND ($2 IS NULL OR status = $2) AND ($5 IS NULL OR provider = $5)
                       AND seq < COALESCE((SELECT seq FROM stripe_events WHERE event_id = $3), 9223372036854775807)
                     ORDER BY seq DESC LIMIT $4",
                    $crate::store::ledger::EVENT_COLUMNS
                );
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(kind).bind(status).bind(starting_after).bind(limit).bind(provider).fetch_all(&mut *c).await)?)
            }

            async fn event(
                &self,
                event_id: &str,
            ) -> Result<Option<($crate::store::ledger::EventRow, Vec<$crate::store::ledger::HistoryRow>)>, $crate::store::error::StoreError> {
                let sql = format!("SELECT {} FROM stripe_events WHERE event_id = $1", $crate::store::ledger::EVENT_COLUMNS);
                let Some(row): Option<$crate::store::ledger::EventRow> = $crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(event_id).fetch_optional(&mut *c).await)? else {
                    return Ok(None);
                };
                let history = $crate::store::pool::on_conn!(self, c => sqlx::query_as("SELECT at, status, detail FROM stripe_event_history WHERE event_id = $1 ORDER BY id")
                    .bind(event_id)
                    .fetch_all(&mut *c)
                    .await)?;
                Ok(Some((row, history)))
            }
        }

        impl $store {
            /// Whether the batch statements number their placeholders (PostgreSQL) or not
            /// (SQLite: see [`value_rows`](crate::store::ledger::value_rows)).
            pub(crate) const NUMBERED: bool = matches!(<$db as sqlx::Database>::NAME.as_bytes(), b"PostgreSQL");

            /// The writers of [`record_event`]: `writers` tasks (each one transaction at a time)
            /// running [`run_ingest_batch`](Self::run_ingest_batch) on `parts`.
            pub(crate) fn ingest_batcher(
                writers: usize,
                parts: $crate::store::batch::Parts<$db>,
            ) -> $crate::store::ledger::IngestBatcher {
                let parts = std::sync::Arc::new(parts);
                $crate::store::batch::Batcher::new(
                    writers,
                    std::sync::Arc::new(move |jobs| {
                        let parts = parts.clone();
                        Box::pin(async move { Self::run_ingest_batch(&parts, jobs).await })
                    }),
                )
            }

            /// One batch of deliveries in one transaction, each in a savepoint of its own: one
            /// that fails is rolled back alone and answered with its error (its caller records it
            /// `failed`); the others are answered after the commit. A storage fault, a lost
            /// connection or a failed commit answers every delivery of the batch with an error
            /// (none acknowledged; see `batch::fail_all` for which) and discards the connection
            /// (`pool::settle`). On PostgreSQL, a delivery that met a deadlock or a serialization
            /// failure is carried out again after the commit, alone ([`record_alone`](Self::record_alone)).
            ///
            /// Savepoints cost two statements per event, and events rarely fail: the batch is
            /// first tried without them, and only when one of its events fails is it rolled back
            /// whole and carried out again with them.
            ///
            /// The batch is sorted by event id (stably: deliveries of one id keep their order)
            /// before either try, so both tries carry it out in one order, and two writers'
            /// batches holding the same ids lock those `stripe_events` rows in one order (one
            /// waits for the other). The rows the events change (orders, refunds, grants) follow
            /// no such order across batches: on PostgreSQL two writers may deadlock over them.
            /// PostgreSQL detects it and fails one of the two statements (40P01); that batch is
            /// rolled back and carried out again with savepoints, and an event that meets a
            /// deadlock there is carried out again alone after the commit (a few at a time, a
            /// bounded number of tries, within [`ALONE_RETRIES_FOR`](crate::store::ledger::ALONE_RETRIES_FOR)).
            /// No advisory lock or global order is taken to avoid it.
            ///
            /// On SQLite some failures end the whole transaction on their own (a trigger's
            /// `RAISE(ROLLBACK, …)`, an interrupt, out of memory, an `ON CONFLICT ROLLBACK`
            /// constraint): the rollback to the failing event's savepoint then has nothing to go
            /// back to, and everything done before it in the transaction is gone too. That event
            /// alone is answered with its error, and the rest of the batch, none of it committed,
            /// is carried out again in a new transaction (at most once per event of the batch).
            pub(crate) async fn run_ingest_batch(
                parts: &$crate::store::batch::Parts<$db>,
                mut jobs: Vec<$crate::store::ledger::IngestJob>,
            ) {
                use $crate::store::ledger::Attempt;
                jobs.sort_by(|a, b| a.work.event.event_id.cmp(&b.work.event.event_id));
                let mut savepoints = false;
                let mut alone = Vec::new();
                while !jobs.is_empty() {
                    match Self::ingest_attempt(parts, &jobs, savepoints).await {
                        Err(e) => {
                            tracing::error!(error = %e, events = jobs.len(), "a batch of events failed; none was acknowledged");
                            $crate::store::batch::fail_all(std::mem::take(&mut jobs), &e);
                        }
                        Ok(Attempt::RolledBack) => savepoints = true,
                        Ok(Attempt::Ended(index, error)) => {
                            tracing::warn!(error = %error, events = jobs.len(), "an event's failure ended its batch's transaction; the others are carried out again");
                            jobs.remove(index).answer(Err(error));
                            savepoints = true;
                        }
                        Ok(Attempt::Committed(answers)) => {
                            $crate::store::outbox::wake_after_commit();
                            for (job, answer) in std::mem::take(&mut jobs).into_iter().zip(answers) {
                                match answer {
                                    Some(answer) => job.answer(answer),
                                    None => alone.push(job),
                                }
                            }
                        }
                    }
                }
                // Side by side (a few at a time, so the pool keeps connections for other requests)
                // and within a deadline for retries, so a batch with many victims does not keep its
                // writer for one deadlock wait after another.
                if !alone.is_empty() {
                    use futures_util::StreamExt;
                    let deadline = tokio::time::Instant::now() + $crate::store::ledger::ALONE_RETRIES_FOR;
                    futures_util::stream::iter(alone)
                        .for_each_concurrent($crate::store::ledger::alone_at_once(parts.max_connections), |job| async move {
                            let d = &job.work;
                            let answer = Self::record_alone(parts, &d.event, &d.plan, d.now, deadline).await;
                            job.answer(answer);
                        })
                        .await;
                }
            }

            /// One try at a batch (see [`run_ingest_batch`](Self::run_ingest_batch)), on a
            /// connection of its own and with the writers' turn (`Parts::writer`).
            async fn ingest_attempt(
                parts: &$crate::store::batch::Parts<$db>,
                jobs: &[$crate::store::ledger::IngestJob],
                savepoints: bool,
            ) -> Result<$crate::store::ledger::Attempt, $crate::store::error::StoreError> {
                use $crate::store::error::StoreError;
                use $crate::store::ledger::Attempt;
                let (mut conn, _turn) = parts.writer().await?;
                // Set when SQLite ended the transaction on its own: sqlx still counts it open, so
                // the two are brought back in line before the connection is reused.
                let mut ended = false;
                // The users whose grants or balances the batch changed leave the read view once
                // it is over (committed or rolled back), never before (`invalidation.rs`).
                let result = $crate::store::invalidation::scoped(|u| parts.view.invalidate(u), async {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    let mut answers = Vec::with_capacity(jobs.len());
                    let mut deferred = $crate::store::ledger::Deferred::default();
                    // Without savepoints, an event failed: the batch is rolled back (unless SQLite
                    // already did), to be carried out again with them.
                    macro_rules! roll_back_all {
                        () => {{
                            if Self::transaction_ended(&mut tx).await {
                                ended = true;
                            } else {
                                tx.rollback().await?;
                            }
                            return Ok(Attempt::RolledBack);
                        }};
                    }
                    if !savepoints {
                        match Self::insert_events(&mut tx, jobs).await {
                            Ok(inserted) => deferred.inserted = inserted,
                            Err(StoreError::Database(e)) if $crate::store::health::classify(&e).is_some() => return Err(e.into()),
                            Err(_) => roll_back_all!(),
                        }
                    }
                    for (index, job) in jobs.iter().enumerate() {
                        let d = &job.work;
                        if !savepoints {
                            match Self::record_in(&mut tx, &d.event, &d.plan, d.now, Some(&mut deferred)).await {
                                Ok(recorded) => answers.push(Some(Ok(recorded))),
                                // The connection (or the database) failed: the whole batch did.
                                Err(StoreError::Database(e)) if $crate::store::health::classify(&e).is_some() => {
                                    return Err(e.into());
                                }
                                Err(_) => roll_back_all!(),
                            }
                            continue;
                        }
                        let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
                        match Self::record_in(&mut savepoint, &d.event, &d.plan, d.now, None).await {
                            Ok(recorded) => {
                                savepoint.commit().await?;
                                answers.push(Some(Ok(recorded)));
                            }
                            Err(StoreError::Database(e)) if $crate::store::health::classify(&e).is_some() => {
                                return Err(e.into());
                            }
                            // This event's failure took the whole transaction with it (SQLite).
                            Err(e) if Self::transaction_ended(&mut savepoint).await => {
                                ended = true;
                                return Ok(Attempt::Ended(index, e));
                            }
                            Err(StoreError::Database(e)) if $crate::store::ledger::retry_alone(&e) => {
                                savepoint.rollback().await?;
                                answers.push(None);
                            }
                            Err(e) => {
                                savepoint.rollback().await?;
                                answers.push(Some(Err(e)));
                            }
                        }
                    }
                    if !savepoints {
                        match Self::write_deferred(&mut tx, &deferred).await {
                            Ok(()) => {}
                            Err(StoreError::Database(e)) if $crate::store::health::classify(&e).is_some() => return Err(e.into()),
                            Err(_) => roll_back_all!(),
                        }
                    }
                    tx.commit().await?;
                    Ok(Attempt::Committed(answers))
                })
                .await;
                if ended {
                    Self::after_ended_transaction(parts, &mut conn).await;
                }
                $crate::store::pool::settle(&parts.health, conn, result)
            }

            /// One delivery in a transaction of its own. A PostgreSQL deadlock or serialization
            /// failure is tried again, up to [`ALONE_TRIES`](crate::store::ledger::ALONE_TRIES)
            /// times in all and not after `deadline`, after a short jittered pause
            /// (`ledger::alone_backoff`): another writer holding the same rows usually commits
            /// meanwhile. Its last error answers it (its caller records it `failed`; Stripe retries).
            async fn record_alone(
                parts: &$crate::store::batch::Parts<$db>,
                e: &$crate::store::ledger::NewEvent,
                plan: &$crate::domain::ledger::EventPlan,
                now: chrono::DateTime<chrono::Utc>,
                deadline: tokio::time::Instant,
            ) -> Result<$crate::domain::ledger::Recorded, $crate::store::error::StoreError> {
                use $crate::store::error::StoreError;
                let mut tries = 1;
                loop {
                    let result = Self::record_alone_once(parts, e, plan, now).await;
                    match &result {
                        Err(StoreError::Database(error))
                            if tries < $crate::store::ledger::ALONE_TRIES
                                && tokio::time::Instant::now() < deadline
                                && $crate::store::ledger::retry_alone(error) =>
                        {
                            tracing::warn!(event_id = %e.event_id, error = %error, tries, "an event carried out alone met a deadlock or a serialization failure; trying again");
                            tokio::time::sleep($crate::store::ledger::alone_backoff(tries)).await;
                            tries += 1;
                        }
                        _ => return result,
                    }
                }
            }

            /// One try of [`record_alone`](Self::record_alone).
            async fn record_alone_once(
                parts: &$crate::store::batch::Parts<$db>,
                e: &$crate::store::ledger::NewEvent,
                plan: &$crate::domain::ledger::EventPlan,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::domain::ledger::Recorded, $crate::store::error::StoreError> {
                let (mut conn, _turn) = parts.writer().await?;
                let result = $crate::store::invalidation::scoped(|u| parts.view.invalidate(u), async {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    let recorded = Self::record_in(&mut tx, e, plan, now, None).await?;
                    tx.commit().await?;
                    Ok(recorded)
                })
                .await;
                let result = $crate::store::pool::settle(&parts.health, conn, result);
                if result.is_ok() {
                    $crate::store::outbox::wake_after_commit();
                }
                result
            }

            /// Inside the caller's transaction (or savepoint): stores the event and, when it is new
            /// or its earlier processing failed, carries out `plan` and records the outcome (at
            /// once, or with `deferred` in the batch's closing statements).
            async fn record_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                e: &$crate::store::ledger::NewEvent,
                plan: &$crate::domain::ledger::EventPlan,
                now: chrono::DateTime<chrono::Utc>,
                mut deferred: Option<&mut $crate::store::ledger::Deferred>,
            ) -> Result<$crate::domain::ledger::Recorded, $crate::store::error::StoreError> {
                use $crate::domain::ledger::{EventStatus, Recorded};
                // The same event earlier in this batch: its status is not written yet, but known.
                if let Some(status) = deferred.as_ref().and_then(|d| d.seen.get(&e.event_id)) {
                    return Ok(Recorded::Duplicate { status: *status });
                }
                // The insert comes first: on SQLite it takes the write lock before anything is read.
                // In a batch, its first statement tried every event's insert: one it did not store
                // is in the ledger already (inserting it again would only say so once more).
                let inserted = match deferred.as_mut() {
                    Some(d) => u64::from(d.inserted.remove(&e.event_id)),
                    None => Self::insert_event(tx, e, EventStatus::Received, now).await?,
                };
                let mut retried = false;
                if inserted == 0 {
                    // Locks the event row, so two redeliveries of a failed event take turns.
                    let existing: EventStatus = sqlx::query_scalar("UPDATE stripe_events SET updated_at = updated_at WHERE event_id = $1 RETURNING status")
                        .bind(&e.event_id)
                        .fetch_one(&mut **tx)
                        .await?;
                    if !existing.needs_processing() {
                        // Nothing was changed: the caller may commit or roll back alike.
                        return Ok(Recorded::Duplicate { status: existing });
                    }
                    retried = true;
                }
                let (status, detail) = Self::carry_out(tx, plan, now).await?;
                let detail = if retried { format!("processed again after a failure: {detail}") } else { detail };
                match deferred {
                    Some(d) => {
                        if !retried && $crate::store::ledger::outcome_without_store(plan).is_some() {
                            d.settled.insert(e.event_id.clone());
                        }
                        d.seen.insert(e.event_id.clone(), status);
                        d.lines.push((e.event_id.clone(), status, detail.clone(), now));
                    }
                    None => Self::set_event_status(tx, &e.event_id, status, &detail, now).await?,
                }
                Ok(Recorded::Stored { status, detail, retried })
            }

            /// Stores the batch's events (status `received`, or their final one when their plan
            /// needs nothing else: [`outcome_without_store`](crate::store::ledger::outcome_without_store)) in one statement per
            /// [`LINES_PER_STATEMENT`](crate::store::ledger::LINES_PER_STATEMENT) (not cached, as
            /// below); the ids that were new.
            async fn insert_events(
                tx: &mut sqlx::Transaction<'_, $db>,
                jobs: &[$crate::store::ledger::IngestJob],
            ) -> Result<std::collections::HashSet<String>, $crate::store::error::StoreError> {
                let mut inserted = std::collections::HashSet::with_capacity(jobs.len());
                // In the ids' order, so two batches holding the same new ids (concurrent
                // redeliveries, on PostgreSQL) wait for each other instead of deadlocking.
                let mut jobs: Vec<&$crate::store::ledger::IngestJob> = jobs.iter().collect();
                jobs.sort_by(|a, b| a.work.event.event_id.cmp(&b.work.event.event_id));
                for jobs in jobs.chunks($crate::store::ledger::LINES_PER_STATEMENT) {
                    let sql = format!(
                        "INSERT INTO stripe_events (event_id, type, livemode, api_version, created, received_at, updated_at, status, payload, provider)
                         VALUES {} ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                        $crate::store::ledger::value_rows(jobs.len(), 10, Self::NUMBERED)
                    );
                    let mut insert = sqlx::query_scalar::<_, String>(&sql).persistent(false);
                    for job in jobs {
                        let (e, now) = (&job.work.event, job.work.now);
                        let status = $crate::store::ledger::outcome_without_store(&job.work.plan)
                            .map_or($crate::domain::ledger::EventStatus::Received, |(status, _)| status);
                        insert = insert.bind(&e.event_id).bind(&e.kind).bind(e.livemode).bind(&e.api_version).bind(e.created).bind(now).bind(now).bind(status).bind(&e.payload).bind(e.provider);
                    }
                    inserted.extend(insert.fetch_all(&mut **tx).await?);
                }
                Ok(inserted)
            }

            /// The statuses and history lines `deferred` holds: per chunk of lines, one statement for
            /// the statuses of events not stored with their final status already (none when all
            /// were) and one for the history lines (not cached: their text depends on the batch's
            /// size).
            async fn write_deferred(
                tx: &mut sqlx::Transaction<'_, $db>,
                deferred: &$crate::store::ledger::Deferred,
            ) -> Result<(), $crate::store::error::StoreError> {
                // Events stored with their final status (same `updated_at`) are not written again.
                let unsettled: Vec<_> = deferred.lines.iter().filter(|(id, ..)| !deferred.settled.contains(id)).collect();
                for lines in unsettled.chunks($crate::store::ledger::LINES_PER_STATEMENT) {
                    let sql = format!(
                        "UPDATE stripe_events SET status = v.column2, updated_at = v.column3 FROM (VALUES {}) AS v WHERE stripe_events.event_id = v.column1",
                        $crate::store::ledger::value_rows(lines.len(), 3, Self::NUMBERED)
                    );
                    let mut update = sqlx::query(&sql).persistent(false);
                    for (id, status, _, at) in lines {
                        update = update.bind(id).bind(*status).bind(*at);
                    }
                    update.execute(&mut **tx).await?;
                }
                for lines in deferred.lines.chunks($crate::store::ledger::LINES_PER_STATEMENT) {
                    let sql = format!(
                        "INSERT INTO stripe_event_history (event_id, at, status, detail) VALUES {}",
                        $crate::store::ledger::value_rows(lines.len(), 4, Self::NUMBERED)
                    );
                    let mut insert = sqlx::query(&sql).persistent(false);
                    for (id, status, detail, at) in lines {
                        insert = insert.bind(id).bind(*at).bind(*status).bind(detail);
                    }
                    insert.execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Stores the event with `status` unless its id is already in the ledger; how many rows
            /// that wrote (0 for a redelivery).
            async fn insert_event(
                tx: &mut sqlx::Transaction<'_, $db>,
                e: &$crate::store::ledger::NewEvent,
                status: $crate::domain::ledger::EventStatus,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::store::error::StoreError> {
                Ok(sqlx::query(
                    "INSERT INTO stripe_events (event_id, type, livemode, api_version, created, received_at, updated_at, status, payload, provider)
                     VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9) ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(&e.event_id)
                .bind(&e.kind)
                .bind(e.livemode)
                .bind(&e.api_version)
                .bind(e.created)
                .bind(now)
                .bind(status)
                .bind(&e.payload)
                .bind(e.provider)
                .execute(&mut **tx)
                .await?
                .rows_affected())
            }

            /// Carries out `plan` inside the ledger's transaction: the event's new status and why
            /// (decided by `domain::ledger`; only the reads and writes are here).
            async fn carry_out(
                tx: &mut sqlx::Transaction<'_, $db>,
                plan: &$crate::domain::ledger::EventPlan,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<($crate::domain::ledger::EventStatus, String), $crate::store::error::StoreError> {
                use $crate::domain::ledger::{applied_outcome, held_outcome, ignored_outcome, refund_outcome, unmatched_outcome, EventPlan};
                Ok(match plan {
                    EventPlan::Ignore(why) => ignored_outcome(why),
                    EventPlan::Unmatched(why) => unmatched_outcome(why),
                    EventPlan::SettleRefund { refund_id, stripe_refund_id, status } => {
                        let settled = sqlx::query(
                            "UPDATE refunds SET stripe_refund_id = COALESCE(stripe_refund_id, $2), status = $3 WHERE id = $1",
                        )
                        .bind(refund_id)
                        .bind(stripe_refund_id)
                        .bind(*status)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected();
                        refund_outcome(refund_id, *status, settled > 0)
                    }
                    EventPlan::Apply(order, fact) => applied_outcome(&Self::apply_locked(tx, order, fact, now).await?),
                    EventPlan::ApplyNoted(order, fact, remark) => {
                        let (status, detail) = applied_outcome(&Self::apply_locked(tx, order, fact, now).await?);
                        (status, format!("{detail}; {remark}"))
                    }
                    EventPlan::Hold(why) => held_outcome(why),
                })
            }

            async fn set_event_status(
                tx: &mut sqlx::Transaction<'_, $db>,
                event_id: &str,
                status: $crate::domain::ledger::EventStatus,
                detail: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::error::StoreError> {
                sqlx::query("UPDATE stripe_events SET status = $2, updated_at = $3 WHERE event_id = $1")
                    .bind(event_id)
                    .bind(status)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query("INSERT INTO stripe_event_history (event_id, at, status, detail) VALUES ($1, $2, $3, $4)")
                    .bind(event_id)
                    .bind(now)
                    .bind(status)
                    .bind(detail)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }
        }
    };
}

pub(crate) use impl_ledger_store;

#[cfg(test)]
mod tests {
    use super::value_rows;

    #[test]
    fn value_rows_number_placeholders_for_postgres_and_not_for_sqlite() {
        assert_eq!(value_rows(2, 3, true), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(value_rows(2, 3, false), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(value_rows(1, 1, true), "($1)");
    }
}
