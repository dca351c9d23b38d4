//! What a fact tells the outside world: from an order's, a grant's or a balance's change to the
//! notices it produces (a type, the data, the key that makes it one message per fact and
//! recipient, and the email it sends the buyer, if any). Pure: the store writes the rows in the
//! transaction that made the fact; the dispatcher (`notify/`) delivers them.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::orders::{DisputeState, GrantState, OrderFacts};

/// Every type a webhook endpoint may subscribe to (API.md).
pub const EVENT_TYPES: &[&str] = &[
    "order.paid",
    "order.partially_refunded",
    "order.refunded",
    "order.disputed",
    "order.dispute_closed",
    "entitlement.granted",
    "entitlement.suspended",
    "entitlement.restored",
    "entitlement.revoked",
    "credits.changed",
    "ping",
];

pub fn is_event_type(t: &str) -> bool {
    EVENT_TYPES.contains(&t)
}

/// One message-worthy fact. `fact_key` is the same whenever the same fact is reported again (a
/// redelivered or replayed event), so the outbox's UNIQUE (fact_key, kind, recipient) keeps it
/// to one message per recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub event_type: &'static str,
    pub fact_key: String,
    /// Without `user`, `occurred_at` and `sequence`: the store adds those (it knows the email
    /// and takes the next sequence number).
    pub data: Value,
    /// The buyer's email this fact sends (`receipt`, `refund`), by the EMAIL part's `render` kind.
    pub email: Option<&'static str>,
}

/// The order as a notice describes it.
#[derive(Debug, Clone)]
pub struct OrderView<'a> {
    pub id: &'a str,
    pub product_id: &'a str,
    pub product_name: Option<&'a str>,
    pub amount: i64,
    pub currency: &'a str,
}

fn order_json(o: &OrderView<'_>, after: &OrderFacts) -> Value {
    json!({
        "id": o.id,
        "product_id": o.product_id,
        "product_name": o.product_name,
        "amount": o.amount,
        "currency": o.currency,
        "amount_refunded": after.amount_refunded,
        "status": after.status().as_str(),
        "paid_at": after.paid_at,
    })
}

/// What an order's move from `before` to `after` facts tells the merchant (and the buyer).
pub fn order_notices(o: &OrderView<'_>, before: &OrderFacts, after: &OrderFacts) -> Vec<Notice> {
    let mut out = Vec::new();
    let order = order_json(o, after);
    if before.paid_at.is_none() && after.paid_at.is_some() {
        out.push(Notice {
            event_type: "order.paid",
            fact_key: format!("order.paid:{}", o.id),
            data: json!({ "order": order }),
            email: Some("receipt"),
        });
    }
    if after.amount_refunded > before.amount_refunded {
        let event_type = if after.fully_refunded() { "order.refunded" } else { "order.partially_refunded" };
        out.push(Notice {
            event_type,
            // Cumulative: each new refund of the order is a fact of its own, the same one again is not.
            fact_key: format!("{event_type}:{}:{}", o.id, after.amount_refunded),
            data: json!({ "order": order, "refunded_now": after.amount_refunded - before.amount_refunded }),
            email: Some("refund"),
        });
    }
    // A dispute can go from none straight to won/lost (Stripe's close arrived first): the
    // merchant is told it was disputed, then that it closed.
    if before.dispute.is_none() && after.dispute.is_some() {
        out.push(Notice {
            event_type: "order.disputed",
            fact_key: format!("order.disputed:{}", o.id),
            data: json!({ "order": order }),
            email: None,
        });
    }
    if let (None | Some(DisputeState::Open), Some(closed @ (DisputeState::Won | DisputeState::Lost))) =
        (before.dispute, after.dispute)
    {
        out.push(Notice {
            event_type: "order.dispute_closed",
            fact_key: format!("order.dispute_closed:{}", o.id),
            data: json!({ "order": order, "outcome": closed.as_str() }),
            email: None,
        });
    }
    out
}

/// The grant as a notice describes it.
#[derive(Debug, Clone)]
pub struct GrantView<'a> {
    pub id: &'a str,
    pub order_id: &'a str,
    pub kind: &'a str,
    pub feature: Option<&'a str>,
    pub credits: Option<i64>,
    pub starts_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What a grant's change of state (`from` None: just created) tells the merchant. `facts` are
