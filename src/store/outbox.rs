//! The outbox: the merchant's webhook endpoints, the messages written in the transaction that made
//! the fact they report (UNIQUE (fact_key, kind, recipient): one message per fact and recipient,
//! whatever is redelivered or replayed), their leases and every delivery attempt. One SQL text
//! for both engines (see `accounts.rs`); `$lock` is PostgreSQL's `FOR UPDATE SKIP LOCKED` (SQLite
//! has one writer, taking turns).

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::error::StoreError;

/// A webhook endpoint. Its secrets sign, so they are stored as given; `Debug` never shows them.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EndpointRow {
    pub id: String,
    pub url: String,
    /// A JSON array of event types.
    pub events: String,
    pub description: Option<String>,
    pub disabled: bool,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_until: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for EndpointRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointRow")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("disabled", &self.disabled)
            .field("secret", &"[redacted]")
            .field("previous_until", &self.previous_until)
            .field("failing_since", &self.failing_since)
            .finish_non_exhaustive()
    }
}

impl EndpointRow {
    pub fn event_types(&self) -> Vec<String> {
        serde_json::from_str(&self.events).unwrap_or_default()
    }

    /// The secrets that sign now: the current one, and the previous one until its overlap ends.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut out = vec![self.secret.as_str()];
        if let (Some(prev), Some(until)) = (&self.previous_secret, self.previous_until) {
            if until > now {
                out.push(prev.as_str());
            }
        }
        out
    }
}

