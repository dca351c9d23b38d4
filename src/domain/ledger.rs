//! What the ledger does with a verified event before any order logic exists for it.

/// The event types tollgate acts on (API.md). Every other verified event is stored as `ignored`.
pub const HANDLED_TYPES: &[&str] = &[
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
];

/// Whether the configured Stripe key is a live one (`sk_live_…`/`rk_live_…`); test keys and the
/// sandbox are not.
pub fn key_is_live(secret_key: Option<&str>) -> bool {
    secret_key.is_some_and(|k| k.starts_with("sk_live_") || k.starts_with("rk_live_"))
}

/// The status and history line an event is stored with.
pub fn classify(kind: &str, event_livemode: bool, key_live: bool) -> (&'static str, String) {
    if event_livemode != key_live {
        let (event, key) = if event_livemode { ("live", "test") } else { ("test", "live") };
        return ("ignored", format!("a {event}-mode event, but the configured key is a {key} key: stored, not applied"));
    }
    if HANDLED_TYPES.contains(&kind) {
        // Orders do not exist yet, so nothing can match; the payments work applies these.
        ("unmatched", "no order matches this event".to_owned())
    } else {
        ("ignored", format!("event type {kind} is not handled"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify("plan.created", false, false).0, "ignored");
        assert_eq!(classify("checkout.session.completed", false, false).0, "unmatched");
        let (status, detail) = classify("checkout.session.completed", true, false);
        assert_eq!(status, "ignored");
        assert!(detail.contains("live-mode event"));
        assert!(key_is_live(Some("sk_live_x")) && !key_is_live(Some("sk_test_x")) && !key_is_live(None));
    }
}