/// the order's after the change: they tell one suspension (an open dispute) from a later one.
pub fn grant_notice(g: &GrantView<'_>, from: Option<GrantState>, to: GrantState, facts: &OrderFacts) -> Option<Notice> {
    let event_type = match (from, to) {
        (None, _) => "entitlement.granted",
        (Some(a), b) if a == b => return None,
        (Some(_), GrantState::Suspended) => "entitlement.suspended",
        (Some(GrantState::Suspended), GrantState::Active) => "entitlement.restored",
        (Some(_), GrantState::Revoked) => "entitlement.revoked",
        (Some(_), GrantState::Active) => "entitlement.restored",
    };
    let dispute = facts.dispute.map_or("none", DisputeState::as_str);
    Some(Notice {
        event_type,
        fact_key: format!("{event_type}:{}:{}:{dispute}", g.id, facts.amount_refunded),
        data: json!({
            "grant": {
                "id": g.id,
                "order_id": g.order_id,
                "kind": g.kind,
                "feature": g.feature,
                "credits": g.credits,
                "status": to.as_str(),
                "starts_at": g.starts_at,
                "expires_at": g.expires_at,
            }
        }),
        email: None,
    })
}

/// A movement of the user's credit balance (one per movement id).
pub fn credits_notice(
    movement_id: &str,
    kind: &str,
    amount: i64,
    balance_after: i64,
    reason: &str,
    order_id: Option<&str>,
) -> Notice {
    Notice {
        event_type: "credits.changed",
        fact_key: format!("credits.changed:{movement_id}"),
        data: json!({
            "credits": {
                "movement_id": movement_id,
                "kind": kind,
                "amount": amount,
                "balance": balance_after,
                "reason": reason,
                "order_id": order_id,
            }
        }),
        email: None,
    }
}

