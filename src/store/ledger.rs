//! The event ledger repository, one SQL text for both engines (see `accounts.rs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::StoreError;
use crate::domain::ledger::{EventPlan, EventStatus, Recorded};
use crate::domain::orders::OrderRef;

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
    /// Ids the batch's insert (`insert_events`) stored, until their event is carried out. That
    /// statement tries every event of the batch.
    pub inserted: std::collections::HashSet<String>,
    /// Ids the batch's insert stored with their final status already (see
    /// [`known_outcome`]): only their history lines remain to be written.
    pub settled: std::collections::HashSet<String>,
    /// Ids of the batch's events certain to find no order ([`certain_no_order`]): carried out
    /// without looking.
    pub no_order: std::collections::HashSet<String>,
}

/// The outcome of a plan, when it is known before the plan is carried out: a plan that neither
/// reads nor writes anything but the ledger, or one that applies to an order when the event is
/// certain to find none (`no_order`, see [`certain_no_order`]). A batch stores such an event with
/// its final status at once, so its row is written once, not inserted and then updated.
pub(crate) fn known_outcome(plan: &EventPlan, no_order: bool) -> Option<(EventStatus, String)> {
    use crate::domain::ledger::{applied_outcome, held_outcome, ignored_outcome, noted_outcome, unmatched_outcome};
    use crate::domain::orders::Applied;
    match plan {
        EventPlan::Ignore(why) => Some(ignored_outcome(why)),
        EventPlan::Unmatched(why) => Some(unmatched_outcome(why)),
        EventPlan::Hold(why) => Some(held_outcome(why)),
        EventPlan::Apply(..) if no_order => Some(applied_outcome(&Applied::NoOrder)),
        EventPlan::ApplyNoted(_, _, remark) if no_order => Some(noted_outcome(applied_outcome(&Applied::NoOrder), remark)),
        EventPlan::SettleRefund { .. } | EventPlan::Apply(..) | EventPlan::ApplyNoted(..) => None,
    }
}

/// The order references of a plan that applies to an order.
fn order_ref(plan: &EventPlan) -> Option<&OrderRef> {
    match plan {
        EventPlan::Apply(r, _) | EventPlan::ApplyNoted(r, _, _) => Some(r),
        _ => None,
    }
}

/// What the orders table holds of the ids a batch's events name, read by one statement at the
/// batch's start ([`NamedOrders::query`]): each column's values that some order has.
#[derive(Debug, Default)]
pub(crate) struct NamedOrders {
    pub ids: std::collections::HashSet<String>,
    pub sessions: std::collections::HashSet<String>,
    pub intents: std::collections::HashSet<String>,
    pub charges: std::collections::HashSet<String>,
}

/// The columns an event's order is looked up by, in the order of [`OrderRef`]'s references: the
/// same four, compared the same way, as `payments.rs`' `apply_locked` (`id = $1 OR
/// checkout_session_id = $2 OR payment_intent_id = $3 OR charge_id = $4`). A change to one is a
/// change to the other, or [`certain_no_order`] would skip lookups that find an order.
const ORDER_KEYS: [&str; 4] = ["id", "checkout_session_id", "payment_intent_id", "charge_id"];

