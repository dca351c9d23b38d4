//! Orders and their state machine. Stripe's events arrive in any order, any number of times, so an
//! order keeps the *facts* Stripe has told it (paid, failed, expired, refunded so far, dispute) and
//! its status is derived from them. Facts only accumulate, which makes applying an event
//! idempotent and order-independent; `OrderStatus::transition` is the guard that refuses any
//! move the machine does not allow.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Processing,
    Paid,
    Failed,
    Expired,
    Canceled,
    PartiallyRefunded,
    Refunded,
    Disputed,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 9] = [
        OrderStatus::Pending,
        OrderStatus::Processing,
        OrderStatus::Paid,
        OrderStatus::Failed,
        OrderStatus::Expired,
        OrderStatus::Canceled,
        OrderStatus::PartiallyRefunded,
        OrderStatus::Refunded,
        OrderStatus::Disputed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Processing => "processing",
            OrderStatus::Paid => "paid",
            OrderStatus::Failed => "failed",
            OrderStatus::Expired => "expired",
            OrderStatus::Canceled => "canceled",
            OrderStatus::PartiallyRefunded => "partially_refunded",
            OrderStatus::Refunded => "refunded",
            OrderStatus::Disputed => "disputed",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the machine allows moving from `self` to `to`. Nothing returns to `pending`; money
    /// taken is never "un-paid" except by a refund or a dispute; `refunded` is final.
    pub fn transition(self, to: OrderStatus) -> Result<OrderStatus, IllegalTransition> {
        use OrderStatus::*;
        let allowed = self == to
            || match self {
                Pending => to != Pending,
                // A delayed payment settles, fails, or is refunded/disputed.
                Processing => matches!(to, Paid | Failed | PartiallyRefunded | Refunded | Disputed),
                // A failed, expired or canceled attempt can still turn out paid (a retried
                // PaymentIntent, a late completion) or be refunded.
                Failed | Expired | Canceled => to != Pending,
                Paid => matches!(to, PartiallyRefunded | Refunded | Disputed),
                PartiallyRefunded => matches!(to, Refunded | Disputed),
                // A won dispute restores what the order was.
                Disputed => matches!(to, Paid | PartiallyRefunded | Refunded),
                Refunded => false,
            };
        if allowed {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an order cannot go from {} to {}", from.as_str(), to.as_str())]
pub struct IllegalTransition {
    pub from: OrderStatus,
    pub to: OrderStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisputeState {
    Open,
    Won,
    Lost,
}

impl DisputeState {
    pub fn as_str(self) -> &'static str {
        match self {
            DisputeState::Open => "open",
            DisputeState::Won => "won",
            DisputeState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<DisputeState> {
        [DisputeState::Open, DisputeState::Won, DisputeState::Lost].into_iter().find(|d| d.as_str() == s)
    }
}

/// What Stripe has told us about an order so far.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrderFacts {
    pub amount: i64,
    pub currency: String,
    pub paid_at: Option<DateTime<Utc>>,
    pub processing: bool,
    pub failed: bool,
    pub expired: bool,
    pub canceled: bool,
    /// Cumulative, as Stripe reports it on the charge.
    pub amount_refunded: i64,
    pub dispute: Option<DisputeState>,
    /// Why the order needs a human (the paid amount or currency differed from the order's).
    pub flag: Option<String>,
    pub payment_intent_id: Option<String>,
    pub charge_id: Option<String>,
    /// Started as a hosted Checkout Session (whose page stays open after a declined card).
    pub checkout_flow: bool,
}

/// One thing an event (or the success page) says about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentFact {
    /// Money arrived: a completed Checkout Session with `payment_status` paid, an async payment
    /// that succeeded, a succeeded PaymentIntent.
    Paid {
        amount: i64,
        currency: String,
        payment_intent_id: Option<String>,
    },
    /// Completed, but a delayed payment method has not settled yet.
    Processing {
        payment_intent_id: Option<String>,
    },
    /// The payment failed for good (`async_payment_failed`).
    Failed,
    /// A PaymentIntent's attempt was declined: final for the PaymentIntent flow, but a Checkout
    /// page stays open for another card.
    Declined,
    Expired,
    Canceled,
    /// `amount_refunded` is the charge's cumulative refunded amount.
    Refunded {
        amount_refunded: i64,
        currency: String,
        charge_id: Option<String>,
        payment_intent_id: Option<String>,
    },
    DisputeOpened {
        charge_id: Option<String>,
    },
    DisputeClosed {
        won: bool,
    },
}

impl PaymentFact {
    pub fn describe(&self) -> String {
        match self {
            PaymentFact::Paid { amount, currency, .. } => format!("paid {amount} {currency}"),
            PaymentFact::Processing { .. } => "payment processing".to_owned(),
            PaymentFact::Failed => "payment failed".to_owned(),
            PaymentFact::Declined => "payment attempt declined".to_owned(),
            PaymentFact::Expired => "checkout expired".to_owned(),
            PaymentFact::Canceled => "payment canceled".to_owned(),
            PaymentFact::Refunded { amount_refunded, currency, .. } => format!("refunded {amount_refunded} {currency} in all"),
            PaymentFact::DisputeOpened { .. } => "dispute opened".to_owned(),
            PaymentFact::DisputeClosed { won } => format!("dispute closed ({})", if *won { "won" } else { "lost" }),
        }
    }
}

/// The state a grant should be in, given the order's facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantState {
    Active,
    Suspended,
    Revoked,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::Suspended => "suspended",
            GrantState::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<GrantState> {
        [GrantState::Active, GrantState::Suspended, GrantState::Revoked].into_iter().find(|g| g.as_str() == s)
    }
}

/// What a grant gives: access to a feature, or credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    Access,
    Credits,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::Access => "access",
            GrantKind::Credits => "credits",
        }
    }

    pub fn parse(s: &str) -> Option<GrantKind> {
        [GrantKind::Access, GrantKind::Credits].into_iter().find(|k| k.as_str() == s)
    }
}

