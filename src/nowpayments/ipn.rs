//! What a verified IPN (or the API's answer about a payment, which has the same fields) means for
//! tollgate: which order it names, and which domain fact its `payment_status` is. The only place
//! that reads NOWPayments' payment shape.
//!
//! | status | fact |
//! |---|---|
//! | `waiting` | nothing yet (stored as `ignored`) |
//! | `confirming`, `confirmed`, `sending` | processing |
//! | `partially_paid` | processing, nothing granted; the history line says how much arrived |
//! | `finished` | paid, once confirmed by `GET /v1/payment/{id}` (held as `failed` until then) |
//! | `failed` | failed |
//! | `expired` | expired |
//! | `refunded` | refunded in full (revokes, claws credits back) |

use std::cmp::Ordering;

use super::canonical::{parse, CanonicalError, Value};
use crate::domain::catalog::from_decimal;
use crate::domain::ledger::EventPlan;
use crate::domain::orders::{OrderRef, PaymentFact};

/// The fields tollgate reads from an IPN or a payment, each as the text JavaScript would print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: String,
    pub status: String,
    pub invoice_id: Option<String>,
    pub order_id: Option<String>,
    pub price_amount: Option<String>,
    pub price_currency: Option<String>,
    pub pay_amount: Option<String>,
    pub actually_paid: Option<String>,
    pub pay_currency: Option<String>,
    pub updated_at: Option<String>,
    /// Hex SHA-256 of the body's canonical form: tells apart notifications with no `updated_at`.
    pub body_digest: String,
}

/// Why a body is not an IPN tollgate can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAPayment {
    #[error(transparent)]
    Body(#[from] CanonicalError),
    #[error("no payment_id or payment_status")]
    Fields,
}

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_text).filter(|s| !s.is_empty())
}

impl Payment {
    pub fn read(value: &Value) -> Result<Payment, NotAPayment> {
        let (Some(payment_id), Some(status)) = (text(value, "payment_id"), text(value, "payment_status")) else {
            return Err(NotAPayment::Fields);
        };
        Ok(Payment {
            payment_id,
            status,
            invoice_id: text(value, "invoice_id"),
            order_id: text(value, "order_id"),
            price_amount: text(value, "price_amount"),
            price_currency: text(value, "price_currency").map(|c| c.to_ascii_lowercase()),
            pay_amount: text(value, "pay_amount"),
            actually_paid: text(value, "actually_paid"),
            pay_currency: text(value, "pay_currency").map(|c| c.to_ascii_lowercase()),
            updated_at: text(value, "updated_at"),
            body_digest: {
                let mut canonical_form = String::new();
                super::canonical::canonical(value, &mut canonical_form);
                hex_sha256(&[canonical_form.as_bytes()])
            },
        })
    }

    /// A payment as `GET /v1/payment/{id}` serialises it.
    pub fn parse(bytes: &[u8]) -> Result<Payment, NotAPayment> {
        Payment::read(&parse(bytes)?)
    }

    /// The ledger's id for this notification: one per (payment, status, update), so a re-sent IPN
    /// is the same row and a new status is a new one. `np_` and the hex SHA-256 of the three parts,
    /// each prefixed with its length (so no part's content can shift into another's). The update
    /// is `updated_at` in milliseconds since the epoch, whichever form it came in (an IPN's number,
    /// the API's ISO 8601 text), so an IPN and the API's answer about the same update are one
    /// row; without one, the body's canonical digest, so distinct notifications stay distinct.
    /// (Rows stored before this form keep their older `np_{payment}_{status}_{updated}` ids.)
    pub fn event_id(&self) -> String {
        let update = match self.updated_ms() {
            Some(ms) => format!("updated_ms:{ms}"),
            None => format!("body:{}", self.body_digest),
        };
        let parts = [self.payment_id.as_str(), self.status.as_str(), update.as_str()];
        let lengths: Vec<[u8; 8]> = parts.iter().map(|p| (p.len() as u64).to_be_bytes()).collect();
        let mut chunks: Vec<&[u8]> = Vec::new();
        for (part, length) in parts.iter().zip(&lengths) {
            chunks.push(length);
            chunks.push(part.as_bytes());
        }
        format!("np_{}", hex_sha256(&chunks))
    }

    /// `updated_at` in milliseconds since the epoch: NOWPayments' IPNs send a number of
    /// milliseconds (a number below 10^11 is taken as seconds), its API an ISO 8601 time.
    pub fn updated_ms(&self) -> Option<i64> {
        let updated = self.updated_at.as_deref()?;
        match updated.parse::<i64>() {
            Ok(n) if n > 100_000_000_000 => Some(n),
            Ok(n) => n.checked_mul(1000),
            Err(_) => chrono::DateTime::parse_from_rfc3339(updated).ok().map(|t| t.timestamp_millis()),
        }
    }

