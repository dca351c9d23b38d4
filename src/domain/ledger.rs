//! The ledger's rules: which event types tollgate acts on, and which key mode applies events.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys() {
        assert!(key_is_live(Some("sk_live_x")) && key_is_live(Some("rk_live_x")));
        assert!(!key_is_live(Some("sk_test_x")) && !key_is_live(None));
    }
}