/// The row a new grant is written as: what it gives and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantTerms {
    pub kind: GrantKind,
    pub feature: Option<String>,
    pub credits: Option<i64>,
    pub starts_at: DateTime<Utc>,
    /// `None`: forever (or not a period at all, for credits).
    pub expires_at: Option<DateTime<Utc>>,
}

/// What an order's grant has to become, given the grant stored for it (if any) and its facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantAction {
    /// Nothing to write.
    Keep,
    /// The stored grant changes state (suspended by a dispute, revoked by a refund, restored).
    SetState(GrantState),
    /// A first grant, created once (the order id is UNIQUE among grants).
    Create(GrantTerms, GrantState),
}

/// The grant decision for an order with `facts`, whose stored grant is in `stored` (if there is
/// one), buying `grant` (`None`: the order's grant could not be read). Runs inside the
/// transaction that applied the facts.
pub fn reconcile_grant(
    facts: &OrderFacts,
    stored: Option<GrantState>,
    grant: Option<&crate::domain::catalog::Grant>,
    now: DateTime<Utc>,
) -> Result<GrantAction, UnreadableGrant> {
    let Some(want) = facts.grant_state() else { return Ok(GrantAction::Keep) };
    match stored {
        Some(state) if state == want => Ok(GrantAction::Keep),
        Some(_) => Ok(GrantAction::SetState(want)),
        None if want == GrantState::Revoked || !facts.may_grant() => Ok(GrantAction::Keep),
        None => {
            let grant = grant.ok_or(UnreadableGrant)?;
            Ok(GrantAction::Create(grant_terms(grant, facts.paid_at.unwrap_or(now)), want))
        }
    }
}

/// The order's grant specification cannot be read: nothing may be granted from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the order's grant cannot be read")]
pub struct UnreadableGrant;