impl NamedOrders {
    /// The statement reading, of every order one of `plans` names by any of its references, those
    /// four columns (`SELECT id, checkout_session_id, payment_intent_id, charge_id`), with its
    /// parameters in order; `None` when no plan names an order. Placeholders as
    /// [`value_rows`] writes them.
    pub fn query<'a>(plans: impl Iterator<Item = &'a EventPlan>, numbered: bool) -> Option<(String, Vec<&'a str>)> {
        let mut named: [Vec<&str>; 4] = Default::default();
        for r in plans.filter_map(order_ref) {
            for (values, value) in named.iter_mut().zip([&r.order_id, &r.checkout_session_id, &r.payment_intent_id, &r.charge_id])
            {
                values.extend(value.as_deref());
            }
        }
        let mut terms = Vec::new();
        let mut params = Vec::new();
        for (column, values) in ORDER_KEYS.iter().zip(named) {
            if values.is_empty() {
                continue;
            }
            let first = params.len();
            let list = (0..values.len())
                .map(|i| if numbered { format!("${}", first + i + 1) } else { "?".to_owned() })
                .collect::<Vec<_>>()
                .join(", ");
            terms.push(format!("{column} IN ({list})"));
            params.extend(values);
        }
        (!terms.is_empty())
            .then(|| (format!("SELECT {} FROM orders WHERE {}", ORDER_KEYS.join(", "), terms.join(" OR ")), params))
    }

    /// Adds one row the query returned (its four columns, in order).
    pub fn add(&mut self, row: (String, Option<String>, Option<String>, Option<String>)) {
        let (id, session, intent, charge) = row;
        self.ids.insert(id);
        self.sessions.extend(session);
        self.intents.extend(intent);
        self.charges.extend(charge);
    }

    /// Whether the order lookup of `r` (`payments.rs`' `apply_locked`: an order whose id,
    /// session, payment intent or charge is the one `r` names) would find one of these orders.
    fn names(&self, r: &OrderRef) -> bool {
        let has =
            |set: &std::collections::HashSet<String>, value: &Option<String>| value.as_ref().is_some_and(|v| set.contains(v));
        has(&self.ids, &r.order_id)
            || has(&self.sessions, &r.checkout_session_id)
            || has(&self.intents, &r.payment_intent_id)
            || has(&self.charges, &r.charge_id)
    }
}