/// The body a webhook message carries (Standard Webhooks: `type`, `timestamp`, `data`).
pub fn webhook_body(event_type: &str, occurred_at: DateTime<Utc>, data: &Value) -> Value {
    json!({
        "type": event_type,
        "timestamp": occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
}

/// The data a buyer's email is rendered from (the EMAIL part's `render` kinds).
pub fn email_data(kind: &str, to: &str, data: &Value, occurred_at: DateTime<Utc>) -> Value {
    let order = &data["order"];
    match kind {
        "receipt" => json!({
            "to": to,
            "product_name": order["product_name"],
            "amount": order["amount"],
            "currency": order["currency"],
            "order_id": order["id"],
            "paid_at": order["paid_at"],
        }),
        "refund" => json!({
            "to": to,
            "amount": data["refunded_now"],
            "currency": order["currency"],
            "order_id": order["id"],
            "refunded_at": occurred_at,
        }),
        _ => json!({ "to": to }),
    }
}

/// When the next attempt of a message goes, after `attempts` failed ones: the webhook schedule
/// (Svix's: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h) with up to ±20 % jitter;
/// `None` when the schedule is exhausted (the message fails). `jitter` is in [0, 1).
pub fn webhook_retry_after(schedule: &[std::time::Duration], attempts: u32, jitter: f64) -> Option<std::time::Duration> {
    let base = schedule.get(usize::try_from(attempts).ok()?)?;
    Some(jittered(*base, jitter))
}

/// Email: exponential backoff (30 s doubling) with jitter, for up to 24 h after the first attempt.
pub fn email_retry_after(attempts: u32, since_first: chrono::Duration, jitter: f64) -> Option<std::time::Duration> {
    let base = std::time::Duration::from_secs(30u64.saturating_mul(1u64 << attempts.min(12)).min(4 * 3600));
    let delay = jittered(base, jitter);
    let total = since_first.to_std().unwrap_or_default() + delay;
    (total <= std::time::Duration::from_secs(24 * 3600)).then_some(delay)
}

fn jittered(base: std::time::Duration, jitter: f64) -> std::time::Duration {
    // ±20 %: retries of many messages failed together spread out.
    base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

/// The default webhook retry schedule.
pub fn default_webhook_schedule() -> Vec<std::time::Duration> {
    [0u64, 5, 300, 1800, 7200, 18_000, 36_000, 36_000].into_iter().map(std::time::Duration::from_secs).collect()
}

/// An endpoint whose deliveries have all failed for this long is disabled.
pub const DISABLE_AFTER_DAYS: i64 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> OrderView<'static> {
        OrderView { id: "ord_1", product_id: "pr_1", product_name: Some("Pro"), amount: 1000, currency: "usd" }
    }

    fn paid() -> OrderFacts {
        OrderFacts { amount: 1000, currency: "usd".into(), paid_at: Some(Utc::now()), ..OrderFacts::default() }
    }

    #[test]
    fn paying_makes_one_paid_notice_with_a_receipt_and_paying_again_none() {
        let before = OrderFacts { amount: 1000, ..OrderFacts::default() };
        let n = order_notices(&view(), &before, &paid());
        assert_eq!(n.len(), 1);
        assert_eq!((n[0].event_type, n[0].email, n[0].fact_key.as_str()), ("order.paid", Some("receipt"), "order.paid:ord_1"));
        assert_eq!(n[0].data["order"]["amount"], 1000);
        assert!(order_notices(&view(), &paid(), &paid()).is_empty());
    }

    #[test]
    fn each_refund_is_its_own_fact_and_the_full_one_is_order_refunded() {
        let mut part = paid();
        part.amount_refunded = 300;
        let n = order_notices(&view(), &paid(), &part);
        assert_eq!((n[0].event_type, n[0].data["refunded_now"].as_i64()), ("order.partially_refunded", Some(300)));
        let mut full = part.clone();
        full.amount_refunded = 1000;
        let m = order_notices(&view(), &part, &full);
        assert_eq!((m[0].event_type, m[0].data["refunded_now"].as_i64()), ("order.refunded", Some(700)));
        assert_ne!(n[0].fact_key, m[0].fact_key);
    }

    #[test]
    fn disputes_open_and_close() {
        let mut open = paid();
        open.dispute = Some(DisputeState::Open);
        assert_eq!(order_notices(&view(), &paid(), &open)[0].event_type, "order.disputed");
        let mut won = paid();
        won.dispute = Some(DisputeState::Won);
        let n = order_notices(&view(), &open, &won);
        assert_eq!((n[0].event_type, n[0].data["outcome"].as_str()), ("order.dispute_closed", Some("won")));
    }

    #[test]
    fn a_dispute_closed_before_it_was_seen_open_is_disputed_then_closed() {
        for outcome in [DisputeState::Won, DisputeState::Lost] {
            let mut closed = paid();
            closed.dispute = Some(outcome);
            let n = order_notices(&view(), &paid(), &closed);
            let types: Vec<&str> = n.iter().map(|n| n.event_type).collect();
            assert_eq!(types, ["order.disputed", "order.dispute_closed"]);
            assert_eq!(n[1].data["outcome"], outcome.as_str());
            // Its open event arriving late changes nothing (orders.rs keeps a closed dispute closed).
            assert!(order_notices(&view(), &closed, &closed).is_empty());
        }
    }

    #[test]
    fn grant_changes_name_their_type() {
        let g = GrantView {
            id: "ent_1",
            order_id: "ord_1",
            kind: "access",
            feature: Some("pro"),
            credits: None,
            starts_at: Utc::now(),
            expires_at: None,
        };
        let f = paid();
        assert_eq!(grant_notice(&g, None, GrantState::Active, &f).unwrap().event_type, "entitlement.granted");
        assert_eq!(
            grant_notice(&g, Some(GrantState::Active), GrantState::Suspended, &f).unwrap().event_type,
            "entitlement.suspended"
        );
        assert_eq!(
            grant_notice(&g, Some(GrantState::Suspended), GrantState::Active, &f).unwrap().event_type,
            "entitlement.restored"
        );
        assert_eq!(
            grant_notice(&g, Some(GrantState::Active), GrantState::Revoked, &f).unwrap().event_type,
            "entitlement.revoked"
        );
        assert!(grant_notice(&g, Some(GrantState::Active), GrantState::Active, &f).is_none());
    }

    #[test]
    fn the_webhook_schedule_ends_and_email_stops_within_a_day() {
        let s = default_webhook_schedule();
        assert_eq!(webhook_retry_after(&s, 0, 0.5), Some(std::time::Duration::ZERO));
        assert_eq!(webhook_retry_after(&s, 2, 0.5), Some(std::time::Duration::from_secs(300)));
        assert!(webhook_retry_after(&s, 8, 0.5).is_none());
        assert!(email_retry_after(0, chrono::Duration::zero(), 0.5).is_some());
        assert!(email_retry_after(20, chrono::Duration::hours(23), 0.5).is_none());
    }
}