/// The terms of a grant bought with `grant` and paid at `starts_at`. An access grant runs for its
/// own period from payment; consecutive purchases are chained when read
/// (`domain::payments::effective_access`), so a refund re-chains the rest.
pub fn grant_terms(grant: &crate::domain::catalog::Grant, starts_at: DateTime<Utc>) -> GrantTerms {
    use crate::domain::catalog::Grant;
    match grant {
        Grant::Access { feature, duration_days } => GrantTerms {
            kind: GrantKind::Access,
            feature: Some(feature.clone()),
            credits: None,
            starts_at,
            expires_at: duration_days.map(|d| starts_at + chrono::Duration::days(d)),
        },
        Grant::Credits { amount } => {
            GrantTerms { kind: GrantKind::Credits, feature: None, credits: Some(*amount), starts_at, expires_at: None }
        }
    }
}

/// How an order was started by its client: a hosted Checkout Session or a bare PaymentIntent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderFlow {
    Checkout,
    PaymentIntent,
}

impl OrderFlow {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderFlow::Checkout => "checkout",
            OrderFlow::PaymentIntent => "payment_intent",
        }
    }

    pub fn parse(s: &str) -> Option<OrderFlow> {
        [OrderFlow::Checkout, OrderFlow::PaymentIntent].into_iter().find(|f| f.as_str() == s)
    }
}

/// The ways an event can name its order; the first that matches wins, in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderRef {
    pub order_id: Option<String>,
    pub checkout_session_id: Option<String>,
    pub payment_intent_id: Option<String>,
    pub charge_id: Option<String>,
    /// The notification names the order and its checkout both, and both must be that order's
    /// (NOWPayments: `order_id` and `invoice_id`); otherwise an id that names no order is ignored
    /// when another id finds one.
    pub both_named: bool,
    /// The provider whose notification this is (`None`: Stripe, the first provider, which every
    /// Stripe event's reference means). An order is moved only by its own provider's
    /// notifications: an id that happens to name another provider's order changes nothing.
    pub provider: Option<&'static str>,
}

impl OrderRef {
    pub fn is_empty(&self) -> bool {
        self.order_id.is_none()
            && self.checkout_session_id.is_none()
            && self.payment_intent_id.is_none()
            && self.charge_id.is_none()
    }

    /// The provider whose notification this is (`stripe` unless said otherwise).
    pub fn provider(&self) -> &'static str {
        self.provider.unwrap_or("stripe")
    }
}

/// What applying a fact did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    NoOrder,
    /// An order was named, but the event's session/PaymentIntent/charge is not that order's.
    Disagrees {
        order_id: String,
    },
    Order {
        order_id: String,
        status: OrderStatus,
        note: String,
    },
}

/// A refund's state: ours until Stripe answers (`requested`; `unknown` when the answer was lost),
/// then Stripe's own (`pending`, `requires_action`, `succeeded`, `failed`, `canceled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    Requested,
    Unknown,
    Pending,
    RequiresAction,
    Succeeded,
    Failed,
    Canceled,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 7] = [
        RefundStatus::Requested,
        RefundStatus::Unknown,
        RefundStatus::Pending,
        RefundStatus::RequiresAction,
        RefundStatus::Succeeded,
        RefundStatus::Failed,
        RefundStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Requested => "requested",
            RefundStatus::Unknown => "unknown",
            RefundStatus::Pending => "pending",
            RefundStatus::RequiresAction => "requires_action",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
            RefundStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<RefundStatus> {
        RefundStatus::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether Stripe has said what became of it.
    pub fn settled(self) -> bool {
        !matches!(self, RefundStatus::Requested | RefundStatus::Unknown)
    }

    /// Whether it counts against what is left to refund: anything that may have moved money.
    pub fn counts(self) -> bool {
        !matches!(self, RefundStatus::Failed | RefundStatus::Canceled)
    }
}

/// Why a refund request is refused, decided under the order's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundRefused {
    /// The request's fields (amount, Idempotency-Key) do not fit the order.
    Invalid(Vec<crate::domain::FieldError>),
    /// The order is not in a state that can be refunded.
    Conflict(String),
}

