//! The credit ledger: `credit_balances` (one row per user, `balance >= 0` by a CHECK) and
//! `credit_movements` (every change, with the balance after it). Every write locks the user's
//! balance row first (one `UPDATE … RETURNING`), so movements of one user take turns and each
//! gets the next `seq`; a debit is that UPDATE made conditional (`balance >= amount`), so no
//! interleaving of requests or instances can take a balance below zero. SQL once for both
//! engines, as in `payments.rs`; the decisions are `domain::credits`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::error::StoreError;
use crate::domain::credits::CreditKind;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MovementRow {
    pub id: String,
    pub user_id: String,
    /// The user's movements in the order they happened: 1, 2, 3…
    pub seq: i64,
    pub kind: CreditKind,
    /// Signed: what the movement added to the balance.
    pub amount: i64,
    pub balance_after: i64,
    pub reason: String,
    pub order_id: Option<String>,
    pub grant_id: Option<String>,
    /// `key_…`, `usr_…` or `system`.
    pub actor: String,
    /// JSON text (an object of strings), as the merchant sent it.
    pub metadata: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A debit to make once per (user, Idempotency-Key).
#[derive(Debug, Clone)]
pub struct NewDebit {
    pub user_id: String,
    pub amount: i64,
    pub reason: String,
    pub metadata: Option<String>,
    pub actor: String,
    /// The Idempotency-Key's SHA-256 (never the key).
    pub idempotency_key: String,
    /// What the request said (`domain::credits::debit_request_hash`).
    pub request_hash: String,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreditOutcome {
    /// Written now.
    Moved(MovementRow),
    /// The same Idempotency-Key and request were debited before: that debit.
    Replayed(MovementRow),
    /// The Idempotency-Key was used for another request.
    KeyReused,
    /// The balance is smaller than the amount; nothing was written.
    Insufficient {
        balance: i64,
    },
    NoUser,
}

/// A user whose balance disagrees with their movements.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CreditDisagreement {
    pub user_id: String,
    /// `credit_balances.balance` (0 without a row).
    pub balance: i64,
    /// The sum of the user's movements.
    pub total: i64,
    /// The last movement's `balance_after` (0 without movements).
    pub last_balance_after: i64,
    /// Movements whose `balance_after` is not the running sum up to them.
    pub broken_steps: i64,
}

#[async_trait]
pub trait CreditStore: Send + Sync {
    /// The user's balance (0 when they never had credits).
    async fn credit_balance(&self, user_id: &str) -> Result<i64, StoreError>;
    /// Debits once per (user, Idempotency-Key): a conditional write that never takes the balance
    /// below zero. Concurrent requests with one key make one debit; the others get it replayed.
    async fn debit_credits(&self, debit: &NewDebit) -> Result<CreditOutcome, StoreError>;
    /// An admin's signed adjustment; a negative one never takes the balance below zero.
    async fn adjust_credits(
        &self,
        user_id: &str,
        amount: i64,
        reason: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<CreditOutcome, StoreError>;
    /// The user's movements, newest first.
    async fn credit_movements(
        &self,
        user_id: &str,
        limit: i64,
        starting_after: Option<&str>,
    ) -> Result<Vec<MovementRow>, StoreError>;
    /// Recomputes every balance from the movements: the users where the balance, the sum of the
    /// movements and the last `balance_after` do not all agree, or a step does not add up.
    async fn check_credits(&self) -> Result<Vec<CreditDisagreement>, StoreError>;
}

pub(crate) const MOVEMENT_COLUMNS: &str =
    "id, user_id, seq, kind, amount, balance_after, reason, order_id, grant_id, actor, metadata, created_at";

/// Who made the ledger's own movements (grants, claw-backs, restores).
pub const SYSTEM_ACTOR: &str = "system";

macro_rules! impl_credit_store {
    ($store:ty, $db:ty) => {
        impl $store {
            /// Adds `delta` to the user's balance under its row lock and returns (balance, seq) of
            /// the movement to write. A negative delta only applies while the balance covers it
            /// (`None`: it does not, or the user has no balance row).
            pub(crate) async fn move_balance(
                tx: &mut sqlx::Transaction<'_, $db>,
                user_id: &str,
                delta: i64,
                now: chrono::DateTime<chrono::Utc>,
                sequence_locked: bool,
            ) -> Result<Option<(i64, i64)>, $crate::store::error::StoreError> {
                // The read view forgets the balance once this transaction is over (`invalidation.rs`).
                $crate::store::invalidation::changed_in_transaction(user_id);
                // Once is enough: the lock is held until the transaction ends.
                if !sequence_locked {
                    Self::lock_sequence(tx, user_id).await?;
                }
                let row: Option<(i64, i64)> = if delta >= 0 {
                    sqlx::query_as(
                        "INSERT INTO credit_balances (user_id, balance, seq, updated_at) VALUES ($1, $2, 1, $3)
                         ON CONFLICT (user_id) DO UPDATE SET balance = credit_balances.balance + excluded.balance,
                                seq = credit_balances.seq + 1, updated_at = excluded.updated_at
                         RETURNING balance, seq",
                    )
                    .bind(user_id)
                    .bind(delta)
                    .bind(now)
                    .fetch_optional(&mut **tx)
                    .await?
                } else {
                    sqlx::query_as(
                        "UPDATE credit_balances SET balance = balance - $2, seq = seq + 1, updated_at = $3
                          WHERE user_id = $1 AND balance >= $2 RETURNING balance, seq",
                    )
                    .bind(user_id)
                    .bind(-delta)
                    .bind(now)
                    .fetch_optional(&mut **tx)
                    .await?
                };
                Ok(row)
            }

            /// Locks the user's outbox sequence row (`write_notices` numbers their facts under it)
            /// until the transaction ends. Every path takes it BEFORE the balance row: the Stripe
            /// event path locks order → sequence → balance, so a debit or adjustment that locked
            /// the balance and then the sequence would deadlock with it on PostgreSQL (40P01).
            /// A write that changes nothing (seq 0 for a user with no facts yet: the first fact is 1).
            pub(crate) async fn lock_sequence(
                tx: &mut sqlx::Transaction<'_, $db>,
                user_id: &str,
            ) -> Result<(), $crate::store::error::StoreError> {
                sqlx::query(
                    "INSERT INTO outbox_sequences (user_id, seq) VALUES ($1, 0)
                     ON CONFLICT (user_id) DO UPDATE SET seq = outbox_sequences.seq",
                )
                .bind(user_id)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// The user's balance, locking its row until the transaction ends (0: no row yet).
            pub(crate) async fn lock_balance(
                tx: &mut sqlx::Transaction<'_, $db>,
                user_id: &str,
            ) -> Result<i64, $crate::store::error::StoreError> {
                Self::lock_sequence(tx, user_id).await?;
                let balance: Option<i64> =
                    sqlx::query_scalar("UPDATE credit_balances SET updated_at = updated_at WHERE user_id = $1 RETURNING balance")
                        .bind(user_id)
                        .fetch_optional(&mut **tx)
                        .await?;
                Ok(balance.unwrap_or(0))
            }

            pub(crate) async fn insert_movement(
                tx: &mut sqlx::Transaction<'_, $db>,
                m: &$crate::store::credits::MovementRow,
                grant_step: Option<i64>,
                idempotency: Option<(&str, &str)>,
                audience: &mut Option<$crate::store::outbox::Audience>,
            ) -> Result<(), $crate::store::error::StoreError> {
                sqlx::query(
                    "INSERT INTO credit_movements (id, user_id, seq, kind, amount, balance_after, reason, order_id, grant_id, grant_step,
                                                   actor, idempotency_key, request_hash, metadata, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                )
                .bind(&m.id)
                .bind(&m.user_id)
                .bind(m.seq)
                .bind(m.kind)
                .bind(m.amount)
                .bind(m.balance_after)
                .bind(&m.reason)
                .bind(&m.order_id)
                .bind(&m.grant_id)
                .bind(grant_step)
                .bind(&m.actor)
                .bind(idempotency.map(|i| i.0))
                .bind(idempotency.map(|i| i.1))
                .bind(&m.metadata)
                .bind(m.created_at)
                .execute(&mut **tx)
                .await
                .map_err($crate::store::accounts::conflict)?;
                let notice = $crate::domain::notifications::credits_notice(
                    &m.id,
                    m.kind.as_str(),
                    m.amount,
                    m.balance_after,
                    &m.reason,
                    m.order_id.as_deref(),
                );
                Self::write_notices(tx, &m.user_id, vec![notice], m.created_at, audience).await?;
                Ok(())
            }

            /// A movement of `delta` that must apply (the caller knows the balance covers it).
            #[allow(clippy::too_many_arguments)]
            async fn grant_movement(
                tx: &mut sqlx::Transaction<'_, $db>,
                order: &$crate::store::payments::OrderRow,
                grant_id: &str,
                step: i64,
                kind: $crate::domain::credits::CreditKind,
                delta: i64,
                reason: String,
                now: chrono::DateTime<chrono::Utc>,
                sequence_locked: bool,
                audience: &mut Option<$crate::store::outbox::Audience>,
            ) -> Result<(), $crate::store::error::StoreError> {
                let (balance, seq) = Self::move_balance(tx, &order.user_id, delta, now, sequence_locked)
                    .await?
                    .ok_or_else(|| $crate::store::error::StoreError::Rule(format!("order {}: the balance does not cover {delta}", order.id)))?;
                let m = $crate::store::credits::MovementRow {
                    id: $crate::domain::account::new_id("cm"),
                    user_id: order.user_id.clone(),
                    seq,
                    kind,
                    amount: delta,
                    balance_after: balance,
                    reason,
                    order_id: Some(order.id.clone()),
                    grant_id: Some(grant_id.to_owned()),
                    actor: $crate::store::credits::SYSTEM_ACTOR.to_owned(),
                    metadata: None,
                    created_at: now,
                };
                Self::insert_movement(tx, &m, Some(step), None, audience).await
            }

            /// What a credits grant's change of state (`from` None: just created) does to the
            /// balance, decided by `domain::credits::grant_credits`, written in the transaction that
            /// changes the grant (under the order's lock); a line for the event's history.
            #[allow(clippy::too_many_arguments)]
            pub(crate) async fn credits_on_grant(
                tx: &mut sqlx::Transaction<'_, $db>,
                order: &$crate::store::payments::OrderRow,
                grant_id: &str,
                granted: Option<i64>,
                from: Option<$crate::domain::orders::GrantState>,
                to: $crate::domain::orders::GrantState,
                now: chrono::DateTime<chrono::Utc>,
                audience: &mut Option<$crate::store::outbox::Audience>,
            ) -> Result<Option<String>, $crate::store::error::StoreError> {
                use $crate::domain::credits::{grant_credits, CreditKind, GrantCredits};
                let granted = granted.unwrap_or(0);
                // A grant being created has nothing clawed back yet (the columns' defaults), and
                // what it adds does not depend on the balance: nothing to read, and its first
                // movement takes the locks (sequence, then balance, as `lock_balance` would; the
                // sequence's already when the order's notice took a number from it).
                let (clawed, step, balance, sequence_locked) = match from {
                    None => (0, 0, 0, $crate::store::outbox::Audience::holds_sequence(audience, &order.user_id)),
                    Some(_) => {
                        let (clawed, step): (i64, i64) =
                            sqlx::query_as("SELECT credits_clawed_back, credits_step FROM grants WHERE id = $1")
                                .bind(grant_id)
                                .fetch_one(&mut **tx)
                                .await?;
                        (clawed, step, Self::lock_balance(tx, &order.user_id).await?, true)
                    }
                };
                let held_reason = match to {
                    $crate::domain::orders::GrantState::Suspended => format!("order {} disputed: unspent credits held", order.id),
                    _ => format!("order {} refunded or dispute lost: unspent credits clawed back", order.id),
                };
                let (clawed_after, step_after, unrecoverable, note) = match grant_credits(from, to, granted, clawed, balance) {
                    GrantCredits::Nothing => {
                        if !sequence_locked {
                            // What a decision writes whatever it decides (the sequence row).
                            Self::lock_balance(tx, &order.user_id).await?;
                        }
                        return Ok(None);
                    }
                    GrantCredits::Grant(n) => {
                        Self::grant_movement(tx, order, grant_id, 0, CreditKind::Grant, n, format!("order {} paid", order.id), now, sequence_locked, audience).await?;
                        (0, 0, 0, format!("{n} credits granted"))
                    }
                    GrantCredits::GrantHeld(n) => {
                        Self::grant_movement(tx, order, grant_id, 0, CreditKind::Grant, n, format!("order {} paid", order.id), now, sequence_locked, audience).await?;
                        Self::grant_movement(tx, order, grant_id, 1, CreditKind::Clawback, -n, held_reason, now, true, audience).await?;
                        (n, 1, 0, format!("{n} credits granted and held"))
                    }
                    GrantCredits::Clawback { amount, unrecoverable } => {
                        let mut step_after = step;
                        if amount > 0 {
                            step_after = step + 1;
                            Self::grant_movement(tx, order, grant_id, step_after, CreditKind::Clawback, -amount, held_reason, now, sequence_locked, audience).await?;
                        }
                        (clawed + amount, step_after, unrecoverable, format!("{amount} credits clawed back, {unrecoverable} already spent"))
                    }
                    GrantCredits::Restore(n) => {
                        let mut step_after = step;
                        if n > 0 {
                            step_after = step + 1;
                            let reason = format!("order {}: dispute won, credits restored", order.id);
                            Self::grant_movement(tx, order, grant_id, step_after, CreditKind::Restore, n, reason, now, sequence_locked, audience).await?;
                        }
                        (0, step_after, 0, format!("{n} credits restored"))
                    }
                };
                // Only what changed is written (a grant's first credits change neither).
                if (clawed_after, step_after) != (clawed, step) {
                    sqlx::query("UPDATE grants SET credits_clawed_back = $2, credits_step = $3 WHERE id = $1")
                        .bind(grant_id)
                        .bind(clawed_after)
                        .bind(step_after)
                        .execute(&mut **tx)
                        .await?;
                }
                if unrecoverable != order.credits_unrecoverable {
                    sqlx::query("UPDATE orders SET credits_unrecoverable = $2 WHERE id = $1")
                        .bind(&order.id)
                        .bind(unrecoverable)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(Some(note))
            }

            /// The debit recorded for (user, caller, key), if any, and the request it was for.
            async fn debit_by_key(
                &self,
                user_id: &str,
                actor: &str,
                key: &str,
            ) -> Result<Option<($crate::store::credits::MovementRow, String)>, $crate::store::error::StoreError> {
                let sql = format!(
                    "SELECT {}, request_hash FROM credit_movements WHERE user_id = $1 AND actor = $2 AND idempotency_key = $3",
                    $crate::store::credits::MOVEMENT_COLUMNS
                );
                let row: Option<DebitByKey> =
                    $crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(user_id).bind(actor).bind(key).fetch_optional(&mut *c).await)?;
                Ok(row.map(|r| (r.movement, r.request_hash.unwrap_or_default())))
            }
        }

        #[derive(sqlx::FromRow)]
        struct DebitByKey {
            #[sqlx(flatten)]
            movement: $crate::store::credits::MovementRow,
            request_hash: Option<String>,
        }

        #[async_trait::async_trait]
        impl $crate::store::credits::CreditStore for $store {
            async fn credit_balance(&self, user_id: &str) -> Result<i64, $crate::store::error::StoreError> {
                let balance: Option<i64> = $crate::store::pool::on_conn!(self, c => sqlx::query_scalar("SELECT balance FROM credit_balances WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_optional(&mut *c)
                    .await)?;
                Ok(balance.unwrap_or(0))
            }

            async fn debit_credits(
                &self,
                d: &$crate::store::credits::NewDebit,
            ) -> Result<$crate::store::credits::CreditOutcome, $crate::store::error::StoreError> {
                use $crate::store::credits::{CreditOutcome, MovementRow};
                let replay = |found: Option<(MovementRow, String)>| {
                    found.map(|(m, hash)| {
                        if $crate::domain::crypto::constant_time_eq(hash.as_bytes(), d.request_hash.as_bytes()) {
                            CreditOutcome::Replayed(m)
                        } else {
                            CreditOutcome::KeyReused
                        }
                    })
                };
                if let Some(seen) = replay(self.debit_by_key(&d.user_id, &d.actor, &d.idempotency_key).await?) {
                    return Ok(seen);
                }
                let written = {
                    let _turn = self.write_turn().await;
                    $crate::store::pool::transaction!(self, tx => {
                        // The user's sequence row, then the conditional UPDATE (see
                        // `lock_sequence`): writes first, they take SQLite's write
                        // lock at once (a read first would make the upgrade fail when another
                        // connection wrote meanwhile) and the row lock on PostgreSQL.
                        let Some((balance, seq)) = Self::move_balance(&mut tx, &d.user_id, -d.amount, d.now, false).await? else {
                            let user: Option<String> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1").bind(&d.user_id).fetch_optional(&mut *tx).await?;
                            return Ok(user.is_none().then_some(CreditOutcome::NoUser));
                        };
                        let m = MovementRow {
                            id: $crate::domain::account::new_id("cm"),
                            user_id: d.user_id.clone(),
                            seq,
                            kind: $crate::domain::credits::CreditKind::Debit,
                            amount: -d.amount,
                            balance_after: balance,
                            reason: d.reason.clone(),
                            order_id: None,
                            grant_id: None,
                            actor: d.actor.clone(),
                            metadata: d.metadata.clone(),
                            created_at: d.now,
                        };
                        match Self::insert_movement(&mut tx, &m, None, Some((&d.idempotency_key, &d.request_hash)), &mut None).await {
                            // Another request with this key committed first (PostgreSQL: its
                            // row became visible once our UPDATE got the lock): ours rolls back.
                            Err($crate::store::error::StoreError::Conflict) => return Ok(None),
                            other => other?,
                        }
                        tx.commit().await?;
                        Ok(Some(CreditOutcome::Moved(m)))
                    })?
                };
                $crate::store::outbox::wake_after_commit();
                if let Some(outcome) = written {
                    return Ok(outcome);
                }
                // Not debited: the balance did not cover it, or the same key won a race.
                if let Some(seen) = replay(self.debit_by_key(&d.user_id, &d.actor, &d.idempotency_key).await?) {
                    return Ok(seen);
                }
                Ok(CreditOutcome::Insufficient { balance: self.credit_balance(&d.user_id).await? })
            }

            async fn adjust_credits(
                &self,
                user_id: &str,
                amount: i64,
                reason: &str,
                actor: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::credits::CreditOutcome, $crate::store::error::StoreError> {
                use $crate::store::credits::{CreditOutcome, MovementRow};
                let _turn = self.write_turn().await;
                $crate::store::pool::transaction!(self, tx => {
                    // A write first (see `debit_credits`): the sequence row, then the balance row, locked.
                    let before = Self::lock_balance(&mut tx, user_id).await?;
                    let user: Option<String> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1").bind(user_id).fetch_optional(&mut *tx).await?;
                    if user.is_none() {
                        return Ok(CreditOutcome::NoUser);
                    }
                    // `lock_balance` took the sequence's lock already.
                    let Some((balance, seq)) = Self::move_balance(&mut tx, user_id, amount, now, true).await? else {
                        return Ok(CreditOutcome::Insufficient { balance: before });
                    };
                    let m = MovementRow {
                        id: $crate::domain::account::new_id("cm"),
                        user_id: user_id.to_owned(),
                        seq,
                        kind: $crate::domain::credits::CreditKind::Adjustment,
                        amount,
                        balance_after: balance,
                        reason: reason.to_owned(),
                        order_id: None,
                        grant_id: None,
                        actor: actor.to_owned(),
                        metadata: None,
                        created_at: now,
                    };
                    Self::insert_movement(&mut tx, &m, None, None, &mut None).await?;
                    tx.commit().await?;
                    Ok(CreditOutcome::Moved(m))
                })
                .inspect(|_| $crate::store::outbox::wake_after_commit())
            }

            async fn credit_movements(
                &self,
                user_id: &str,
                limit: i64,
                starting_after: Option<&str>,
            ) -> Result<Vec<$crate::store::credits::MovementRow>, $crate::store::error::StoreError> {
                let sql = format!(
                    "SELECT {} FROM credit_movements WHERE user_id = $1
                        AND ($2 IS NULL OR seq < (SELECT seq FROM credit_movements WHERE id = $2 AND user_id = $1))
                      ORDER BY seq DESC LIMIT $3",
                    $crate::store::credits::MOVEMENT_COLUMNS
                );
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(user_id).bind(starting_after).bind(limit).fetch_all(&mut *c).await)?)
            }

            async fn check_credits(&self) -> Result<Vec<$crate::store::credits::CreditDisagreement>, $crate::store::error::StoreError> {
                // One statement: one snapshot on both engines, so a movement written meanwhile
                // cannot look like a disagreement.
                let rows: Vec<$crate::store::credits::CreditDisagreement> = $crate::store::pool::on_conn!(self, c => sqlx::query_as(
                    "SELECT u.user_id,
                            COALESCE((SELECT b.balance FROM credit_balances b WHERE b.user_id = u.user_id), 0) AS balance,
                            COALESCE((SELECT CAST(SUM(m.amount) AS BIGINT) FROM credit_movements m WHERE m.user_id = u.user_id), 0) AS total,
                            COALESCE((SELECT m.balance_after FROM credit_movements m WHERE m.user_id = u.user_id ORDER BY m.seq DESC LIMIT 1), 0)
                                AS last_balance_after,
                            COALESCE((SELECT COUNT(*) FROM (SELECT balance_after, SUM(amount) OVER (ORDER BY seq) AS running
                                                              FROM credit_movements r WHERE r.user_id = u.user_id) s
                                       WHERE s.running <> s.balance_after), 0) AS broken_steps
                       FROM (SELECT user_id FROM credit_balances UNION SELECT user_id FROM credit_movements) u
                      ORDER BY u.user_id",
                )
                .fetch_all(&mut *c)
                .await)?;
                Ok(rows
                    .into_iter()
                    .filter(|r| !(r.balance == r.total && r.total == r.last_balance_after && r.broken_steps == 0))
                    .collect())
            }
        }
    };
}

pub(crate) use impl_credit_store;
