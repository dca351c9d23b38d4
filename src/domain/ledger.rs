//! The ledger's rules: which event types tollgate acts on, which key mode applies events, what to
//! do with a verified event, and the status and history line each outcome leaves it in.

use super::orders::{Applied, OrderRef, PaymentFact, RefundStatus};

/// The event types tollgate acts on (API.md). Every other verified event is stored as `ignored`.
pub const HANDLED_TYPES: &[&str] = &[
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
    // Stripe's word on refunds tollgate asked for (settles one whose answer was lost).
    "refund.created",
    "refund.updated",
    "refund.failed",
];

/// Whether the configured Stripe key is a live one (`sk_live_…`/`rk_live_…`); test keys and the
/// sandbox are not.
pub fn key_is_live(secret_key: Option<&str>) -> bool {
    secret_key.is_some_and(|k| k.starts_with("sk_live_") || k.starts_with("rk_live_"))
}

/// Where an event stands in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// Stored and being processed (only ever seen inside the transaction, or after a crash in it).
    Received,
    Processed,
    /// A type tollgate does not act on, or an event of the other mode.
    Ignored,
    /// A handled type naming no order (or refund) of ours.
    Unmatched,
    /// Processing failed; a redelivery or a replay processes it again.
    Failed,
}

impl EventStatus {
    pub const ALL: [EventStatus; 5] =
        [EventStatus::Received, EventStatus::Processed, EventStatus::Ignored, EventStatus::Unmatched, EventStatus::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Received => "received",
            EventStatus::Processed => "processed",
            EventStatus::Ignored => "ignored",
            EventStatus::Unmatched => "unmatched",
            EventStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<EventStatus> {
        EventStatus::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// Whether a redelivery should process the event (again): nobody finished it.
    pub fn needs_processing(self) -> bool {
        matches!(self, EventStatus::Received | EventStatus::Failed)
    }
}

impl std::fmt::Display for EventStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a verified event (decided by `stripe::events::plan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPlan {
    /// Store it as `ignored`, for this reason.
    Ignore(String),
    /// A handled type that names no order it could apply to: `unmatched`.
    Unmatched(String),
    /// Apply `fact` to the order `order` names (`unmatched` when there is none).
    Apply(OrderRef, PaymentFact),
    /// Record Stripe's word on one of our refunds (found by `metadata.refund_id`).
    SettleRefund { refund_id: String, stripe_refund_id: String, status: RefundStatus },
    /// As [`EventPlan::Apply`], with a remark for the history line (an overpayment, a partial
    /// payment: what an admin should see).
    ApplyNoted(OrderRef, PaymentFact, String),
    /// Not applied yet, for this reason (the provider's API does not confirm what the
    /// notification says, or cannot be asked): stored as `failed`, so a redelivery, a replay or a
    /// sync processes it again.
    Hold(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Stored (or, after an earlier failure, processed again) and left with this status.
    Stored { status: EventStatus, detail: String, retried: bool },
    /// Already in the ledger and done with (a redelivery): nothing written.
    Duplicate { status: EventStatus },
}

/// The status and history line of an event planned as [`EventPlan::Ignore`].
pub fn ignored_outcome(why: &str) -> (EventStatus, String) {
    (EventStatus::Ignored, why.to_owned())
}

/// The status and history line of an event planned as [`EventPlan::Unmatched`].
pub fn unmatched_outcome(why: &str) -> (EventStatus, String) {
    (EventStatus::Unmatched, why.to_owned())
}

/// The status and history line of an event planned as [`EventPlan::Hold`].
pub fn held_outcome(why: &str) -> (EventStatus, String) {
    (EventStatus::Failed, format!("not applied: {why}"))
}

/// The outcome of an [`EventPlan::ApplyNoted`]: its application's, with the remark after it.
pub fn noted_outcome((status, detail): (EventStatus, String), remark: &str) -> (EventStatus, String) {
    (status, format!("{detail}; {remark}"))
}

/// The status and history line of an event applied to an order.
pub fn applied_outcome(applied: &Applied) -> (EventStatus, String) {
    match applied {
        Applied::NoOrder => (EventStatus::Unmatched, "no order matches this event".to_owned()),
        Applied::Disagrees { order_id } => (
            EventStatus::Unmatched,
            format!("names order {order_id}, but its session, payment intent or charge is not that order's: not applied"),
        ),
        Applied::Order { order_id, status, note } => {
            (EventStatus::Processed, format!("order {order_id} {}: {note}", status.as_str()))
        }
    }
}

/// Whether an event's history line says it created an order's grant (the order was fulfilled):
/// `store/payments.rs` appends `; granted <grant id>` to the line of [`applied_outcome`].
pub fn created_grant(history: &str) -> bool {
    history.split("; ").any(|part| part.starts_with("granted ent_"))
}

/// The status and history line of an event settling one of our refunds (`found`: it exists).
pub fn refund_outcome(refund_id: &str, status: RefundStatus, found: bool) -> (EventStatus, String) {
    if found {
        (EventStatus::Processed, format!("refund {refund_id} is {}", status.as_str()))
    } else {
        (EventStatus::Unmatched, format!("no refund {refund_id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::orders::OrderStatus;

    #[test]
    fn a_created_grant_is_read_from_the_history_line() {
        assert!(created_grant("order ord_1 paid: status paid; granted ent_0190abcdef12"));
        assert!(!created_grant("order ord_1 refunded: grant ent_0190abcdef12 revoked"));
        assert!(!created_grant("no order matches this event"));
    }

    #[test]
    fn every_outcome_leaves_a_status_and_a_line_for_the_history() {
        assert_eq!(ignored_outcome("not handled"), (EventStatus::Ignored, "not handled".into()));
        assert_eq!(unmatched_outcome("no order"), (EventStatus::Unmatched, "no order".into()));
        assert_eq!(applied_outcome(&Applied::NoOrder).0, EventStatus::Unmatched);
        let (status, line) = applied_outcome(&Applied::Disagrees { order_id: "ord_1".into() });
        assert_eq!(status, EventStatus::Unmatched);
        assert!(line.contains("ord_1") && line.contains("not applied"), "{line}");
        let done = Applied::Order { order_id: "ord_1".into(), status: OrderStatus::Paid, note: "paid 500 usd".into() };
        assert_eq!(applied_outcome(&done), (EventStatus::Processed, "order ord_1 paid: paid 500 usd".into()));
        assert_eq!(
            refund_outcome("rf_1", RefundStatus::Succeeded, true),
            (EventStatus::Processed, "refund rf_1 is succeeded".into())
        );
        assert_eq!(refund_outcome("rf_1", RefundStatus::Succeeded, false).0, EventStatus::Unmatched);
        for s in EventStatus::ALL {
            assert_eq!(EventStatus::parse(s.as_str()), Some(s));
        }
        assert!(EventStatus::Failed.needs_processing() && !EventStatus::Processed.needs_processing());
    }

    #[test]
    fn live_keys() {
        assert!(key_is_live(Some("sk_live_x")) && key_is_live(Some("rk_live_x")));
        assert!(!key_is_live(Some("sk_test_x")) && !key_is_live(None));
    }
}