impl OrderFacts {
    pub fn fully_refunded(&self) -> bool {
        self.amount_refunded > 0 && self.amount_refunded >= self.amount
    }

    /// The status these facts add up to.
    pub fn status(&self) -> OrderStatus {
        if self.fully_refunded() {
            OrderStatus::Refunded
        } else if self.dispute.is_some_and(|d| d != DisputeState::Won || self.paid_at.is_none()) {
            OrderStatus::Disputed
        } else if self.amount_refunded > 0 {
            OrderStatus::PartiallyRefunded
        } else if self.paid_at.is_some() {
            OrderStatus::Paid
        } else if self.failed {
            OrderStatus::Failed
        } else if self.processing {
            OrderStatus::Processing
        } else if self.canceled {
            OrderStatus::Canceled
        } else if self.expired {
            OrderStatus::Expired
        } else {
            OrderStatus::Pending
        }
    }

    /// The state the order's grant should be in (`None`: not paid, so no grant). A full refund or
    /// a lost dispute revokes; an open dispute suspends; otherwise active.
    pub fn grant_state(&self) -> Option<GrantState> {
        if self.paid_at.is_none() {
            None
        } else if self.fully_refunded() || self.dispute == Some(DisputeState::Lost) {
            Some(GrantState::Revoked)
        } else if self.dispute == Some(DisputeState::Open) {
            Some(GrantState::Suspended)
        } else {
            Some(GrantState::Active)
        }
    }

    /// Whether a grant may be *created*: paid, and not flagged. A flag stops a new grant; it never
    /// shields an existing one from a refund or a dispute, nor keeps a won dispute from restoring it.
    pub fn may_grant(&self) -> bool {
        self.paid_at.is_some() && self.flag.is_none()
    }

