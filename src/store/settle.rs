//! Group commit of the outbox dispatcher's delivery attempts (`OutboxStore::finish_attempt`):
//! each attempt is queued to one writer (`batch.rs`), which settles everything queued in ONE
//! transaction (on SQLite, one turn of the writers and one commit for all of them) and answers
//! each caller whether its message moved. Each attempt is carried out exactly as it was alone;
//! an attempt that fails in the database costs the others nothing (the batch is then settled
//! attempt by attempt). A file of its own, beside `outbox.rs`: `batch.rs` reaches `outbox.rs`
//! (through the read view and the repositories), so the writer, which needs `batch.rs`, is here.

use chrono::{DateTime, Utc};

use super::outbox::AttemptDone;

/// A delivery attempt waiting for the settling writer (group commit, `batch.rs`): see
/// [`OutboxStore::finish_attempt`](super::outbox::OutboxStore::finish_attempt). Its answer is
/// whether the message moved.
pub(crate) type SettleJob = super::batch::Job<AttemptDone, bool>;
pub(crate) type SettleBatcher = super::batch::Batcher<AttemptDone, bool>;

/// What a run of attempts to one endpoint, in the order they were settled, makes of its
/// `failing_since` (`f`), as one statement: `f = CASE WHEN reset THEN at ELSE COALESCE(f, at) END`.
/// One attempt alone: a delivery sets it NULL (`reset`, no `at`), a failure at `t` keeps it or
/// starts it at `t` (`COALESCE(f, t)`), exactly what each attempt's own statement did; a run folds
/// those steps in order (the same end as running them one after another).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FailingSince {
    pub reset: bool,
    pub at: Option<DateTime<Utc>>,
}

impl FailingSince {
    /// This run, then one more attempt (`delivered`, at `at`).
    pub(crate) fn then(self, delivered: bool, at: DateTime<Utc>) -> FailingSince {
        if delivered {
            FailingSince { reset: true, at: None }
        } else {
            // COALESCE(run(f), at): a run that reset stays reset to its first failure since.
            FailingSince { reset: self.reset, at: self.at.or(Some(at)) }
        }
    }

    /// What the statement leaves in `failing_since` when it held `before` (the tests' model).
    #[cfg(test)]
    pub(crate) fn applied_to(self, before: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        if self.reset {
            self.at
        } else {
            before.or(self.at)
        }
    }
}