/// Of a batch's events, given in the order the batch carries them out, the ids of those certain to
/// find no order: every event that applies to an order and comes before the first one naming an
/// order that `found` (read at the batch's start) holds.
///
/// Why that is certain: on SQLite, within the batch's transaction only the batch's own events
/// change the orders table (the batch holds the write lock from its start), and an event changes
/// an order only after finding it. So until an event names an order `found` holds, none has been
/// changed, and the table is, for these events' lookups, what `found` read. After that first
/// event, an order could gain a payment intent or a charge another event names: every later
/// event looks its order up itself.
///
/// On PostgreSQL, other transactions (another writer, another instance, a checkout) may create an
/// order or give one a payment intent or charge meanwhile, until the batch commits: these events
/// are matched against the orders as they were when the batch read them, as if they had arrived a
/// moment before that change (which, without this, they see or not depending on when their own
/// lookup ran).
pub(crate) fn certain_no_order<'a>(
    events: impl Iterator<Item = (&'a str, &'a EventPlan)>,
    found: &NamedOrders,
) -> std::collections::HashSet<String> {
    let mut certain = std::collections::HashSet::new();
    for (event_id, plan) in events {
        let Some(r) = order_ref(plan) else { continue };
        if found.names(r) {
            break;
        }
        certain.insert(event_id.to_owned());
    }
    certain
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
    ($store:ty, $db:ty, $pg:literal) => {
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
                    let (status, detail) = Self::carry_out(&mut tx, plan, false, now).await?;
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
            pub(crate) const NUMBERED: bool = $pg;

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
                    // SQLite: the write lock from the start, as the batch reads the orders table
                    // before its first write (`named_orders`); read first and written after, a
                    // transaction could not write once another process (the CLI) had written.
                    // Should another process hold the lock past the busy timeout (5 s), the begin
                    // fails and so does the whole batch: none of it is acknowledged.
                    let mut tx = if $pg {
                        sqlx::Connection::begin(&mut *conn).await?
                    } else {
                        sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?
                    };
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
                        let stored = match Self::named_orders(&mut tx, jobs).await {
                            Ok(found) => {
                                let events = jobs.iter().map(|j| (j.work.event.event_id.as_str(), &j.work.plan));
                                deferred.no_order = $crate::store::ledger::certain_no_order(events, &found);
                                Self::insert_events(&mut tx, jobs, &deferred.no_order).await
                            }
                            Err(e) => Err(e),
                        };
                        match stored {
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
                // The insert comes first: on SQLite it takes the write lock before anything is read
                // (a batch holds it from its `BEGIN IMMEDIATE`). In a batch, its insert tried every
                // event's: one it did not store is in the ledger already (inserting it again would
                // only say so once more).
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
                let no_order = deferred.as_ref().is_some_and(|d| d.no_order.contains(&e.event_id));
                let (status, detail) = Self::carry_out(tx, plan, no_order, now).await?;
                let detail = if retried { format!("processed again after a failure: {detail}") } else { detail };
                match deferred {
                    Some(d) => {
                        if !retried && $crate::store::ledger::known_outcome(plan, no_order).is_some() {
                            d.settled.insert(e.event_id.clone());
                        }
                        d.seen.insert(e.event_id.clone(), status);
                        d.lines.push((e.event_id.clone(), status, detail.clone(), now));
                    }
                    None => Self::set_event_status(tx, &e.event_id, status, &detail, now).await?,
                }
                Ok(Recorded::Stored { status, detail, retried })
            }

            /// The orders the batch's events name, in one statement (see
            /// [`certain_no_order`](crate::store::ledger::certain_no_order)).
            async fn named_orders(
                tx: &mut sqlx::Transaction<'_, $db>,
                jobs: &[$crate::store::ledger::IngestJob],
            ) -> Result<$crate::store::ledger::NamedOrders, $crate::store::error::StoreError> {
                let mut found = $crate::store::ledger::NamedOrders::default();
                let Some((sql, params)) = $crate::store::ledger::NamedOrders::query(jobs.iter().map(|j| &j.work.plan), Self::NUMBERED) else {
                    return Ok(found);
                };
                // Not cached: its text depends on the batch.
                let mut select = sqlx::query_as(&sql).persistent(false);
                for param in params {
                    select = select.bind(param);
                }
                for row in select.fetch_all(&mut **tx).await? {
                    found.add(row);
                }
                Ok(found)
            }

            /// Stores the batch's events (status `received`, or their final one when it is known
            /// already: [`known_outcome`](crate::store::ledger::known_outcome)) in one statement per
            /// [`LINES_PER_STATEMENT`](crate::store::ledger::LINES_PER_STATEMENT) (not cached, as
            /// below); the ids that were new.
            async fn insert_events(
                tx: &mut sqlx::Transaction<'_, $db>,
                jobs: &[$crate::store::ledger::IngestJob],
                no_order: &std::collections::HashSet<String>,
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
                        let status = $crate::store::ledger::known_outcome(&job.work.plan, no_order.contains(&e.event_id))
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
            /// (decided by `domain::ledger`; only the reads and writes are here). `no_order`: the
            /// event is certain to find no order (`ledger::certain_no_order`), so none is looked up.
            async fn carry_out(
                tx: &mut sqlx::Transaction<'_, $db>,
                plan: &$crate::domain::ledger::EventPlan,
                no_order: bool,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<($crate::domain::ledger::EventStatus, String), $crate::store::error::StoreError> {
                use $crate::domain::ledger::{applied_outcome, noted_outcome, refund_outcome, EventPlan};
                if let Some(outcome) = $crate::store::ledger::known_outcome(plan, no_order) {
                    return Ok(outcome);
                }
                Ok(match plan {
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
                        noted_outcome(applied_outcome(&Self::apply_locked(tx, order, fact, now).await?), remark)
                    }
                    EventPlan::Ignore(_) | EventPlan::Unmatched(_) | EventPlan::Hold(_) => {
                        unreachable!("known_outcome answers every plan that reads and writes nothing")
                    }
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
    use super::{certain_no_order, known_outcome, value_rows, NamedOrders};
    use crate::domain::ledger::{EventPlan, EventStatus};
    use crate::domain::orders::{OrderRef, PaymentFact};

    fn apply(session: Option<&str>, intent: Option<&str>) -> EventPlan {
        let r = OrderRef {
            checkout_session_id: session.map(str::to_owned),
            payment_intent_id: intent.map(str::to_owned),
            ..OrderRef::default()
        };
        EventPlan::Apply(r, PaymentFact::Canceled)
    }

    #[test]
    fn one_statement_reads_every_order_a_batch_names_by_any_of_its_ids() {
        let plans = [
            apply(Some("cs_1"), None),
            EventPlan::Ignore("not about an order".to_owned()),
            apply(Some("cs_2"), Some("pi_2")),
            EventPlan::ApplyNoted(
                OrderRef { order_id: Some("ord_3".to_owned()), charge_id: Some("ch_3".to_owned()), ..OrderRef::default() },
                PaymentFact::Canceled,
                "a remark".to_owned(),
            ),
        ];
        let (sql, params) = NamedOrders::query(plans.iter(), true).unwrap();
        assert_eq!(
            sql,
            "SELECT id, checkout_session_id, payment_intent_id, charge_id FROM orders \
             WHERE id IN ($1) OR checkout_session_id IN ($2, $3) OR payment_intent_id IN ($4) OR charge_id IN ($5)"
        );
        assert_eq!(params, ["ord_3", "cs_1", "cs_2", "pi_2", "ch_3"]);
        let (sql, _) = NamedOrders::query(plans[..1].iter(), false).unwrap();
        assert_eq!(
            sql,
            "SELECT id, checkout_session_id, payment_intent_id, charge_id FROM orders WHERE checkout_session_id IN (?)"
        );
        assert!(NamedOrders::query(plans[1..2].iter(), false).is_none(), "no plan names an order: no statement");
    }

    #[test]
    fn events_before_the_first_that_names_a_found_order_are_certain_to_find_none() {
        let mut found = NamedOrders::default();
        found.add(("ord_x".to_owned(), Some("cs_x".to_owned()), None, None));
        let plans = [
            ("evt_1", apply(Some("cs_a"), None)),
            ("evt_2", EventPlan::Ignore("not about an order".to_owned())),
            ("evt_3", apply(Some("cs_b"), Some("pi_b"))),
            // Names the found order: it may give it a PaymentIntent a later event names.
            ("evt_4", apply(Some("cs_x"), Some("pi_c"))),
            ("evt_5", apply(None, Some("pi_c"))),
            ("evt_6", apply(Some("cs_d"), None)),
        ];
        let certain = certain_no_order(plans.iter().map(|(id, plan)| (*id, plan)), &found);
        let mut certain: Vec<_> = certain.into_iter().collect();
        certain.sort();
        assert_eq!(certain, ["evt_1", "evt_3"]);
        // Nothing found: every event that applies to an order is certain to find none.
        let none = certain_no_order(plans.iter().map(|(id, plan)| (*id, plan)), &NamedOrders::default());
        assert_eq!(none.len(), 5);
    }

    #[test]
    fn an_event_certain_to_find_no_order_has_the_outcome_of_a_lookup_that_found_none() {
        use crate::domain::ledger::{applied_outcome, noted_outcome};
        use crate::domain::orders::Applied;
        let looked_up = applied_outcome(&Applied::NoOrder);
        assert_eq!(known_outcome(&apply(Some("cs_a"), None), true), Some(looked_up.clone()));
        assert_eq!(known_outcome(&apply(Some("cs_a"), None), false), None, "not certain: it looks");
        let noted = EventPlan::ApplyNoted(OrderRef::default(), PaymentFact::Canceled, "overpaid".to_owned());
        assert_eq!(known_outcome(&noted, true), Some(noted_outcome(looked_up, "overpaid")));
        assert_eq!(known_outcome(&EventPlan::Hold("waiting".to_owned()), false).map(|(s, _)| s), Some(EventStatus::Failed));
    }

    #[test]
    fn value_rows_number_placeholders_for_postgres_and_not_for_sqlite() {
        assert_eq!(value_rows(2, 3, true), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(value_rows(2, 3, false), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(value_rows(1, 1, true), "($1)");
    }
}