    /// Adds what `fact` says, returning a line for the event's history. Never removes a fact,
    /// so any order of arrival ends in the same place.
    pub fn apply(&mut self, fact: &PaymentFact, now: DateTime<Utc>) -> String {
        match fact {
            PaymentFact::Paid { amount, currency, payment_intent_id } => {
                if self.payment_intent_id.is_none() {
                    self.payment_intent_id.clone_from(payment_intent_id);
                }
                if *amount != self.amount || *currency != self.currency {
                    let why = format!(
                        "paid {amount} {currency} but the order is for {} {}: flagged, nothing granted",
                        self.amount, self.currency
                    );
                    self.flag = Some(why.clone());
                    return why;
                }
                if self.paid_at.is_none() {
                    self.paid_at = Some(now);
                }
            }
            PaymentFact::Processing { payment_intent_id } => {
                if self.payment_intent_id.is_none() {
                    self.payment_intent_id.clone_from(payment_intent_id);
                }
                self.processing = true;
            }
            PaymentFact::Failed => self.failed = true,
            PaymentFact::Declined if self.checkout_flow => {
                return "a card was declined; the Checkout Session stays open for another try".to_owned();
            }
            PaymentFact::Declined => self.failed = true,
            PaymentFact::Expired => self.expired = true,
            PaymentFact::Canceled => self.canceled = true,
            PaymentFact::Refunded { amount_refunded, currency, charge_id, payment_intent_id } => {
                if *currency != self.currency {
                    let why = format!("a refund in {currency} for an order in {}: flagged", self.currency);
                    self.flag = Some(why.clone());
                    return why;
                }
                self.amount_refunded = self.amount_refunded.max(*amount_refunded);
                if self.charge_id.is_none() {
                    self.charge_id.clone_from(charge_id);
                }
                if self.payment_intent_id.is_none() {
                    self.payment_intent_id.clone_from(payment_intent_id);
                }
            }
            PaymentFact::DisputeOpened { charge_id } => {
                // A dispute already closed stays closed when its opening arrives late.
                if self.dispute.is_none() {
                    self.dispute = Some(DisputeState::Open);
                }
                if self.charge_id.is_none() {
                    self.charge_id.clone_from(charge_id);
                }
            }
            PaymentFact::DisputeClosed { won } => {
                self.dispute = Some(if *won { DisputeState::Won } else { DisputeState::Lost });
            }
        }
        fact.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> OrderFacts {
        OrderFacts { amount: 1000, currency: "usd".into(), ..Default::default() }
    }

    fn paid() -> PaymentFact {
        PaymentFact::Paid { amount: 1000, currency: "usd".into(), payment_intent_id: Some("pi_1".into()) }
    }

    fn refunded(amount: i64) -> PaymentFact {
        PaymentFact::Refunded { amount_refunded: amount, currency: "usd".into(), charge_id: None, payment_intent_id: None }
    }

    /// Applies facts in order, checking each status change against the machine.
    fn run(facts: &[PaymentFact]) -> OrderFacts {
        let mut o = order();
        for f in facts {
            let before = o.status();
            o.apply(f, Utc::now());
            before.transition(o.status()).unwrap_or_else(|e| panic!("{e} after {f:?}"));
        }
        o
    }

    fn permutations(items: &[PaymentFact]) -> Vec<Vec<PaymentFact>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut p in permutations(&rest) {
                p.insert(0, first.clone());
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn every_order_of_completed_refunded_expired_ends_refunded_and_revoked() {
        for p in permutations(&[paid(), refunded(1000), PaymentFact::Expired]) {
            let o = run(&p);
            assert_eq!(o.status(), OrderStatus::Refunded, "{p:?}");
            assert_eq!(o.grant_state(), Some(GrantState::Revoked), "{p:?}");
        }
    }

    #[test]
    fn delayed_payment_then_success_or_failure() {
        let processing = PaymentFact::Processing { payment_intent_id: None };
        assert_eq!(run(std::slice::from_ref(&processing)).status(), OrderStatus::Processing);
        assert_eq!(run(&[processing.clone(), paid()]).status(), OrderStatus::Paid);
        assert_eq!(run(&[processing.clone(), PaymentFact::Failed]).status(), OrderStatus::Failed);
        // Arrivals out of order end the same way.
        assert_eq!(run(&[paid(), processing]).status(), OrderStatus::Paid);
    }

    #[test]
    fn expired_after_paid_changes_nothing_and_duplicates_are_harmless() {
        let o = run(&[paid(), PaymentFact::Expired, paid(), PaymentFact::Expired]);
        assert_eq!(o.status(), OrderStatus::Paid);
        assert_eq!(o.grant_state(), Some(GrantState::Active));
    }

    #[test]
    fn partial_refund_keeps_the_grant() {
        let o = run(&[paid(), refunded(300), refunded(200)]);
        assert_eq!(o.status(), OrderStatus::PartiallyRefunded);
        assert_eq!(o.amount_refunded, 300, "cumulative: a stale smaller figure changes nothing");
        assert_eq!(o.grant_state(), Some(GrantState::Active));
        assert_eq!(run(&[paid(), refunded(300), refunded(1000)]).status(), OrderStatus::Refunded);
    }

    #[test]
    fn a_refund_before_the_completion_is_applied() {
        let o = run(&[refunded(1000), paid()]);
        assert_eq!(o.status(), OrderStatus::Refunded);
        assert_eq!(o.grant_state(), Some(GrantState::Revoked));
    }

    #[test]
    fn disputes_suspend_then_restore_or_revoke() {
        let open = PaymentFact::DisputeOpened { charge_id: Some("ch_1".into()) };
        let o = run(&[paid(), open.clone()]);
        assert_eq!((o.status(), o.grant_state()), (OrderStatus::Disputed, Some(GrantState::Suspended)));
        let won = run(&[paid(), open.clone(), PaymentFact::DisputeClosed { won: true }]);
        assert_eq!((won.status(), won.grant_state()), (OrderStatus::Paid, Some(GrantState::Active)));
        let lost = run(&[paid(), open.clone(), PaymentFact::DisputeClosed { won: false }]);
        assert_eq!((lost.status(), lost.grant_state()), (OrderStatus::Disputed, Some(GrantState::Revoked)));
        // The closing arriving before the opening: still closed.
        let late = run(&[paid(), PaymentFact::DisputeClosed { won: true }, open]);
        assert_eq!(late.status(), OrderStatus::Paid);
    }

    #[test]
    fn a_declined_card_fails_a_payment_intent_order_but_not_an_open_checkout() {
        assert_eq!(run(&[PaymentFact::Declined]).status(), OrderStatus::Failed);
        let mut checkout = OrderFacts { checkout_flow: true, ..order() };
        checkout.apply(&PaymentFact::Declined, Utc::now());
        assert_eq!(checkout.status(), OrderStatus::Pending);
        checkout.apply(&paid(), Utc::now());
        assert_eq!(checkout.status(), OrderStatus::Paid);
    }

    #[test]
    fn a_flag_never_shields_a_grant_from_a_refund_or_a_dispute() {
        let mut o = run(&[paid()]);
        let euros =
            PaymentFact::Refunded { amount_refunded: 1000, currency: "eur".into(), charge_id: None, payment_intent_id: None };
        o.apply(&euros, Utc::now());
        assert!(o.flag.is_some() && !o.may_grant());
        assert_eq!(o.grant_state(), Some(GrantState::Active), "the existing grant stays as it was");
        o.apply(&PaymentFact::DisputeOpened { charge_id: None }, Utc::now());
        assert_eq!(o.grant_state(), Some(GrantState::Suspended));
        let mut won = o.clone();
        won.apply(&PaymentFact::DisputeClosed { won: true }, Utc::now());
        assert_eq!(won.grant_state(), Some(GrantState::Active), "a won dispute restores it, flag or not");
        o.apply(&refunded(1000), Utc::now());
        assert_eq!(o.grant_state(), Some(GrantState::Revoked));
    }

    #[test]
    fn a_different_amount_or_currency_flags_and_grants_nothing() {
        let mut o = order();
        o.apply(&PaymentFact::Paid { amount: 1, currency: "usd".into(), payment_intent_id: None }, Utc::now());
        assert!(o.flag.is_some());
        assert_eq!(o.grant_state(), None);
        o.apply(&paid(), Utc::now());
        assert!(!o.may_grant(), "a flagged order stays flagged: no grant is created");
        let mut eur = order();
        eur.apply(&PaymentFact::Paid { amount: 1000, currency: "eur".into(), payment_intent_id: None }, Utc::now());
        assert!(eur.flag.is_some() && eur.paid_at.is_none());
    }

    #[test]
    fn the_grant_follows_the_facts_whatever_was_stored() {
        use crate::domain::catalog::Grant;
        let now = Utc::now();
        let month = Grant::Access { feature: "pro".into(), duration_days: Some(30) };
        let paid_facts = run(&[paid()]);
        let paid_at = paid_facts.paid_at.unwrap();
        let created = reconcile_grant(&paid_facts, None, Some(&month), now).unwrap();
        let GrantAction::Create(terms, GrantState::Active) = created else { panic!("{created:?}") };
        assert_eq!(terms.kind, GrantKind::Access);
        assert_eq!(terms.feature.as_deref(), Some("pro"));
        assert_eq!((terms.starts_at, terms.expires_at), (paid_at, Some(paid_at + chrono::Duration::days(30))));
        // Already granted and still active: nothing; a redelivery writes nothing.
        assert_eq!(reconcile_grant(&paid_facts, Some(GrantState::Active), Some(&month), now), Ok(GrantAction::Keep));
        // Every arrival order of completion, refund and expiry ends revoked, never re-created.
        for p in permutations(&[paid(), refunded(1000), PaymentFact::Expired]) {
            let facts = run(&p);
            assert_eq!(
                reconcile_grant(&facts, None, Some(&month), now),
                Ok(GrantAction::Keep),
                "{p:?}: never granted after a full refund"
            );
            assert_eq!(
                reconcile_grant(&facts, Some(GrantState::Active), Some(&month), now),
                Ok(GrantAction::SetState(GrantState::Revoked)),
                "{p:?}"
            );
        }
        // Disputes suspend and restore what exists.
        let disputed = run(&[paid(), PaymentFact::DisputeOpened { charge_id: None }]);
        assert_eq!(
            reconcile_grant(&disputed, Some(GrantState::Active), Some(&month), now),
            Ok(GrantAction::SetState(GrantState::Suspended))
        );
        let won = run(&[paid(), PaymentFact::DisputeOpened { charge_id: None }, PaymentFact::DisputeClosed { won: true }]);
        assert_eq!(
            reconcile_grant(&won, Some(GrantState::Suspended), Some(&month), now),
            Ok(GrantAction::SetState(GrantState::Active))
        );
        // Unpaid: nothing at all. Flagged: nothing new. Credits: no period.
        assert_eq!(reconcile_grant(&run(&[PaymentFact::Expired]), None, Some(&month), now), Ok(GrantAction::Keep));
        let mut flagged = run(&[paid()]);
        flagged.flag = Some("amount differs".into());
        assert_eq!(reconcile_grant(&flagged, None, Some(&month), now), Ok(GrantAction::Keep));
        let credits = reconcile_grant(&paid_facts, None, Some(&Grant::Credits { amount: 500 }), now).unwrap();
        let GrantAction::Create(terms, _) = credits else { panic!() };
        assert_eq!((terms.kind, terms.credits, terms.expires_at), (GrantKind::Credits, Some(500), None));
        let forever = grant_terms(&Grant::Access { feature: "pro".into(), duration_days: None }, paid_at);
        assert_eq!(forever.expires_at, None);
        // A grant that cannot be read is an error, not a silent "nothing".
        assert_eq!(reconcile_grant(&paid_facts, None, None, now), Err(UnreadableGrant));
    }

    #[test]
    fn statuses_round_trip() {
        for r in RefundStatus::ALL {
            assert_eq!(RefundStatus::parse(r.as_str()), Some(r));
        }
        for g in [GrantState::Active, GrantState::Suspended, GrantState::Revoked] {
            assert_eq!(GrantState::parse(g.as_str()), Some(g));
        }
        for f in [OrderFlow::Checkout, OrderFlow::PaymentIntent] {
            assert_eq!(OrderFlow::parse(f.as_str()), Some(f));
        }
        for k in [GrantKind::Access, GrantKind::Credits] {
            assert_eq!(GrantKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(RefundStatus::parse("bogus"), None);
        assert!(!RefundStatus::Unknown.settled() && RefundStatus::Unknown.counts());
        assert!(RefundStatus::Failed.settled() && !RefundStatus::Failed.counts());
    }

    #[test]
    fn the_machine_refuses_illegal_moves() {
        use OrderStatus::*;
        assert!(Paid.transition(Pending).is_err());
        assert!(Paid.transition(Expired).is_err());
        assert!(Paid.transition(Failed).is_err());
        assert!(Refunded.transition(Paid).is_err());
        assert!(Processing.transition(Pending).is_err());
        assert!(Pending.transition(Paid).is_ok());
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
            assert!(s.transition(s).is_ok());
        }
    }

    #[test]
    fn facts_never_produce_an_illegal_move() {
        let all = [
            paid(),
            PaymentFact::Processing { payment_intent_id: None },
            PaymentFact::Failed,
            PaymentFact::Declined,
            PaymentFact::Expired,
            PaymentFact::Canceled,
            refunded(400),
            refunded(1000),
            PaymentFact::DisputeOpened { charge_id: None },
            PaymentFact::DisputeClosed { won: true },
            PaymentFact::DisputeClosed { won: false },
        ];
        // Every sequence of three facts (with repetition): `run` panics on an illegal move.
        for a in &all {
            for b in &all {
                for c in &all {
                    run(&[a.clone(), b.clone(), c.clone()]);
                }
            }
        }
    }
}