/// What a PATCH of an endpoint changes: only the fields it carries.
#[derive(Debug, Clone, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    /// A JSON array of event types.
    pub events: Option<String>,
    /// `Some(None)` removes it.
    pub description: Option<Option<String>>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MessageRow {
    pub id: String,
    /// `webhook` or `email`.
    pub kind: String,
    pub recipient: String,
    pub event_type: String,
    pub payload: String,
    pub fact_key: String,
    pub user_id: Option<String>,
    pub user_seq: Option<i64>,
    pub occurred_at: DateTime<Utc>,
    pub status: String,
    /// Failed attempts in the current round (a replay or retry starts a new round).
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AttemptRow {
    pub message_id: String,
    /// 1, 2, … over the message's whole life.
    pub attempt: i64,
    pub at: DateTime<Utc>,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub response: Option<String>,
    pub duration_ms: i64,
}

/// What a delivery attempt came to, and what the message becomes.
#[derive(Debug, Clone)]
pub struct AttemptDone {
    pub message_id: String,
    /// The lease this attempt was made under: a dispatcher whose lease was taken over records
    /// its attempt but does not move the message.
    pub lease_owner: String,
    pub at: DateTime<Utc>,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub response: Option<String>,
    pub duration_ms: i64,
    pub next: NextStep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    RetryAt(DateTime<Utc>),
    Failed,
}

#[async_trait]
pub trait OutboxStore: Send + Sync {
    async fn insert_endpoint(&self, e: &EndpointRow) -> Result<(), StoreError>;
    async fn endpoints(&self) -> Result<Vec<EndpointRow>, StoreError>;
    async fn endpoint(&self, id: &str) -> Result<Option<EndpointRow>, StoreError>;
    /// Writes only the fields `patch` carries (so a concurrent auto-disable is not undone by
    /// a change of description); false when absent. Disabling holds the endpoint's pending
    /// messages; re-enabling forgets the failing run and makes its held messages due now.
    async fn update_endpoint(&self, id: &str, patch: &EndpointPatch, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Removes the endpoint and its messages; false when absent.
    async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError>;
    /// The new secret signs from now on, the old one beside it until `previous_until`; false when
    /// absent or while an earlier rotation's old secret still signs (its overlap is never cut short).
    async fn rotate_endpoint_secret(
        &self,
        id: &str,
        secret: &str,
        previous_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Leases up to `limit` due messages to `owner` until `lease_until`: pending, due, and not
    /// leased (or the lease expired: its dispatcher died). Concurrent callers never get one row both.
    async fn claim_outbox(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<MessageRow>, StoreError>;
    /// A leased webhook message whose endpoint is disabled: held (no attempt recorded) until the
    /// endpoint is enabled again. Whether it was still `owner`'s.
    async fn hold_message(&self, id: &str, owner: &str) -> Result<bool, StoreError>;
    /// Records the attempt and moves the message on (if `owner` still holds its lease); a
    /// webhook's endpoint learns whether it is failing. Whether the message moved. Group commit
    /// (`settle.rs`): answered once the transaction it shared with other attempts committed.
    async fn finish_attempt(&self, done: &AttemptDone) -> Result<bool, StoreError>;
    /// Disables `id` when it has failed continuously since before `failing_before`, and in the
    /// same transaction writes an `endpoint_disabled` email to every admin. Whether it was disabled.
    async fn disable_failing_endpoint(
        &self,
        id: &str,
        failing_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    async fn outbox_message(&self, id: &str) -> Result<Option<MessageRow>, StoreError>;
    /// An endpoint's messages, newest first.
    async fn endpoint_messages(
        &self,
        endpoint_id: &str,
        limit: i64,
        starting_after: Option<&str>,
    ) -> Result<Vec<MessageRow>, StoreError>;
    /// The emails, newest first, only those in `status` when given.
    async fn email_messages(
        &self,
        status: Option<&str>,
        limit: i64,
        starting_after: Option<&str>,
    ) -> Result<Vec<MessageRow>, StoreError>;
    async fn message_attempts(&self, message_id: &str) -> Result<Vec<AttemptRow>, StoreError>;
    /// Sends again (same message, same id) every message for the endpoint that occurred at or
    /// after `since` and is not being sent right now; how many.
    async fn replay_endpoint(&self, endpoint_id: &str, since: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Makes the webhook message due now (a failed one gets a new round); false when absent, an
    /// email, delivered, or in flight.
    async fn retry_message(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Writes a `ping` message for the endpoint; its id.
    async fn enqueue_ping(&self, endpoint_id: &str, now: DateTime<Utc>) -> Result<Option<String>, StoreError>;
    /// (pending, failed) messages, for the metrics.
    async fn outbox_backlog(&self) -> Result<(i64, i64), StoreError>;
}

pub(crate) const ENDPOINT_COLUMNS: &str =
    "id, url, events, description, disabled, secret, previous_secret, previous_until, failing_since, created_at, updated_at";
pub(crate) const MESSAGE_COLUMNS: &str =
    "id, kind, recipient, event_type, payload, fact_key, user_id, user_seq, occurred_at, status, \
     attempts, next_attempt_at, lease_owner, lease_until, delivered_at, last_error, created_at";

/// Who one user's notices go to: their address, and every endpoint (id, the events it takes,
/// disabled). Read once per event however many notices it makes (`write_notices`).
pub(crate) struct Audience {
    pub(crate) user_id: String,
    pub(crate) email: Option<String>,
    pub(crate) endpoints: Vec<(String, String, bool)>,
    /// A notice took the user's next sequence number: their sequence row is locked until the
    /// transaction ends (`lock_sequence` need not take it again).
    pub(crate) sequence_locked: bool,
}

impl Audience {
    /// Whether `user_id`'s sequence row is locked already in this transaction.
    pub(crate) fn holds_sequence(audience: &Option<Audience>, user_id: &str) -> bool {
        audience.as_ref().is_some_and(|a| a.sequence_locked && a.user_id == user_id)
    }
}

/// Messages written since the dispatchers were last woken (see [`wake_after_commit`]).
static WRITTEN: AtomicU64 = AtomicU64::new(0);
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

pub(crate) fn note_written(n: u64) {
    if n > 0 {
        WRITTEN.fetch_add(n, Ordering::Relaxed);
    }
}

/// After a commit: wakes the dispatchers waiting in this process when messages were written.
/// (One written by a transaction that then rolled back only makes a wake-up that finds nothing.)
pub fn wake_after_commit() {
    if WRITTEN.swap(0, Ordering::Relaxed) > 0 {
        WAKE.notify_waiters();
    }
}

/// What dispatchers wait on between polls.
pub fn wakeup() -> &'static tokio::sync::Notify {
    &WAKE
}

macro_rules! impl_outbox_store {
    ($store:ty, $db:ty, $lock:literal, $pg:literal) => {
        impl $store {
            /// Writes the messages `notices` make, in the caller's transaction: one per subscribed
            /// endpoint (`held` while it is disabled: sent once it is enabled again) and, for a receipt or refund notice, one email to the buyer. Each
            /// fact takes the user's next sequence number. A fact already reported writes nothing.
            /// `audience`: who the user's notices go to, read here unless an earlier call in the
            /// same event did.
            pub(crate) async fn write_notices(
                tx: &mut sqlx::Transaction<'_, $db>,
                user_id: &str,
                notices: Vec<$crate::domain::notifications::Notice>,
                now: chrono::DateTime<chrono::Utc>,
                audience: &mut Option<$crate::store::outbox::Audience>,
            ) -> Result<u64, $crate::store::error::StoreError> {
                use $crate::domain::notifications::{email_data, webhook_body};
                if notices.is_empty() {
                    return Ok(0);
                }
                let known = match audience {
                    Some(known) if known.user_id == user_id => known,
                    _ => {
                        let email: Option<String> =
                            sqlx::query_scalar("SELECT email FROM users WHERE id = $1").bind(user_id).fetch_optional(&mut **tx).await?;
                        let endpoints: Vec<(String, String, bool)> =
                            sqlx::query_as("SELECT id, events, disabled FROM webhook_endpoints ORDER BY id").fetch_all(&mut **tx).await?;
                        audience.insert($crate::store::outbox::Audience { user_id: user_id.to_owned(), email, endpoints, sequence_locked: false })
                    }
                };
                let $crate::store::outbox::Audience { email, endpoints, sequence_locked, .. } = known;
                let mut written = 0;
                for notice in notices {
                    let subscribed: Vec<(&str, bool)> = endpoints
                        .iter()
                        .filter(|(_, events, _)| {
                            serde_json::from_str::<Vec<String>>(events).is_ok_and(|t| t.iter().any(|t| t == notice.event_type))
                        })
                        .map(|(id, _, disabled)| (id.as_str(), *disabled))
                        .collect();
                    let mails = notice.email.filter(|_| email.is_some());
                    if subscribed.is_empty() && mails.is_none() {
                        continue;
                    }
                    let seq: i64 = sqlx::query_scalar(
                        "INSERT INTO outbox_sequences (user_id, seq) VALUES ($1, 1)
                         ON CONFLICT (user_id) DO UPDATE SET seq = outbox_sequences.seq + 1 RETURNING seq",
                    )
                    .bind(user_id)
                    .fetch_one(&mut **tx)
                    .await?;
                    *sequence_locked = true;
                    let mut data = notice.data.clone();
                    if let Some(map) = data.as_object_mut() {
                        map.insert("user".into(), serde_json::json!({ "id": user_id, "email": email }));
                        map.insert("occurred_at".into(), serde_json::json!(now));
                        map.insert("sequence".into(), serde_json::json!(seq));
                    }
                    let body = webhook_body(notice.event_type, now, &data).to_string();
                    for (endpoint, disabled) in subscribed {
                        let status = if disabled { "held" } else { "pending" };
                        written += Self::insert_message_as(tx, "webhook", endpoint, notice.event_type, &body, &notice.fact_key, Some(user_id), Some(seq), now, status).await?;
                    }
                    if let (Some(kind), Some(to)) = (mails, email.as_deref()) {
                        let mail = email_data(kind, to, &data, now).to_string();
                        written += Self::insert_message(tx, "email", to, kind, &mail, &notice.fact_key, Some(user_id), Some(seq), now).await?;
                    }
                }
                $crate::store::outbox::note_written(written);
                Ok(written)
            }

            /// One pending message, unless this (fact, kind, recipient) has one already; rows written.
            #[allow(clippy::too_many_arguments)]
            pub(crate) async fn insert_message(
                tx: &mut sqlx::Transaction<'_, $db>,
                kind: &str,
                recipient: &str,
                event_type: &str,
                payload: &str,
                fact_key: &str,
                user_id: Option<&str>,
                user_seq: Option<i64>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::store::error::StoreError> {
                Self::insert_message_as(tx, kind, recipient, event_type, payload, fact_key, user_id, user_seq, now, "pending").await
            }

            /// One message (`pending`, or `held` for a disabled endpoint), unless this (fact, kind,
            /// recipient) has one already; rows written.
            #[allow(clippy::too_many_arguments)]
            pub(crate) async fn insert_message_as(
                tx: &mut sqlx::Transaction<'_, $db>,
                kind: &str,
                recipient: &str,
                event_type: &str,
                payload: &str,
                fact_key: &str,
                user_id: Option<&str>,
                user_seq: Option<i64>,
                now: chrono::DateTime<chrono::Utc>,
                status: &str,
            ) -> Result<u64, $crate::store::error::StoreError> {
                Ok(sqlx::query(
                    "INSERT INTO outbox (id, kind, recipient, event_type, payload, fact_key, user_id, user_seq, occurred_at, status,
                                         attempts, next_attempt_at, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $9, $9)
                     ON CONFLICT (fact_key, kind, recipient) DO NOTHING",
                )
                .bind($crate::domain::account::new_id("msg"))
                .bind(kind)
                .bind(recipient)
                .bind(event_type)
                .bind(payload)
                .bind(fact_key)
                .bind(user_id)
                .bind(user_seq)
                .bind(now)
                .bind(status)
                .execute(&mut **tx)
                .await?
                .rows_affected())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::outbox::OutboxStore for $store {
            async fn insert_endpoint(&self, e: &$crate::store::outbox::EndpointRow) -> Result<(), $crate::store::error::StoreError> {
                let _turn = self.write_turn().await;
                $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "INSERT INTO webhook_endpoints (id, url, events, description, disabled, secret, previous_secret, previous_until,
                                                    failing_since, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(&e.id)
                .bind(&e.url)
                .bind(&e.events)
                .bind(&e.description)
                .bind(e.disabled)
                .bind(&e.secret)
                .bind(&e.previous_secret)
                .bind(e.previous_until)
                .bind(e.failing_since)
                .bind(e.created_at)
                .bind(e.updated_at)
                .execute(&mut *c)
                .await)?;
                Ok(())
            }

            async fn endpoints(&self) -> Result<Vec<$crate::store::outbox::EndpointRow>, $crate::store::error::StoreError> {
                let sql = format!("SELECT {} FROM webhook_endpoints ORDER BY id", $crate::store::outbox::ENDPOINT_COLUMNS);
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).fetch_all(&mut *c).await)?)
            }

            async fn endpoint(&self, id: &str) -> Result<Option<$crate::store::outbox::EndpointRow>, $crate::store::error::StoreError> {
                let sql = format!("SELECT {} FROM webhook_endpoints WHERE id = $1", $crate::store::outbox::ENDPOINT_COLUMNS);
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(id).fetch_optional(&mut *c).await)?)
            }

            async fn update_endpoint(
                &self,
                id: &str,
                p: &$crate::store::outbox::EndpointPatch,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::error::StoreError> {
                let _turn = self.write_turn().await;
                let found = $crate::store::pool::transaction!(self, tx => {
                    let n = sqlx::query(
                        "UPDATE webhook_endpoints SET url = COALESCE($2, url), events = COALESCE($3, events),
                                description = CASE WHEN $4 THEN $5 ELSE description END, disabled = COALESCE($6, disabled),
                                failing_since = CASE WHEN $6 IS NOT NULL AND NOT $6 THEN NULL ELSE failing_since END, updated_at = $7
                          WHERE id = $1",
                    )
                    .bind(id)
                    .bind(&p.url)
                    .bind(&p.events)
                    .bind(p.description.is_some())
                    .bind(p.description.clone().flatten())
                    .bind(p.disabled)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 0 {
                        return Ok(false);
                    }
                    match p.disabled {
                        Some(true) => {
                            sqlx::query("UPDATE outbox SET status = 'held' WHERE kind = 'webhook' AND recipient = $1 AND status = 'pending'")
                                .bind(id)
                                .execute(&mut *tx)
                                .await?;
                        }
                        Some(false) => {
                            let n = sqlx::query(
                                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $2
                                  WHERE kind = 'webhook' AND recipient = $1 AND status = 'held'",
                            )
                            .bind(id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                            $crate::store::outbox::note_written(n);
                        }
                        None => {}
                    }
                    tx.commit().await?;
                    Ok(true)
                })?;
                $crate::store::outbox::wake_after_commit();
                Ok(found)
            }

            async fn hold_message(&self, id: &str, owner: &str) -> Result<bool, $crate::store::error::StoreError> {
                let _turn = self.write_turn().await;
                let n = $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "UPDATE outbox SET status = 'held', lease_owner = NULL, lease_until = NULL
                      WHERE id = $1 AND kind = 'webhook' AND lease_owner = $2 AND status = 'pending'",
                )
                .bind(id)
                .bind(owner)
                .execute(&mut *c)
                .await)?
                .rows_affected();
                Ok(n == 1)
            }

            async fn delete_endpoint(&self, id: &str) -> Result<bool, $crate::store::error::StoreError> {
                let _turn = self.write_turn().await;
                $crate::store::pool::transaction!(self, tx => {
                    // PostgreSQL: the endpoint's messages are locked in id order before anything
                    // is deleted, and the endpoint after them, as the dispatcher's batches lock
                    // theirs (`settle.rs`): in the scan's order the two could deadlock.
                    if $pg {
                        sqlx::query("SELECT id FROM outbox WHERE kind = 'webhook' AND recipient = $1 ORDER BY id FOR UPDATE")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    sqlx::query("DELETE FROM outbox_attempts WHERE message_id IN (SELECT id FROM outbox WHERE kind = 'webhook' AND recipient = $1)")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM outbox WHERE kind = 'webhook' AND recipient = $1").bind(id).execute(&mut *tx).await?;
                    let n = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
                    tx.commit().await?;
                    Ok(n == 1)
                })
            }

            async fn rotate_endpoint_secret(
                &self,
                id: &str,
                secret: &str,
                previous_until: chrono::DateTime<chrono::Utc>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::error::StoreError> {
                let _turn = self.write_turn().await;
                let n = $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "UPDATE webhook_endpoints SET previous_secret = secret, previous_until = $3, secret = $2, updated_at = $4
                      WHERE id = $1 AND (previous_until IS NULL OR previous_until <= $4)",
                )
                .bind(id)
                .bind(secret)
                .bind(previous_until)
                .bind(now)
                .execute(&mut *c)
                .await)?
                .rows_affected();
                Ok(n == 1)
            }

            async fn claim_outbox(
                &self,
                owner: &str,
                now: chrono::DateTime<chrono::Utc>,
                lease_until: chrono::DateTime<chrono::Utc>,
                limit: i64,
            ) -> Result<Vec<$crate::store::outbox::MessageRow>, $crate::store::error::StoreError> {
                use $crate::store::outbox::MESSAGE_COLUMNS;
                // A read first, so an idle poll never takes SQLite's write turn.
                let due: Option<String> = $crate::store::pool::on_conn!(self, c => sqlx::query_scalar(
                    "SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until < $1) LIMIT 1",
                )
                .bind(now)
                .fetch_optional(&mut *c)
                .await)?;
                if due.is_none() {
                    return Ok(Vec::new());
                }
                let _turn = self.write_turn().await;
                // PostgreSQL: leases are set and compared with the database's clock (the lease's
                // length is `$2 - $3`), so instances whose clocks disagree cannot both hold one.
                // SQLite: one machine, one clock.
                let (until, clock) = if $pg { ("now() + ($2 - $3)", "now()") } else { ("$2", "$3") };
                let sql = format!(
                    "UPDATE outbox SET lease_owner = $1, lease_until = {until}
                      WHERE id IN (SELECT id FROM outbox
                                    WHERE status = 'pending' AND next_attempt_at <= $3 AND (lease_until IS NULL OR lease_until < {clock})
                                    ORDER BY next_attempt_at, id LIMIT $4 {})
                        AND status = 'pending' AND (lease_until IS NULL OR lease_until < {clock})
                     RETURNING {MESSAGE_COLUMNS}",
                    $lock
                );
                let mut rows: Vec<$crate::store::outbox::MessageRow> = $crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql)
                    .bind(owner)
                    .bind(lease_until)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&mut *c)
                    .await)?;
                rows.sort_by(|a, b| (a.next_attempt_at, &a.id).cmp(&(b.next_attempt_at, &b.id)));
                Ok(rows)
            }

            async fn finish_attempt(&self, d: &$crate::store::outbox::AttemptDone) -> Result<bool, $crate::store::error::StoreError> {
                // Group commit (`settle.rs`): settled in one transaction with whatever other
                // attempts finished while the previous batch ran; the answer comes after that
                // transaction committed.
                self.settle.submit(d.clone()).await
            }

            async fn disable_failing_endpoint(
                &self,
                id: &str,
                failing_before: chrono::DateTime<chrono::Utc>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::error::StoreError> {
                let _turn = self.write_turn().await;
                let disabled = $crate::store::pool::transaction!(self, tx => {
                    let row: Option<(String, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
                        "UPDATE webhook_endpoints SET disabled = $3, updated_at = $4
                          WHERE id = $1 AND disabled = $5 AND failing_since IS NOT NULL AND failing_since <= $2
                          RETURNING url, failing_since",
                    )
                    .bind(id)
                    .bind(failing_before)
                    .bind(true)
                    .bind(now)
                    .bind(false)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some((url, since)) = row else {
                        return Ok(false);
                    };
                    // Its pending messages wait, held, until it is enabled again.
                    sqlx::query("UPDATE outbox SET status = 'held' WHERE kind = 'webhook' AND recipient = $1 AND status = 'pending' AND lease_owner IS NULL")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    let admins: Vec<String> = sqlx::query_scalar("SELECT email FROM users WHERE role = 'admin' AND disabled = $1 ORDER BY id")
                        .bind(false)
                        .fetch_all(&mut *tx)
                        .await?;
                    let fact = format!("endpoint_disabled:{id}:{}", now.timestamp());
                    let mut written = 0;
                    for to in admins {
                        let data = serde_json::json!({ "to": to, "endpoint_id": id, "url": url, "since": since }).to_string();
                        written += Self::insert_message(&mut tx, "email", &to, "endpoint_disabled", &data, &fact, None, None, now).await?;
                    }
                    $crate::store::outbox::note_written(written);
                    tx.commit().await?;
                    Ok(true)
                })?;
                $crate::store::outbox::wake_after_commit();
                Ok(disabled)
            }

            async fn outbox_message(&self, id: &str) -> Result<Option<$crate::store::outbox::MessageRow>, $crate::store::error::StoreError> {
                let sql = format!("SELECT {} FROM outbox WHERE id = $1", $crate::store::outbox::MESSAGE_COLUMNS);
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(id).fetch_optional(&mut *c).await)?)
            }

            async fn endpoint_messages(
                &self,
                endpoint_id: &str,
                limit: i64,
                starting_after: Option<&str>,
            ) -> Result<Vec<$crate::store::outbox::MessageRow>, $crate::store::error::StoreError> {
                let sql = format!(
                    "SELECT {} FROM outbox WHERE kind = 'webhook' AND recipient = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
                    $crate::store::outbox::MESSAGE_COLUMNS
                );
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(endpoint_id).bind(starting_after).bind(limit).fetch_all(&mut *c).await)?)
            }

            async fn email_messages(
                &self,
                status: Option<&str>,
                limit: i64,
                starting_after: Option<&str>,
            ) -> Result<Vec<$crate::store::outbox::MessageRow>, $crate::store::error::StoreError> {
                let sql = format!(
                    "SELECT {} FROM outbox WHERE kind = 'email' AND ($1 IS NULL OR status = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
                    $crate::store::outbox::MESSAGE_COLUMNS
                );
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(status).bind(starting_after).bind(limit).fetch_all(&mut *c).await)?)
            }

            async fn message_attempts(&self, message_id: &str) -> Result<Vec<$crate::store::outbox::AttemptRow>, $crate::store::error::StoreError> {
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(
                    "SELECT message_id, attempt, at, status_code, error, response, duration_ms FROM outbox_attempts
                      WHERE message_id = $1 ORDER BY attempt",
                )
                .bind(message_id)
                .fetch_all(&mut *c)
                .await)?)
            }

            async fn replay_endpoint(
                &self,
                endpoint_id: &str,
                since: chrono::DateTime<chrono::Utc>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::store::error::StoreError> {
                let n = {
                    let _turn = self.write_turn().await;
                    $crate::store::pool::on_conn!(self, c => sqlx::query(
                        "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $3, delivered_at = NULL, lease_owner = NULL, lease_until = NULL
                          WHERE kind = 'webhook' AND recipient = $1 AND occurred_at >= $2 AND (lease_until IS NULL OR lease_until < $3)",
                    )
                    .bind(endpoint_id)
                    .bind(since)
                    .bind(now)
                    .execute(&mut *c)
                    .await)?
                    .rows_affected()
                };
                $crate::store::outbox::note_written(n);
                $crate::store::outbox::wake_after_commit();
                Ok(n)
            }

            async fn retry_message(&self, id: &str, now: chrono::DateTime<chrono::Utc>) -> Result<bool, $crate::store::error::StoreError> {
                let n = {
                    let _turn = self.write_turn().await;
                    $crate::store::pool::on_conn!(self, c => sqlx::query(
                        "UPDATE outbox SET attempts = CASE WHEN status = 'failed' THEN 0 ELSE attempts END, status = 'pending',
                                next_attempt_at = $2, delivered_at = NULL, lease_owner = NULL, lease_until = NULL
                          WHERE id = $1 AND kind = 'webhook' AND status <> 'delivered' AND (lease_until IS NULL OR lease_until < $2)",
                    )
                    .bind(id)
                    .bind(now)
                    .execute(&mut *c)
                    .await)?
                    .rows_affected()
                };
                $crate::store::outbox::note_written(n);
                $crate::store::outbox::wake_after_commit();
                Ok(n == 1)
            }

            async fn enqueue_ping(&self, endpoint_id: &str, now: chrono::DateTime<chrono::Utc>) -> Result<Option<String>, $crate::store::error::StoreError> {
                let _turn = self.write_turn().await;
                let id = $crate::store::pool::transaction!(self, tx => {
                    // A write first: it takes SQLite's write lock at once (see `debit_credits`).
                    let found: Option<String> = sqlx::query_scalar("UPDATE webhook_endpoints SET updated_at = updated_at WHERE id = $1 RETURNING id")
                        .bind(endpoint_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if found.is_none() {
                        return Ok(None);
                    }
                    let fact = format!("ping:{}", $crate::domain::account::new_id("ping"));
                    let data = serde_json::json!({ "endpoint_id": endpoint_id, "occurred_at": now });
                    let body = $crate::domain::notifications::webhook_body("ping", now, &data).to_string();
                    Self::insert_message(&mut tx, "webhook", endpoint_id, "ping", &body, &fact, None, None, now).await?;
                    let id: String = sqlx::query_scalar("SELECT id FROM outbox WHERE fact_key = $1").bind(&fact).fetch_one(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(Some(id))
                })?;
                $crate::store::outbox::note_written(1);
                $crate::store::outbox::wake_after_commit();
                Ok(id)
            }

            async fn outbox_backlog(&self) -> Result<(i64, i64), $crate::store::error::StoreError> {
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(
                    "SELECT COALESCE(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0), COALESCE(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0) FROM outbox",
                )
                .fetch_one(&mut *c)
                .await)?)
            }
        }
    };
}

pub(crate) use impl_outbox_store;
