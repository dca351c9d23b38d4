//! Catalog, orders, grants, refunds and idempotency keys, one SQL text for both engines (see
//! `accounts.rs`). The rules live in `domain::orders`; this file only loads an order under a lock,
//! hands its facts to the domain, and writes back what the domain decided, in the caller's
//! transaction (the webhook's ledger insert, a replay, or the success page).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::error::StoreError;
use crate::domain::orders::{
    Applied, DisputeState, GrantKind, GrantState, OrderFacts, OrderFlow, OrderRef, OrderStatus, PaymentFact, RefundRefused,
    RefundStatus,
};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ProductRow {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub active: bool,
    pub version: i64,
    pub amount: i64,
    pub currency: String,
    pub stripe_price_id: Option<String>,
    pub grant_spec: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderRow {
    pub id: String,
    pub user_id: String,
    pub product_id: String,
    pub product_version: i64,
    pub quantity: i64,
    pub amount: i64,
    pub currency: String,
    pub grant_spec: String,
    pub flow: OrderFlow,
    pub status: OrderStatus,
    pub checkout_session_id: Option<String>,
    pub payment_intent_id: Option<String>,
    pub charge_id: Option<String>,
    pub checkout_url: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub processing: bool,
    pub failed: bool,
    pub expired: bool,
    pub canceled: bool,
    pub amount_refunded: i64,
    pub dispute: Option<DisputeState>,
    pub flag: Option<String>,
    /// Credits a refund or lost dispute could not claw back: already spent.
    pub credits_unrecoverable: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `stripe` or `nowpayments` (whose invoice id is kept in `checkout_session_id`).
    pub provider: String,
}

impl OrderRow {
    pub fn facts(&self) -> OrderFacts {
        OrderFacts {
            amount: self.amount,
            currency: self.currency.clone(),
            paid_at: self.paid_at,
            processing: self.processing,
            failed: self.failed,
            expired: self.expired,
            canceled: self.canceled,
            amount_refunded: self.amount_refunded,
            dispute: self.dispute,
            flag: self.flag.clone(),
            payment_intent_id: self.payment_intent_id.clone(),
            charge_id: self.charge_id.clone(),
            checkout_flow: self.flow == OrderFlow::Checkout,
        }
    }

    /// Whether the ids `r` carries agree with the ids this order already holds. An event found by
    /// `metadata.order_id` or `client_reference_id` must also be about this order's own session or
    /// PaymentIntent, so a payment made elsewhere (a Payment Link, another session) that names an
    /// order cannot touch it; and it must come from the order's own provider.
    pub fn agrees_with(&self, r: &OrderRef) -> bool {
        let same = |ours: &Option<String>, theirs: &Option<String>| match (ours, theirs) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let session_ok = match &r.checkout_session_id {
            Some(theirs) => self.checkout_session_id.as_deref() == Some(theirs.as_str()),
            None => true,
        };
        let order_ok = !r.both_named || r.order_id.as_deref() == Some(self.id.as_str());
        let provider_ok = self.provider == r.provider();
        provider_ok
            && order_ok
            && session_ok
            && same(&self.payment_intent_id, &r.payment_intent_id)
            && same(&self.charge_id, &r.charge_id)
    }

    pub fn status(&self) -> OrderStatus {
        self.status
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GrantRow {
    pub id: String,
    pub order_id: String,
    pub user_id: String,
    pub kind: GrantKind,
    pub feature: Option<String>,
    pub credits: Option<i64>,
    pub status: GrantState,
    pub starts_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RefundRow {
    pub id: String,
    pub order_id: String,
    pub stripe_refund_id: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub reason: Option<String>,
    pub status: RefundStatus,
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
}

/// What a refund request should become, given the locked order and its refunds so far.
pub type RefundDecision = dyn Fn(&OrderRow, &[RefundRow]) -> Result<RefundPick, RefundRefused> + Send + Sync;

pub enum RefundPick {
    /// This request is a retry of a refund already recorded.
    Existing(RefundRow),
    New(RefundRow),
}

pub enum Reserved {
    NoOrder,
    /// A refund with this id exists already (a retry with the same Idempotency-Key).
    Existing(RefundRow),
    Refused(RefundRefused),
    New(RefundRow),
}

/// The start of an idempotent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyStart {
    /// First use of the key: go ahead, then `idempotency_finish`.
    New,
    /// Seen with this body: the first response.
    Replay { status: u16, body: Vec<u8> },
    /// Seen with another body.
    Mismatch,
    /// The first request with this key has not finished.
    InProgress,
}

#[async_trait]
pub trait PaymentStore: Send + Sync {
    async fn insert_product(&self, product: &ProductRow) -> Result<(), StoreError>;
    /// Writes `product` if the stored one is still `expected` (same version and `updated_at`; else
    /// `Conflict`, so concurrent edits never overwrite each other); when `new_version`, also
    /// records its price as that version.
    async fn update_product(&self, product: &ProductRow, expected: &ProductRow, new_version: bool) -> Result<(), StoreError>;
    async fn product(&self, id: &str) -> Result<Option<ProductRow>, StoreError>;
    /// Newest first.
    async fn list_products(
        &self,
        active_only: bool,
        limit: i64,
        starting_after: Option<&str>,
    ) -> Result<Vec<ProductRow>, StoreError>;

    async fn insert_order(&self, order: &OrderRow) -> Result<(), StoreError>;
    /// Records the provider's ids for a pending order; `Conflict` when another order holds them.
    async fn set_order_provider_ids(
        &self,
        order_id: &str,
        checkout_session_id: Option<&str>,
        payment_intent_id: Option<&str>,
        checkout_url: Option<&str>,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    async fn order(&self, id: &str) -> Result<Option<OrderRow>, StoreError>;
    /// Newest first; every user's when `user_id` is None.
    async fn list_orders(
        &self,
        user_id: Option<&str>,
        limit: i64,
        starting_after: Option<&str>,
    ) -> Result<Vec<OrderRow>, StoreError>;
    /// Applies `fact` to the order `order` names, in its own transaction (the success-page path).
    async fn apply_fact(&self, order: &OrderRef, fact: &PaymentFact, now: DateTime<Utc>) -> Result<Applied, StoreError>;

    async fn grants_for_user(&self, user_id: &str) -> Result<Vec<GrantRow>, StoreError>;

    async fn set_refund_result(&self, id: &str, stripe_refund_id: Option<&str>, status: RefundStatus) -> Result<(), StoreError>;
    /// Under the order's lock, what `decide` makes of the order and its refunds so far: an existing
    /// refund (a retry), or a new one, inserted. Concurrent refunds of one order take turns, so
    /// together they can never exceed what was paid.
    async fn reserve_refund(&self, order_id: &str, decide: &RefundDecision) -> Result<Reserved, StoreError>;
    async fn refunds_for_order(&self, order_id: &str) -> Result<Vec<RefundRow>, StoreError>;

    async fn idempotency_start(
        &self,
        principal: &str,
        key: &str,
        request_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<IdempotencyStart, StoreError>;
    async fn idempotency_finish(&self, principal: &str, key: &str, status: u16, body: &[u8]) -> Result<(), StoreError>;
    /// Forgets every key older than `before`; how many.
    async fn sweep_idempotency(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Forgets an unfinished key (the request failed), so a retry can run.
    async fn idempotency_abandon(&self, principal: &str, key: &str) -> Result<(), StoreError>;
}

/// The order `apply_locked` locks, with what its first statement also read.
#[derive(sqlx::FromRow)]
pub(crate) struct LockedOrder {
    #[sqlx(flatten)]
    pub order: OrderRow,
    /// Another order holding the event's PaymentIntent, if any.
    pub payment_intent_holder: Option<String>,
    /// The name of the order's product (for its notices), if the product still exists.
    pub product_name: Option<String>,
}

pub(crate) const PRODUCT_COLUMNS: &str =
    "id, name, description, active, version, amount, currency, stripe_price_id, grant_spec, created_at, updated_at";
pub(crate) const ORDER_COLUMNS: &str = "id, user_id, product_id, product_version, quantity, amount, currency, grant_spec, flow, status, \
     checkout_session_id, payment_intent_id, charge_id, checkout_url, expires_at, paid_at, processing, failed, expired, canceled, \
     amount_refunded, dispute, flag, credits_unrecoverable, created_at, updated_at, provider";
pub(crate) const GRANT_COLUMNS: &str =
    "id, order_id, user_id, kind, feature, credits, status, starts_at, expires_at, created_at, updated_at";
pub(crate) const REFUND_COLUMNS: &str =
    "id, order_id, stripe_refund_id, amount, currency, reason, status, requested_by, created_at";

/// How long an Idempotency-Key is remembered.
pub const IDEMPOTENCY_TTL_HOURS: i64 = 24;
/// An unfinished key older than this belongs to a request that died (longer than any timeout).
pub const IDEMPOTENCY_ABANDONED_SECS: i64 = 120;

macro_rules! impl_payment_store {
    ($store:ty, $db:ty) => {
        impl $store {
            /// Locks the order `r` names (the UPDATE takes the row lock on PostgreSQL and the write
            /// lock on SQLite in one statement), applies `fact`, writes back the facts, the derived
            /// status and the grant. Runs inside the caller's transaction.
            pub(crate) async fn apply_locked(
                tx: &mut sqlx::Transaction<'_, $db>,
                r: &$crate::domain::orders::OrderRef,
                fact: &$crate::domain::orders::PaymentFact,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::domain::orders::Applied, $crate::store::error::StoreError> {
                use $crate::domain::orders::Applied;
                use $crate::store::payments::{LockedOrder, ORDER_COLUMNS};
                // The same statement reads what the steps below need of other rows: the order
                // already holding the event's PaymentIntent, and the product's name for notices
                // (each one statement fewer per event). Which orders it finds is what
                // `ledger::NamedOrders::names` predicts for a batch: keep the two alike.
                let sql = format!(
                    "UPDATE orders SET updated_at = updated_at WHERE id = (
                        SELECT id FROM orders
                         WHERE id = $1 OR checkout_session_id = $2 OR payment_intent_id = $3 OR charge_id = $4
                         ORDER BY CASE WHEN id = $1 THEN 0 WHEN checkout_session_id = $2 THEN 1 WHEN payment_intent_id = $3 THEN 2 ELSE 3 END
                         LIMIT 1)
                     RETURNING {ORDER_COLUMNS},
                        (SELECT holder.id FROM orders holder WHERE holder.payment_intent_id = $3 AND holder.id <> orders.id LIMIT 1) AS payment_intent_holder,
                        (SELECT products.name FROM products WHERE products.id = orders.product_id) AS product_name"
                );
                let row: Option<LockedOrder> = sqlx::query_as(&sql)
                    .bind(&r.order_id)
                    .bind(&r.checkout_session_id)
                    .bind(&r.payment_intent_id)
                    .bind(&r.charge_id)
                    .fetch_optional(&mut **tx)
                    .await?;
                let Some(LockedOrder { order, payment_intent_holder, product_name }) = row else {
                    return Ok(Applied::NoOrder);
                };
                if !order.agrees_with(r) {
                    return Ok(Applied::Disagrees { order_id: order.id });
                }
                // A payment another order already holds pays nothing here (the column is UNIQUE;
                // asking first keeps the transaction usable and the answer a plain "not applied").
                // The holder is read by the locking statement, with its snapshot: on PostgreSQL, a
                // holder committed while this statement waited for the order's lock is not seen,
                // and the UNIQUE constraint refuses the write instead (the batch is run again with
                // savepoints, or the event answered 500 and retried; either ends "not applied").
                if order.payment_intent_id.is_none() && r.payment_intent_id.is_some() && payment_intent_holder.is_some() {
                    return Ok(Applied::Disagrees { order_id: order.id });
                }
                let before = order.status();
                let before_facts = order.facts();
                let mut facts = order.facts();
                let note = facts.apply(fact, now);
                let after = before.transition(facts.status()).map_err(|e| $crate::store::error::StoreError::Rule(e.to_string()))?;
                sqlx::query(
                    "UPDATE orders SET status = $2, paid_at = $3, processing = $4, failed = $5, expired = $6, canceled = $7,
                            amount_refunded = $8, dispute = $9, flag = $10, payment_intent_id = $11, charge_id = $12, updated_at = $13
                      WHERE id = $1",
                )
                .bind(&order.id)
                .bind(after)
                .bind(facts.paid_at)
                .bind(facts.processing)
                .bind(facts.failed)
                .bind(facts.expired)
                .bind(facts.canceled)
                .bind(facts.amount_refunded)
                .bind(facts.dispute)
                .bind(&facts.flag)
                .bind(&facts.payment_intent_id)
                .bind(&facts.charge_id)
                .bind(now)
                .execute(&mut **tx)
                .await
                .map_err($crate::store::accounts::conflict)?;
                // Who the user's notices go to, read once for all the notices this event makes.
                let mut audience = None;
                Self::write_order_notices(tx, &order, product_name.as_deref(), &before_facts, &facts, now, &mut audience).await?;
                let grant_note = Self::reconcile_grant(tx, &order, &facts, before_facts.paid_at.is_none(), now, &mut audience).await?;
                let note = match grant_note {
                    Some(g) => format!("{note}; {g}"),
                    None => note,
                };
                Ok(Applied::Order { order_id: order.id, status: after, note })
            }

            /// Makes the order's grant what its facts say (`domain::orders::reconcile_grant`
            /// decides): created once (UNIQUE order_id), then only its state changes. `first_paid`:
            /// the order was not paid before this fact, so it most likely has no grant yet.
            async fn reconcile_grant(
                tx: &mut sqlx::Transaction<'_, $db>,
                order: &$crate::store::payments::OrderRow,
                facts: &$crate::domain::orders::OrderFacts,
                first_paid: bool,
                now: chrono::DateTime<chrono::Utc>,
                audience: &mut Option<$crate::store::outbox::Audience>,
            ) -> Result<Option<String>, $crate::store::error::StoreError> {
                use $crate::domain::catalog::Grant;
                use $crate::domain::orders::{reconcile_grant, GrantAction};
                use $crate::store::payments::{GrantRow, GRANT_COLUMNS};
                if facts.grant_state().is_none() {
                    return Ok(None);
                }
                let grant = Grant::from_json(&order.grant_spec);
                // The order's first payment: the grant an order without one gets is created at
                // once, without reading first (one statement fewer). Its insert does nothing when a
                // grant exists after all; that one is then read, and the decision taken with it.
                if first_paid {
                    if let Ok(GrantAction::Create(terms, state)) = reconcile_grant(facts, None, grant.as_ref(), now) {
                        if let Some(note) = Self::create_grant(tx, order, facts, &terms, state, now, audience).await? {
                            return Ok(Some(note));
                        }
                    }
                }
                let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE order_id = $1");
                let existing: Option<GrantRow> = sqlx::query_as(&sql).bind(&order.id).fetch_optional(&mut **tx).await?;
                let action = reconcile_grant(facts, existing.as_ref().map(|g| g.status), grant.as_ref(), now)
                    .map_err(|e| $crate::store::error::StoreError::Rule(format!("order {}: {e}", order.id)))?;
                if !matches!(action, GrantAction::Keep) {
                    // The read view forgets the user's entitlements once this transaction is
                    // over (`invalidation.rs`: every transaction's body collects its own users).
                    $crate::store::invalidation::changed_in_transaction(&order.user_id);
                }
                match (action, existing) {
                    (GrantAction::Keep, _) => Ok(None),
                    (GrantAction::SetState(want), Some(g)) => {
                        sqlx::query("UPDATE grants SET status = $2, updated_at = $3 WHERE id = $1")
                            .bind(&g.id)
                            .bind(want)
                            .bind(now)
                            .execute(&mut **tx)
                            .await?;
                        Self::write_grant_notice(tx, &g, Some(g.status), want, facts, now, audience).await?;
                        let mut note = format!("grant {} {}", g.id, want.as_str());
                        if g.kind == $crate::domain::orders::GrantKind::Credits {
                            if let Some(credits) = Self::credits_on_grant(tx, order, &g.id, g.credits, Some(g.status), want, now, audience).await? {
                                note = format!("{note}; {credits}");
                            }
                        }
                        Self::revoke_licences_of_grant(tx, &g.id, want, facts, now).await?;
                        Ok(Some(note))
                    }
                    (GrantAction::SetState(_), None) => Ok(None),
                    (GrantAction::Create(terms, state), _) => Self::create_grant(tx, order, facts, &terms, state, now, audience).await,
                }
            }

            /// Creates the order's grant with `terms` in `state`, its notice and its credits; the
            /// line for the event's history, `None` when the order has a grant already.
            async fn create_grant(
                tx: &mut sqlx::Transaction<'_, $db>,
                order: &$crate::store::payments::OrderRow,
                facts: &$crate::domain::orders::OrderFacts,
                terms: &$crate::domain::orders::GrantTerms,
                state: $crate::domain::orders::GrantState,
                now: chrono::DateTime<chrono::Utc>,
                audience: &mut Option<$crate::store::outbox::Audience>,
            ) -> Result<Option<String>, $crate::store::error::StoreError> {
                use $crate::store::payments::GrantRow;
                // The read view forgets the user's entitlements once this transaction is over.
                $crate::store::invalidation::changed_in_transaction(&order.user_id);
                let id = $crate::domain::account::new_id("ent");
                let inserted = sqlx::query(
                    "INSERT INTO grants (id, order_id, user_id, kind, feature, credits, status, starts_at, expires_at, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(&id)
                .bind(&order.id)
                .bind(&order.user_id)
                .bind(terms.kind)
                .bind(&terms.feature)
                .bind(terms.credits)
                .bind(state)
                .bind(terms.starts_at)
                .bind(terms.expires_at)
                .bind(now)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if inserted != 1 {
                    return Ok(None);
                }
                let created = GrantRow {
                    id: id.clone(),
                    order_id: order.id.clone(),
                    user_id: order.user_id.clone(),
                    kind: terms.kind,
                    feature: terms.feature.clone(),
                    credits: terms.credits,
                    status: state,
                    starts_at: terms.starts_at,
                    expires_at: terms.expires_at,
                    created_at: now,
                    updated_at: now,
                };
                Self::write_grant_notice(tx, &created, None, state, facts, now, audience).await?;
                let mut note = format!("granted {id}");
                if terms.kind == $crate::domain::orders::GrantKind::Credits {
                    if let Some(credits) = Self::credits_on_grant(tx, order, &id, terms.credits, None, state, now, audience).await? {
                        note = format!("{note}; {credits}");
                    }
                }
                Ok(Some(note))
            }
        }

        impl $store {
            /// The outbox rows an order's change makes (`domain::notifications` decides which).
            async fn write_order_notices(
                tx: &mut sqlx::Transaction<'_, $db>,
                order: &$crate::store::payments::OrderRow,
                product_name: Option<&str>,
                before: &$crate::domain::orders::OrderFacts,
                after: &$crate::domain::orders::OrderFacts,
                now: chrono::DateTime<chrono::Utc>,
                audience: &mut Option<$crate::store::outbox::Audience>,
            ) -> Result<(), $crate::store::error::StoreError> {
                use $crate::domain::notifications::{order_notices, OrderView};
                let view = OrderView { id: &order.id, product_id: &order.product_id, product_name, amount: order.amount, currency: &order.currency };
                Self::write_notices(tx, &order.user_id, order_notices(&view, before, after), now, audience).await?;
                Ok(())
            }

            /// The outbox rows a grant's change of state makes.
            async fn write_grant_notice(
                tx: &mut sqlx::Transaction<'_, $db>,
                g: &$crate::store::payments::GrantRow,
                from: Option<$crate::domain::orders::GrantState>,
                to: $crate::domain::orders::GrantState,
                facts: &$crate::domain::orders::OrderFacts,
                now: chrono::DateTime<chrono::Utc>,
                audience: &mut Option<$crate::store::outbox::Audience>,
            ) -> Result<(), $crate::store::error::StoreError> {
                use $crate::domain::notifications::{grant_notice, GrantView};
                let view = GrantView {
                    id: &g.id,
                    order_id: &g.order_id,
                    kind: g.kind.as_str(),
                    feature: g.feature.as_deref(),
                    credits: g.credits,
                    starts_at: g.starts_at,
                    expires_at: g.expires_at,
                };
                if let Some(n) = grant_notice(&view, from, to, facts) {
                    Self::write_notices(tx, &g.user_id, vec![n], now, audience).await?;
                }
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::payments::PaymentStore for $store {
            async fn insert_product(&self, p: &$crate::store::payments::ProductRow) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::transaction!(self, tx => {
                    sqlx::query(
                        "INSERT INTO products (id, name, description, active, version, amount, currency, stripe_price_id, grant_spec, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(&p.id)
                    .bind(&p.name)
                    .bind(&p.description)
                    .bind(p.active)
                    .bind(p.version)
                    .bind(p.amount)
                    .bind(&p.currency)
                    .bind(&p.stripe_price_id)
                    .bind(&p.grant_spec)
                    .bind(p.created_at)
                    .bind(p.updated_at)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::store::accounts::conflict)?;
                    Self::insert_version(&mut tx, p).await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            async fn update_product(
                &self,
                p: &$crate::store::payments::ProductRow,
                expected: &$crate::store::payments::ProductRow,
                new_version: bool,
            ) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::transaction!(self, tx => {
                    let updated = sqlx::query(
                        "UPDATE products SET name = $2, description = $3, active = $4, version = $5, amount = $6, currency = $7,
                                stripe_price_id = $8, grant_spec = $9, updated_at = $10
                          WHERE id = $1 AND version = $11 AND updated_at = $12",
                    )
                    .bind(&p.id)
                    .bind(&p.name)
                    .bind(&p.description)
                    .bind(p.active)
                    .bind(p.version)
                    .bind(p.amount)
                    .bind(&p.currency)
                    .bind(&p.stripe_price_id)
                    .bind(&p.grant_spec)
                    .bind(p.updated_at)
                    .bind(expected.version)
                    .bind(expected.updated_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if updated == 0 {
                        return Err($crate::store::error::StoreError::Conflict);
                    }
                    if new_version {
                        Self::insert_version(&mut tx, p).await?;
                    }
                    tx.commit().await?;
                    Ok(())
                })
            }

            async fn product(&self, id: &str) -> Result<Option<$crate::store::payments::ProductRow>, $crate::store::error::StoreError> {
                let sql = format!("SELECT {} FROM products WHERE id = $1", $crate::store::payments::PRODUCT_COLUMNS);
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(id).fetch_optional(&mut *c).await)?)
            }

            async fn list_products(
                &self,
                active_only: bool,
                limit: i64,
                starting_after: Option<&str>,
            ) -> Result<Vec<$crate::store::payments::ProductRow>, $crate::store::error::StoreError> {
                let sql = format!(
                    "SELECT {} FROM products WHERE ($1 = FALSE OR active = TRUE) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
                    $crate::store::payments::PRODUCT_COLUMNS
                );
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(active_only).bind(starting_after).bind(limit).fetch_all(&mut *c).await)?)
            }

            async fn insert_order(&self, o: &$crate::store::payments::OrderRow) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "INSERT INTO orders (id, user_id, product_id, product_version, quantity, amount, currency, grant_spec, flow, status, created_at, updated_at, provider)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(&o.id)
                .bind(&o.user_id)
                .bind(&o.product_id)
                .bind(o.product_version)
                .bind(o.quantity)
                .bind(o.amount)
                .bind(&o.currency)
                .bind(&o.grant_spec)
                .bind(&o.flow)
                .bind(&o.status)
                .bind(o.created_at)
                .bind(o.updated_at)
                .bind(&o.provider)
                .execute(&mut *c)
                .await)
                .map_err($crate::store::accounts::conflict)?;
                Ok(())
            }

            async fn set_order_provider_ids(
                &self,
                order_id: &str,
                checkout_session_id: Option<&str>,
                payment_intent_id: Option<&str>,
                checkout_url: Option<&str>,
                expires_at: Option<chrono::DateTime<chrono::Utc>>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "UPDATE orders SET checkout_session_id = COALESCE($2, checkout_session_id), payment_intent_id = COALESCE($3, payment_intent_id),
                            checkout_url = COALESCE($4, checkout_url), expires_at = COALESCE($5, expires_at), updated_at = $6
                      WHERE id = $1",
                )
                .bind(order_id)
                .bind(checkout_session_id)
                .bind(payment_intent_id)
                .bind(checkout_url)
                .bind(expires_at)
                .bind(now)
                .execute(&mut *c)
                .await)
                .map_err($crate::store::accounts::conflict)?;
                Ok(())
            }

            async fn order(&self, id: &str) -> Result<Option<$crate::store::payments::OrderRow>, $crate::store::error::StoreError> {
                let sql = format!("SELECT {} FROM orders WHERE id = $1", $crate::store::payments::ORDER_COLUMNS);
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(id).fetch_optional(&mut *c).await)?)
            }

            async fn list_orders(
                &self,
                user_id: Option<&str>,
                limit: i64,
                starting_after: Option<&str>,
            ) -> Result<Vec<$crate::store::payments::OrderRow>, $crate::store::error::StoreError> {
                let sql = format!(
                    "SELECT {} FROM orders WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
                    $crate::store::payments::ORDER_COLUMNS
                );
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(user_id).bind(starting_after).bind(limit).fetch_all(&mut *c).await)?)
            }

            async fn apply_fact(
                &self,
                r: &$crate::domain::orders::OrderRef,
                fact: &$crate::domain::orders::PaymentFact,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::domain::orders::Applied, $crate::store::error::StoreError> {
                let _turn = self.write_turn().await;
                let applied = $crate::store::pool::transaction!(self, tx => {
                    let applied = Self::apply_locked(&mut tx, r, fact, now).await?;
                    tx.commit().await?;
                    Ok(applied)
                });
                $crate::store::outbox::wake_after_commit();
                applied
            }

            async fn grants_for_user(&self, user_id: &str) -> Result<Vec<$crate::store::payments::GrantRow>, $crate::store::error::StoreError> {
                let sql = format!("SELECT {} FROM grants WHERE user_id = $1 ORDER BY id", $crate::store::payments::GRANT_COLUMNS);
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(user_id).fetch_all(&mut *c).await)?)
            }

            async fn reserve_refund(
                &self,
                order_id: &str,
                decide: &$crate::store::payments::RefundDecision,
            ) -> Result<$crate::store::payments::Reserved, $crate::store::error::StoreError> {
                use $crate::store::payments::{OrderRow, RefundRow, Reserved, ORDER_COLUMNS, REFUND_COLUMNS};
                let _turn = self.write_turn().await;
                $crate::store::pool::transaction!(self, tx => {
                    let sql = format!("UPDATE orders SET updated_at = updated_at WHERE id = $1 RETURNING {ORDER_COLUMNS}");
                    let Some(order): Option<OrderRow> = sqlx::query_as(&sql).bind(order_id).fetch_optional(&mut *tx).await? else {
                        return Ok(Reserved::NoOrder);
                    };
                    let sql = format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE order_id = $1 ORDER BY id");
                    let refunds: Vec<RefundRow> = sqlx::query_as(&sql).bind(order_id).fetch_all(&mut *tx).await?;
                    let row = match decide(&order, &refunds) {
                        Ok($crate::store::payments::RefundPick::Existing(row)) => return Ok(Reserved::Existing(row)),
                        Ok($crate::store::payments::RefundPick::New(row)) => row,
                        Err(e) => return Ok(Reserved::Refused(e)),
                    };
                    sqlx::query(
                        "INSERT INTO refunds (id, order_id, stripe_refund_id, amount, currency, reason, status, requested_by, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .bind(&row.id)
                    .bind(&row.order_id)
                    .bind(&row.stripe_refund_id)
                    .bind(row.amount)
                    .bind(&row.currency)
                    .bind(&row.reason)
                    .bind(&row.status)
                    .bind(&row.requested_by)
                    .bind(row.created_at)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::store::accounts::conflict)?;
                    tx.commit().await?;
                    Ok(Reserved::New(row))
                })
            }

            async fn set_refund_result(&self, id: &str, stripe_refund_id: Option<&str>, status: $crate::domain::orders::RefundStatus) -> Result<(), $crate::store::error::StoreError> {
                // A failure never overwrites a refund Stripe has confirmed (a concurrent retry's).
                $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "UPDATE refunds SET stripe_refund_id = COALESCE($2, stripe_refund_id), status = $3
                      WHERE id = $1 AND ($2 IS NOT NULL OR stripe_refund_id IS NULL)",
                )
                    .bind(id)
                    .bind(stripe_refund_id)
                    .bind(status)
                    .execute(&mut *c)
                    .await)
                    .map_err($crate::store::accounts::conflict)?;
                Ok(())
            }

            async fn refunds_for_order(&self, order_id: &str) -> Result<Vec<$crate::store::payments::RefundRow>, $crate::store::error::StoreError> {
                let sql = format!("SELECT {} FROM refunds WHERE order_id = $1 ORDER BY id", $crate::store::payments::REFUND_COLUMNS);
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(order_id).fetch_all(&mut *c).await)?)
            }

            async fn idempotency_start(
                &self,
                principal: &str,
                key: &str,
                request_hash: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::payments::IdempotencyStart, $crate::store::error::StoreError> {
                use $crate::store::payments::IdempotencyStart;
                for _ in 0..2 {
                    let inserted = $crate::store::pool::on_conn!(self, c => sqlx::query(
                        "INSERT INTO idempotency_keys (principal, key, request_hash, created_at) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (principal, key) DO NOTHING",
                    )
                    .bind(principal)
                    .bind(key)
                    .bind(request_hash)
                    .bind(now)
                    .execute(&mut *c)
                    .await)?
                    .rows_affected();
                    if inserted == 1 {
                        return Ok(IdempotencyStart::New);
                    }
                    let row: Option<(String, Option<i64>, Option<Vec<u8>>, chrono::DateTime<chrono::Utc>)> = $crate::store::pool::on_conn!(self, c => sqlx::query_as(
                        "SELECT request_hash, status_code, response, created_at FROM idempotency_keys WHERE principal = $1 AND key = $2",
                    )
                    .bind(principal)
                    .bind(key)
                    .fetch_optional(&mut *c)
                    .await)?;
                    let Some((hash, status, body, created_at)) = row else { continue };
                    let age = now - created_at;
                    let abandoned = status.is_none() && age > chrono::Duration::seconds($crate::store::payments::IDEMPOTENCY_ABANDONED_SECS);
                    if age > chrono::Duration::hours($crate::store::payments::IDEMPOTENCY_TTL_HOURS) || abandoned {
                        // Expired, or its request died before answering (a crash): forget that
                        // exact row and start again.
                        $crate::store::pool::on_conn!(self, c => sqlx::query("DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND created_at = $3")
                            .bind(principal)
                            .bind(key)
                            .bind(created_at)
                            .execute(&mut *c)
                            .await)?;
                        continue;
                    }
                    if hash != request_hash {
                        return Ok(IdempotencyStart::Mismatch);
                    }
                    return Ok(match (status, body) {
                        (Some(status), Some(body)) => IdempotencyStart::Replay { status: u16::try_from(status).unwrap_or(500), body },
                        _ => IdempotencyStart::InProgress,
                    });
                }
                Ok(IdempotencyStart::InProgress)
            }

            async fn idempotency_finish(&self, principal: &str, key: &str, status: u16, body: &[u8]) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::on_conn!(self, c => sqlx::query("UPDATE idempotency_keys SET status_code = $3, response = $4 WHERE principal = $1 AND key = $2")
                    .bind(principal)
                    .bind(key)
                    .bind(i64::from(status))
                    .bind(body)
                    .execute(&mut *c)
                    .await)?;
                Ok(())
            }

            async fn sweep_idempotency(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, $crate::store::error::StoreError> {
                // Both engines store UTC; SQLite's RFC 3339 text in one offset sorts as time does.
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1").bind(before).execute(&mut *c).await)?.rows_affected())
            }

            async fn idempotency_abandon(&self, principal: &str, key: &str) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::on_conn!(self, c => sqlx::query("DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND status_code IS NULL")
                    .bind(principal)
                    .bind(key)
                    .execute(&mut *c)
                    .await)?;
                Ok(())
            }
        }

        impl $store {
            async fn insert_version(
                tx: &mut sqlx::Transaction<'_, $db>,
                p: &$crate::store::payments::ProductRow,
            ) -> Result<(), $crate::store::error::StoreError> {
                sqlx::query(
                    "INSERT INTO product_versions (product_id, version, amount, currency, stripe_price_id, grant_spec, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&p.id)
                .bind(p.version)
                .bind(p.amount)
                .bind(&p.currency)
                .bind(&p.stripe_price_id)
                .bind(&p.grant_spec)
                .bind(p.updated_at)
                .execute(&mut **tx)
                .await
                .map_err($crate::store::accounts::conflict)?;
                Ok(())
            }
        }
    };
}

pub(crate) use impl_payment_store;