    /// The ledger's type for it.
    pub fn kind(&self) -> String {
        let status: String = self.status.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(40).collect();
        format!("payment.{status}")
    }

    /// `updated_at` as Unix seconds, else `now`.
    pub fn created(&self, now: i64) -> i64 {
        self.updated_ms().map(|ms| ms.div_euclid(1000)).unwrap_or(now)
    }

    /// Only `finished` delivers goods, so only it is confirmed with the API first.
    pub fn needs_confirmation(&self) -> bool {
        self.status == "finished"
    }

    fn order_ref(&self) -> Option<OrderRef> {
        // The invoice must be the order's own (`agrees_with` compares it with the order's), so an
        // IPN about some other payment that names one of our order ids moves nothing.
        Some(OrderRef {
            order_id: Some(self.order_id.clone()?),
            checkout_session_id: Some(self.invoice_id.clone()?),
            both_named: true,
            provider: Some("nowpayments"),
            ..Default::default()
        })
    }

    fn price(&self) -> (i64, String) {
        let currency = self.price_currency.clone().unwrap_or_default();
        // An unreadable price cannot equal the order's, so the order is flagged rather than granted.
        let amount = self.price_amount.as_deref().and_then(|p| from_decimal(p, &currency)).unwrap_or(-1);
        (amount, currency)
    }
}