macro_rules! impl_settle_writer {
    ($store:ty, $db:ty, $pg:literal) => {
        impl $store {
            /// The writer of [`finish_attempt`](crate::store::outbox::OutboxStore::finish_attempt):
            /// `writers` tasks (each one transaction at a time) running
            /// [`run_settle_batch`](Self::run_settle_batch) on `parts`.
            pub(crate) fn settle_batcher(
                writers: usize,
                parts: $crate::store::batch::Parts<$db>,
            ) -> $crate::store::settle::SettleBatcher {
                let parts = std::sync::Arc::new(parts);
                $crate::store::batch::Batcher::new(
                    writers,
                    std::sync::Arc::new(move |jobs| {
                        let parts = parts.clone();
                        Box::pin(async move { Self::run_settle_batch(&parts, jobs).await })
                    }),
                )
            }

            /// Settles a batch of delivery attempts in ONE transaction (one commit, and on SQLite
            /// one turn of the writer, for all of them), then answers each with whether its
            /// message moved. Each attempt is carried out as `finish_attempt` always did
            /// ([`settle_in`](Self::settle_in)), in the order they arrived.
            ///
            /// A statement that fails (not a fault) fails the whole try: it is rolled back (on
            /// SQLite, unless the failure ended the transaction on its own: the connection is
            /// then brought back in line, as the ledger's writer does), and each attempt is
            /// settled again alone, in a transaction of its own, and answered with its own
            /// outcome, so one failing attempt costs the others nothing. A storage fault, a lost
            /// connection or an unreachable database answers every attempt not yet settled with
            /// an error (`batch::fail_all`): the dispatcher logs it, the lease expires and the
            /// message is sent again (at least once, as before).
            pub(crate) async fn run_settle_batch(
                parts: &$crate::store::batch::Parts<$db>,
                jobs: Vec<$crate::store::settle::SettleJob>,
            ) {
                let first = {
                    let dones: Vec<&$crate::store::outbox::AttemptDone> = jobs.iter().map(|j| &j.work).collect();
                    Self::settle_try(parts, &dones).await
                };
                match first {
                    Ok(Ok(moved)) => {
                        for (job, moved) in jobs.into_iter().zip(moved) {
                            job.answer(Ok(moved));
                        }
                    }
                    // Alone already: its own error, as before group commit.
                    Ok(Err(e)) | Err(e) if jobs.len() == 1 => {
                        if let Some(job) = jobs.into_iter().next() {
                            job.answer(Err(e));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, attempts = jobs.len(), "a batch of delivery attempts met a database fault (or no connection); none was recorded");
                        $crate::store::batch::fail_all(jobs, &e);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, attempts = jobs.len(), "a delivery attempt failed its batch's transaction; each is settled alone");
                        let mut jobs = jobs.into_iter();
                        while let Some(job) = jobs.next() {
                            match Self::settle_try(parts, &[&job.work]).await {
                                Ok(answer) => {
                                    let answer = answer.map(|moved| moved.first().copied().unwrap_or(false));
                                    job.answer(answer);
                                }
                                // No more writes to a database that just faulted.
                                Err(e) => {
                                    tracing::error!(error = %e, "a delivery attempt settled alone met a database fault (or no connection); the rest of its batch was not recorded");
                                    $crate::store::batch::fail_all(std::iter::once(job).chain(jobs).collect(), &e);
                                    break;
                                }
                            }
                        }
                    }
                }
            }

            /// One try at settling `dones` in one transaction, on a connection of its own and with
            /// the writers' turn (`Parts::writer`). `Err`: a fault (or the database is
            /// unreachable), nothing committed; `Ok(Err)`: a statement (or the commit) failed
            /// otherwise, rolled back; `Ok(Ok)`: committed, whether each message moved.
            #[allow(clippy::type_complexity)]
            async fn settle_try(
                parts: &$crate::store::batch::Parts<$db>,
                dones: &[&$crate::store::outbox::AttemptDone],
            ) -> Result<Result<Vec<bool>, $crate::store::error::StoreError>, $crate::store::error::StoreError> {
                use $crate::store::error::StoreError;
                use $crate::store::health::classify;
                let (mut conn, _turn) = parts.writer().await?;
                // Set when SQLite ended the transaction on its own (see `run_ingest_batch`).
                let mut ended = false;
                // Nothing here changes what the read view holds today; scoped all the same, as
                // every transaction is, so a note made on this path is never out of scope.
                let result = $crate::store::invalidation::scoped(|u| parts.view.invalidate(u), async {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    match Self::settle_in(&mut tx, dones).await {
                        Ok(moved) => match tx.commit().await {
                            Ok(()) => Ok(Ok(moved)),
                            Err(e) if classify(&e).is_some() => Err(e.into()),
                            // The database refused the commit: nothing of it was committed.
                            Err(e) => Ok(Err(e.into())),
                        },
                        Err(StoreError::Database(e)) if classify(&e).is_some() => Err(e.into()),
                        Err(e) => {
                            if Self::transaction_ended(&mut tx).await {
                                ended = true;
                            } else {
                                tx.rollback().await?;
                            }
                            Ok(Err(e))
                        }
                    }
                })
                .await;
                if ended {
                    Self::after_ended_transaction(parts, &mut conn).await;
                }
                $crate::store::pool::settle(&parts.health, conn, result)
            }

            /// Inside the caller's transaction, each attempt in turn, as one `finish_attempt`
            /// did alone: the message's row locked (SQLite: the write lock), the attempt recorded
            /// under the next number of the message's whole life, the message moved on if the
            /// attempt's dispatcher still holds its lease. A message that is gone records
            /// nothing. Then each webhook endpoint's `failing_since`, once per endpoint, in id
            /// order (two batches lock shared endpoints in one order), its attempts folded in
            /// their order ([`FailingSince`](crate::store::settle::FailingSince)): the same end as
            /// one statement per attempt (nothing here reads it). Whether each message moved.
            async fn settle_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                dones: &[&$crate::store::outbox::AttemptDone],
            ) -> Result<Vec<bool>, $crate::store::error::StoreError> {
                use $crate::store::outbox::NextStep;
                use $crate::store::settle::FailingSince;
                let mut moved = Vec::with_capacity(dones.len());
                let mut endpoints: std::collections::BTreeMap<String, FailingSince> = std::collections::BTreeMap::new();
                // PostgreSQL: the batch's message rows are locked first, in id order, as
                // `delete_endpoint` locks an endpoint's (then the endpoints, in id order, below):
                // taken in the attempts' order they could deadlock with it. (SQLite: the write
                // turn orders everything.)
                if $pg && dones.len() > 1 {
                    let mut ids: Vec<&str> = dones.iter().map(|d| d.message_id.as_str()).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    let sql = format!(
                        "SELECT id FROM outbox WHERE id IN {} ORDER BY id FOR UPDATE",
                        $crate::store::ledger::value_rows(1, ids.len(), true)
                    );
                    let mut lock = sqlx::query(&sql).persistent(false);
                    for id in ids {
                        lock = lock.bind(id);
                    }
                    lock.execute(&mut **tx).await?;
                }
                for d in dones {
                    let msg: Option<(String, String)> =
                        sqlx::query_as("UPDATE outbox SET attempts = attempts WHERE id = $1 RETURNING kind, recipient")
                            .bind(&d.message_id)
                            .fetch_optional(&mut **tx)
                            .await?;
                    let Some((kind, recipient)) = msg else {
                        moved.push(false);
                        continue;
                    };
                    // The attempt's number is read under the row's lock: 1, 2, … over the
                    // message's whole life (its `attempts` column restarts with each round).
                    sqlx::query(
                        "INSERT INTO outbox_attempts (message_id, attempt, at, status_code, error, response, duration_ms)
                         SELECT $1, COALESCE(MAX(attempt), 0) + 1, $2, $3, $4, $5, $6 FROM outbox_attempts WHERE message_id = $1",
                    )
                    .bind(&d.message_id)
                    .bind(d.at)
                    .bind(d.status_code)
                    .bind(&d.error)
                    .bind(&d.response)
                    .bind(d.duration_ms)
                    .execute(&mut **tx)
                    .await?;
                    let (status, next_at, delivered_at) = match d.next {
                        NextStep::Delivered => ("delivered", d.at, Some(d.at)),
                        NextStep::RetryAt(t) => ("pending", t, None),
                        NextStep::Failed => ("failed", d.at, None),
                    };
                    let n = sqlx::query(
                        "UPDATE outbox SET status = $3, attempts = CASE WHEN $3 = 'delivered' THEN attempts ELSE attempts + 1 END,
                                next_attempt_at = $4, delivered_at = $5, last_error = $6, lease_owner = NULL, lease_until = NULL
                          WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                    )
                    .bind(&d.message_id)
                    .bind(&d.lease_owner)
                    .bind(status)
                    .bind(next_at)
                    .bind(delivered_at)
                    .bind(&d.error)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                    moved.push(n == 1);
                    if kind == "webhook" {
                        let run = endpoints.entry(recipient).or_default();
                        *run = run.then(d.next == NextStep::Delivered, d.at);
                    }
                }
                for (id, run) in endpoints {
                    sqlx::query(
                        "UPDATE webhook_endpoints SET failing_since = CASE WHEN $2 THEN $3 ELSE COALESCE(failing_since, $3) END WHERE id = $1",
                    )
                    .bind(&id)
                    .bind(run.reset)
                    .bind(run.at)
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(moved)
            }
        }
    };
}

pub(crate) use impl_settle_writer;
