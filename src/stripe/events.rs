//! What a verified Stripe event means for tollgate: which order it names and what it says about
//! it. The only place that reads Stripe's object shapes.

use serde_json::Value;

use super::webhook::Event;
use crate::domain::ledger::{EventPlan, HANDLED_TYPES};
use crate::domain::orders::{OrderRef, PaymentFact, RefundStatus};

fn str_field(object: &Value, key: &str) -> Option<String> {
    object.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// An id field that Stripe may send as a string or, when expanded, as an object with an `id`.
fn id_field(object: &Value, key: &str) -> Option<String> {
    match object.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn int_field(object: &Value, key: &str) -> Option<i64> {
    object.get(key).and_then(Value::as_i64)
}

fn metadata_order_id(object: &Value) -> Option<String> {
    object.get("metadata").and_then(|m| m.get("order_id")).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

fn session_ref(session: &Value) -> OrderRef {
    OrderRef {
        order_id: metadata_order_id(session).or_else(|| str_field(session, "client_reference_id")),
        checkout_session_id: str_field(session, "id"),
        payment_intent_id: id_field(session, "payment_intent"),
        charge_id: None,
        both_named: false,
        provider: None,
    }
}

fn paid_session(session: &Value) -> PaymentFact {
    PaymentFact::Paid {
        // A missing total cannot equal the order's, so the order is flagged rather than granted.
        amount: int_field(session, "amount_total").unwrap_or(-1),
        currency: str_field(session, "currency").unwrap_or_default(),
        payment_intent_id: id_field(session, "payment_intent"),
    }
}

/// What a Checkout Session object says, for the success page (a retrieved session) and for
/// `checkout.session.completed`; `None` while it is still open.
pub fn session_fact(session: &Value) -> Option<(OrderRef, PaymentFact)> {
    let fact = match (session.get("status").and_then(Value::as_str), session.get("payment_status").and_then(Value::as_str)) {
        (Some("complete"), Some("paid" | "no_payment_required")) => paid_session(session),
        (Some("complete"), _) => PaymentFact::Processing { payment_intent_id: id_field(session, "payment_intent") },
        (Some("expired"), _) => PaymentFact::Expired,
        _ => return None,
    };
    Some((session_ref(session), fact))
}

/// The order and fact a handled event type carries; `None` for a type tollgate does not act on.
pub fn fact_of(kind: &str, object: &Value) -> Option<(OrderRef, PaymentFact)> {
    let fact_and_ref = match kind {
        "checkout.session.completed" => {
            let fact = match object.get("payment_status").and_then(Value::as_str) {
                Some("paid" | "no_payment_required") => paid_session(object),
                _ => PaymentFact::Processing { payment_intent_id: id_field(object, "payment_intent") },
            };
            (session_ref(object), fact)
        }
        "checkout.session.async_payment_succeeded" => (session_ref(object), paid_session(object)),
        "checkout.session.async_payment_failed" => (session_ref(object), PaymentFact::Failed),
        "checkout.session.expired" => (session_ref(object), PaymentFact::Expired),
        "payment_intent.succeeded" | "payment_intent.payment_failed" | "payment_intent.canceled" => {
            let r = OrderRef {
                order_id: metadata_order_id(object),
                payment_intent_id: str_field(object, "id"),
                ..Default::default()
            };
            let fact = match kind {
                "payment_intent.succeeded" => PaymentFact::Paid {
                    amount: int_field(object, "amount_received")
                        .filter(|a| *a > 0)
                        .or_else(|| int_field(object, "amount"))
                        .unwrap_or(-1),
                    currency: str_field(object, "currency").unwrap_or_default(),
                    payment_intent_id: str_field(object, "id"),
                },
                "payment_intent.payment_failed" => PaymentFact::Declined,
                _ => PaymentFact::Canceled,
            };
            (r, fact)
        }
        "charge.refunded" => {
            let r = OrderRef {
                order_id: metadata_order_id(object),
                payment_intent_id: id_field(object, "payment_intent"),
                charge_id: str_field(object, "id"),
                ..Default::default()
            };
            let fact = PaymentFact::Refunded {
                amount_refunded: int_field(object, "amount_refunded").unwrap_or(0),
                currency: str_field(object, "currency").unwrap_or_default(),
                charge_id: str_field(object, "id"),
                payment_intent_id: id_field(object, "payment_intent"),
            };
            (r, fact)
        }
        "charge.dispute.created" | "charge.dispute.closed" => {
            let r = OrderRef {
                order_id: metadata_order_id(object),
                payment_intent_id: id_field(object, "payment_intent"),
                charge_id: id_field(object, "charge"),
                ..Default::default()
            };
            let fact = if kind == "charge.dispute.created" {
                PaymentFact::DisputeOpened { charge_id: id_field(object, "charge") }
            } else {
                // `warning_closed`: an inquiry closed without a chargeback, the money stays.
                let won = matches!(object.get("status").and_then(Value::as_str), Some("won" | "warning_closed"));
                PaymentFact::DisputeClosed { won }
            };
            (r, fact)
        }
        _ => return None,
    };
    Some(fact_and_ref)
}

/// What the ledger should do with `event`, given whether the configured key is a live one.
pub fn plan(event: &Event, key_live: bool) -> EventPlan {
    if event.livemode != key_live {
        let (mode, key) = if event.livemode { ("live", "test") } else { ("test", "live") };
        return EventPlan::Ignore(format!("a {mode}-mode event, but the configured key is a {key} key: stored, not applied"));
    }
    if !HANDLED_TYPES.contains(&event.kind.as_str()) {
        return EventPlan::Ignore(format!("event type {} is not handled", event.kind));
    }
    if event.kind.starts_with("refund.") {
        let object = &event.data.object;
        let refund_id = object.get("metadata").and_then(|m| m.get("refund_id")).and_then(Value::as_str);
        let status = str_field(object, "status");
        return match (refund_id, str_field(object, "id"), status.as_deref().map(RefundStatus::parse)) {
            (Some(refund_id), Some(stripe_refund_id), Some(Some(status))) => {
                EventPlan::SettleRefund { refund_id: refund_id.to_owned(), stripe_refund_id, status }
            }
            (Some(_), Some(_), Some(None)) => {
                EventPlan::Unmatched(format!("a refund status tollgate does not know ({})", status.unwrap_or_default()))
            }
            _ => EventPlan::Unmatched("a refund tollgate did not ask for (no metadata.refund_id)".to_owned()),
        };
    }
    match fact_of(&event.kind, &event.data.object) {
        Some((r, _)) if r.is_empty() => {
            EventPlan::Unmatched("the event names no order, session, payment intent or charge".to_owned())
        }
        Some((r, fact)) => EventPlan::Apply(r, fact),
        None => EventPlan::Unmatched(format!("cannot read a {} object", event.kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, livemode: bool, object: Value) -> Event {
        let raw = json!({"id": "evt_1", "object": "event", "type": kind, "created": 1, "livemode": livemode, "api_version": null, "data": {"object": object}});
        Event::parse(serde_json::to_vec(&raw).unwrap().as_slice()).unwrap()
    }

    #[test]
    fn plans() {
        assert!(
            matches!(plan(&event("plan.created", false, json!({})), false), EventPlan::Ignore(w) if w.contains("not handled"))
        );
        assert!(
            matches!(plan(&event("checkout.session.completed", true, json!({})), false), EventPlan::Ignore(w) if w.contains("live-mode"))
        );
        assert!(matches!(plan(&event("checkout.session.completed", false, json!({})), false), EventPlan::Unmatched(_)));
        let session = json!({"id": "cs_1", "metadata": {"order_id": "ord_1"}, "payment_status": "paid", "amount_total": 500, "currency": "usd", "payment_intent": {"id": "pi_1"}});
        let EventPlan::Apply(r, fact) = plan(&event("checkout.session.completed", false, session), false) else { panic!() };
        assert_eq!(r.order_id.as_deref(), Some("ord_1"));
        assert_eq!(fact, PaymentFact::Paid { amount: 500, currency: "usd".into(), payment_intent_id: Some("pi_1".into()) });
        let unpaid = json!({"id": "cs_1", "client_reference_id": "ord_2", "payment_status": "unpaid"});
        let EventPlan::Apply(r, fact) = plan(&event("checkout.session.completed", false, unpaid), false) else { panic!() };
        assert_eq!((r.order_id.as_deref(), fact), (Some("ord_2"), PaymentFact::Processing { payment_intent_id: None }));
        let lost = json!({"id": "dp_1", "charge": "ch_1", "payment_intent": "pi_1", "status": "lost"});
        assert_eq!(fact_of("charge.dispute.closed", &lost).unwrap().1, PaymentFact::DisputeClosed { won: false });
    }

    #[test]
    fn open_sessions_say_nothing_yet() {
        assert_eq!(session_fact(&json!({"id": "cs_1", "status": "open", "payment_status": "unpaid"})), None);
        assert_eq!(session_fact(&json!({"id": "cs_1", "status": "expired"})).unwrap().1, PaymentFact::Expired);
    }
}