fn hex_sha256(chunks: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for chunk in chunks {
        hasher.update(chunk);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two non-negative decimal texts (`0.0012`, `1.2e-3`) exactly; `None` if either is not one.
pub fn decimal_cmp(a: &str, b: &str) -> Option<Ordering> {
    fn split(s: &str) -> Option<(String, i64)> {
        let (mantissa, e) = match s.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.parse::<i64>().ok()?),
            None => (s, 0),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if whole.is_empty() || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = format!("{whole}{fraction}");
        let digits = digits.trim_start_matches('0');
        if digits.is_empty() {
            return Some((String::new(), 0));
        }
        // Magnitude: where the first digit stands. The exponent is the sender's: checked, so an
        // absurd one (`1e9223372036854775807`) is not a decimal we compare, not a panic.
        let magnitude = i64::try_from(digits.len()).ok()?.checked_add(e)?.checked_sub(i64::try_from(fraction.len()).ok()?)?;
        Some((digits.trim_end_matches('0').to_owned(), magnitude))
    }
    let (da, ma) = split(a)?;
    let (db, mb) = split(b)?;
    Some(match (da.is_empty(), db.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => ma.cmp(&mb).then_with(|| {
            let width = da.len().max(db.len());
            format!("{da:0<width$}").cmp(&format!("{db:0<width$}"))
        }),
    })
}

/// What the ledger should do with a verified IPN. `confirmed` is the API's answer about the same
/// payment (asked only when [`Payment::needs_confirmation`]): `None` when it was not asked,
/// `Some(Err(why))` when asking failed.
pub fn plan(ipn: &Payment, confirmed: Option<Result<Payment, String>>) -> EventPlan {
    let Some(order) = ipn.order_ref() else {
        return EventPlan::Unmatched("the IPN names no order and invoice of ours (order_id, invoice_id)".to_owned());
    };
    match ipn.status.as_str() {
        "waiting" => EventPlan::Ignore("waiting for the buyer's payment".to_owned()),
        "confirming" | "confirmed" | "sending" => EventPlan::Apply(order, PaymentFact::Processing { payment_intent_id: None }),
        "partially_paid" => EventPlan::ApplyNoted(
            order,
            PaymentFact::Processing { payment_intent_id: None },
            format!(
                "partially paid: {} {} arrived of {} asked; nothing granted unless the rest arrives",
                ipn.actually_paid.as_deref().unwrap_or("?"),
                ipn.pay_currency.as_deref().unwrap_or("?"),
                ipn.pay_amount.as_deref().unwrap_or("?")
            ),
        ),
        "finished" => finished(ipn, order, confirmed),
        "failed" => EventPlan::Apply(order, PaymentFact::Failed),
        "expired" => EventPlan::Apply(order, PaymentFact::Expired),
        "refunded" => {
            let (amount, currency) = ipn.price();
            if amount < 1 {
                return EventPlan::Unmatched("a refund whose price_amount cannot be read".to_owned());
            }
            EventPlan::Apply(
                order,
                PaymentFact::Refunded { amount_refunded: amount, currency, charge_id: None, payment_intent_id: None },
            )
        }
        other => EventPlan::Ignore(format!("payment status {other} is not one tollgate acts on")),
    }
}

/// A `finished` IPN fulfils only what the API itself says: its status, its price, its order.
fn finished(ipn: &Payment, order: OrderRef, confirmed: Option<Result<Payment, String>>) -> EventPlan {
    let api = match confirmed {
        None => return EventPlan::Hold("not yet confirmed with GET /v1/payment".to_owned()),
        Some(Err(why)) => return EventPlan::Hold(format!("cannot confirm with GET /v1/payment: {why}")),
        Some(Ok(api)) => api,
    };
    // `refunded` too: the payment was finished before it was refunded (the refund's IPN revokes).
    if !matches!(api.status.as_str(), "finished" | "refunded") {
        return EventPlan::Hold(format!("the IPN says finished but GET /v1/payment says {}", api.status));
    }
    // The API must name this very payment, order and invoice: a payment made without an order id
    // (`"order_id": null`) or for another invoice pays for nothing of ours, whatever the IPN says.
    if api.payment_id != ipn.payment_id || api.order_id != ipn.order_id || api.invoice_id != ipn.invoice_id {
        return EventPlan::Hold("GET /v1/payment describes another payment, order or invoice".to_owned());
    }
    // The payment id is kept on the order (`payment_intent_id`, UNIQUE): one payment pays one
    // order, and an order once paid by a payment is not paid again by another.
    let order = OrderRef { payment_intent_id: Some(ipn.payment_id.clone()), ..order };
    let (amount, currency) = api.price();
    let fact = PaymentFact::Paid { amount, currency, payment_intent_id: Some(ipn.payment_id.clone()) };
    match (api.actually_paid.as_deref().or(ipn.actually_paid.as_deref()), api.pay_amount.as_deref().or(ipn.pay_amount.as_deref()))
    {
        (Some(paid), Some(asked)) if decimal_cmp(paid, asked) == Some(Ordering::Greater) => EventPlan::ApplyNoted(
            order,
            fact,
            format!("overpaid: {paid} {} arrived for {asked} asked", api.pay_currency.as_deref().unwrap_or("?")),
        ),
        _ => EventPlan::Apply(order, fact),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipn(status: &str) -> Payment {
        Payment::parse(
            format!(
                r#"{{"payment_id":5077125051,"invoice_id":4522625843,"payment_status":"{status}","order_id":"ord_1","price_amount":12.99,"price_currency":"USD","pay_amount":0.0002,"actually_paid":0.0002,"pay_currency":"btc","updated_at":1633520000000}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn statuses_become_facts() {
        let order = OrderRef {
            order_id: Some("ord_1".into()),
            checkout_session_id: Some("4522625843".into()),
            both_named: true,
            provider: Some("nowpayments"),
            ..Default::default()
        };
        assert!(matches!(plan(&ipn("waiting"), None), EventPlan::Ignore(_)));
        assert_eq!(
            plan(&ipn("confirming"), None),
            EventPlan::Apply(order.clone(), PaymentFact::Processing { payment_intent_id: None })
        );
        assert_eq!(plan(&ipn("expired"), None), EventPlan::Apply(order.clone(), PaymentFact::Expired));
        assert_eq!(plan(&ipn("failed"), None), EventPlan::Apply(order.clone(), PaymentFact::Failed));
        assert!(
            matches!(plan(&ipn("partially_paid"), None), EventPlan::ApplyNoted(_, PaymentFact::Processing { .. }, n) if n.contains("0.0002 btc"))
        );
        let refund =
            PaymentFact::Refunded { amount_refunded: 1299, currency: "usd".into(), charge_id: None, payment_intent_id: None };
        assert_eq!(plan(&ipn("refunded"), None), EventPlan::Apply(order.clone(), refund));
        let paid = PaymentFact::Paid { amount: 1299, currency: "usd".into(), payment_intent_id: Some("5077125051".into()) };
        let paying = OrderRef { payment_intent_id: Some("5077125051".into()), ..order.clone() };
        assert_eq!(plan(&ipn("finished"), Some(Ok(ipn("finished")))), EventPlan::Apply(paying, paid));
        assert!(matches!(plan(&ipn("finished"), None), EventPlan::Hold(_)));
        assert!(matches!(plan(&ipn("finished"), Some(Ok(ipn("waiting")))), EventPlan::Hold(w) if w.contains("says waiting")));
        assert!(matches!(plan(&ipn("finished"), Some(Err("down".into()))), EventPlan::Hold(_)));
        let mut over = ipn("finished");
        over.actually_paid = Some("0.00021".into());
        assert!(
            matches!(plan(&ipn("finished"), Some(Ok(over))), EventPlan::ApplyNoted(_, PaymentFact::Paid { .. }, n) if n.contains("overpaid"))
        );
        let mut stray = ipn("finished");
        stray.invoice_id = None;
        assert!(matches!(plan(&stray, None), EventPlan::Unmatched(_)));
    }

    #[test]
    fn a_finished_ipn_is_applied_only_when_the_api_names_the_same_order_and_invoice() {
        let held = |api: Payment| matches!(plan(&ipn("finished"), Some(Ok(api))), EventPlan::Hold(w) if w.contains("another payment, order or invoice"));
        let mut no_order = ipn("finished");
        no_order.order_id = None;
        assert!(held(no_order), "a payment made without an order id pays for no order");
        let mut other_order = ipn("finished");
        other_order.order_id = Some("ord_2".into());
        assert!(held(other_order));
        let mut other_invoice = ipn("finished");
        other_invoice.invoice_id = Some("1".into());
        assert!(held(other_invoice));
        let mut no_invoice = ipn("finished");
        no_invoice.invoice_id = None;
        assert!(held(no_invoice));
        let mut other_payment = ipn("finished");
        other_payment.payment_id = "1".into();
        assert!(held(other_payment));
    }

    #[test]
    fn the_dedup_key_is_payment_status_and_update() {
        let id = ipn("finished").event_id();
        assert!(id.starts_with("np_") && id.len() == 67 && id[3..].bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_eq!(id, ipn("finished").event_id(), "a re-sent IPN is the same row");
        assert_ne!(id, ipn("confirming").event_id());
        assert_eq!(ipn("finished").kind(), "payment.finished");
        assert_eq!(ipn("finished").created(0), 1633520000);
        // `_` inside the parts no longer makes two facts one key.
        let mut a = ipn("finished");
        (a.payment_id, a.status) = ("1_x".into(), "y".into());
        let mut b = ipn("finished");
        (b.payment_id, b.status) = ("1".into(), "x_y".into());
        assert_ne!(a.event_id(), b.event_id());
        // The API's ISO 8601 updated_at and the IPN's milliseconds are the same update.
        let mut api = ipn("finished");
        api.updated_at = Some("2021-10-06T11:33:20.000Z".into());
        assert_eq!(api.updated_ms(), Some(1_633_520_000_000));
        assert_eq!(api.event_id(), id);
        assert_eq!(api.created(0), 1633520000);
        // Without updated_at, distinct bodies stay distinct (and a re-sent one is still one row).
        let bare = |paid: &str| {
            Payment::parse(format!(r#"{{"payment_id":1,"payment_status":"confirming","actually_paid":{paid}}}"#).as_bytes())
                .unwrap()
        };
        assert_ne!(bare("0.1").event_id(), bare("0.2").event_id());
        assert_eq!(bare("0.1").event_id(), bare(" 0.1").event_id());
        assert_eq!(bare("0.1").created(7), 7);
    }

    #[test]
    fn decimals_compare_exactly() {
        assert_eq!(decimal_cmp("0.0012", "1.2e-3"), Some(Ordering::Equal));
        assert_eq!(decimal_cmp("0.00121", "0.0012"), Some(Ordering::Greater));
        assert_eq!(decimal_cmp("1e-7", "0.000001"), Some(Ordering::Less));
        assert_eq!(decimal_cmp("10", "9.999999999999999999"), Some(Ordering::Greater));
        assert_eq!(decimal_cmp("0", "0.000"), Some(Ordering::Equal));
        assert_eq!(decimal_cmp("x", "1"), None);
    }

    #[test]
    fn an_absurd_exponent_is_unreadable_not_a_panic() {
        for huge in ["1e9223372036854775807", "12.5e9223372036854775807", "1.5e-9223372036854775808", "1e-9223372036854775808"] {
            assert_eq!(from_decimal(huge, "usd"), None, "{huge}");
            assert_eq!(decimal_cmp(huge, "1"), if huge.contains("e-") { Some(Ordering::Less) } else { None }, "{huge}");
        }
        assert_eq!(decimal_cmp("0.05e-9223372036854775808", "1"), None);
        assert_eq!(decimal_cmp("0e9223372036854775807", "0"), Some(Ordering::Equal));
        assert_eq!(from_decimal("0e9223372036854775807", "usd"), Some(0));
        // A signed IPN carrying one is stored and refused as a refund that cannot be read.
        let mut absurd = ipn("refunded");
        absurd.price_amount = Some("1e9223372036854775807".into());
        assert!(matches!(plan(&absurd, None), EventPlan::Unmatched(_)));
    }
}
