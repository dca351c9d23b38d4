//! NOWPayments: crypto invoices at checkout and verified IPNs into the same ledger and orders as
//! Stripe's events. The canonical JSON its signatures are computed over is held to Node's own
//! `JSON.stringify` on generated payloads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use serde_json::{json, Value};
use tollgate::nowpayments::canonical::canonicalize;
use tollgate::nowpayments::signature::sign;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::binary::{output_text, tollgate};
use crate::helpers::shop::{shop, stripe_shop, Shop};
use crate::helpers::{assert_problem, in_ci, skip};

/// The NOWPayments API key and IPN secret the test apps are configured with.
const NP_KEY: &str = "NP0TEST-KEY1234-ABCDEFG-HIJKLMN";
const IPN_SECRET: &str = "ipn_secret_0123456789abcdefghijkl";

/// Answers `POST /v1/invoice` like NOWPayments (the id as a number, the price as a string): a
/// new invoice per call; counts the calls.
#[derive(Clone, Default)]
struct Invoices {
    calls: Arc<AtomicUsize>,
}

impl Respond for Invoices {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let id = 4_522_625_843u64 + n as u64;
        ResponseTemplate::new(200).set_body_json(json!({
            "id": id, "token_id": "cW9kD2", "order_id": body["order_id"], "order_description": body["order_description"],
            "price_amount": body["price_amount"].to_string(), "price_currency": body["price_currency"], "pay_currency": null,
            "ipn_callback_url": body["ipn_callback_url"], "invoice_url": format!("https://nowpayments.io/payment/?iid={id}"),
            "success_url": body["success_url"], "cancel_url": body["cancel_url"], "created_at": "2026-12-01T10:00:00.000Z",
        }))
    }
}

/// A shop whose NOWPayments API is `mock`, with an invoice endpoint mounted.
async fn np_shop(mock: &MockServer) -> (Shop, Invoices) {
    let invoices = Invoices::default();
    Mock::given(method("POST")).and(path("/v1/invoice")).respond_with(invoices.clone()).mount(mock).await;
    let uri = mock.uri();
    let s =
        shop(&[("NOWPAYMENTS_API_KEY", NP_KEY), ("NOWPAYMENTS_IPN_SECRET", IPN_SECRET), ("NOWPAYMENTS_API_BASE", uri.as_str())])
            .await;
    (s, invoices)
}

/// The buyer checks `product_id` out in crypto: the answer.
async fn crypto_checkout(s: &Shop, product_id: &str) -> Value {
    let r = s.post(&s.user, "/api/v1/checkout/sessions", json!({"product_id": product_id, "provider": "nowpayments"})).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// What NOWPayments' API says about payment `payment_id` of `checkout` from now on.
async fn api_says(mock: &MockServer, checkout: &Value, payment_id: u64, status: &str) {
    Mock::given(method("GET"))
        .and(path(format!("/v1/payment/{payment_id}")))
        .and(header("x-api-key", NP_KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(payment(checkout, payment_id, status, 1_764_583_200_000)))
        .with_priority(1)
        .mount(mock)
        .await;
}

/// A payment of `checkout` (12.99 usd paid as 0.00021 btc) as NOWPayments serialises it.
fn payment(checkout: &Value, payment_id: u64, status: &str, updated_at: u64) -> Value {
    json!({
        "payment_id": payment_id, "invoice_id": checkout["checkout_session_id"].as_str().unwrap().parse::<u64>().unwrap(),
        "payment_status": status, "pay_address": "bc1qexampleaddress", "price_amount": 12.99, "price_currency": "usd",
        "pay_amount": 0.00021, "actually_paid": if status == "partially_paid" { 0.0001 } else { 0.00021 },
        "actually_paid_at_fiat": 0, "pay_currency": "btc", "order_id": checkout["order_id"], "order_description": "Credits x1",
        "purchase_id": "5837122679", "created_at": "2026-12-01T10:00:00.000Z", "updated_at": updated_at,
        "outcome_amount": 0.0002, "outcome_currency": "btc", "fee": {"currency": "btc", "depositFee": 0, "withdrawalFee": 0, "serviceFee": 0},
    })
}

/// An IPN body for `checkout` (each status its own `updated_at`, as NOWPayments sends them).
fn ipn(checkout: &Value, payment_id: u64, status: &str) -> Vec<u8> {
    let updated_at = 1_764_583_200_000 + status.len() as u64 * 1000;
    serde_json::to_vec(&payment(checkout, payment_id, status, updated_at)).unwrap()
}

/// The ledger id of IPN `body`.
fn np_id(body: &[u8]) -> String {
    tollgate::nowpayments::ipn::Payment::parse(body).unwrap().event_id()
}

/// `x-nowpayments-sig` for `body` with `secret`.
fn np_sig(body: &[u8], secret: &str) -> String {
    sign(&canonicalize(body).unwrap().1, &SecretString::from(secret))
}

async fn post_ipn(s: &Shop, body: &[u8], sig: Option<&str>) -> reqwest::Response {
    let mut r = s.app.client.post(s.app.url("/api/v1/webhooks/nowpayments")).header("content-type", "application/json");
    if let Some(sig) = sig {
        r = r.header("x-nowpayments-sig", sig);
    }
    r.body(body.to_vec()).send().await.unwrap()
}

/// Delivers a correctly signed IPN; the status answered.
async fn deliver_ipn(s: &Shop, body: &[u8]) -> u16 {
    post_ipn(s, body, Some(&np_sig(body, IPN_SECRET))).await.status().as_u16()
}

async fn ledger(s: &Shop, provider: Option<&str>) -> Vec<tollgate::store::ledger::EventRow> {
    s.app.store.list_provider_events(provider, None, None, 1000, None).await.unwrap()
}

#[tokio::test]
async fn a_crypto_purchase_goes_from_invoice_to_grant_through_verified_ipns() {
    let mock = MockServer::start().await;
    let (s, invoices) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    let invoice_id = checkout["checkout_session_id"].as_str().unwrap();
    assert_eq!(invoice_id, "4522625843", "the invoice id, answered as a number");
    assert_eq!(checkout["checkout_url"], format!("https://nowpayments.io/payment/?iid={invoice_id}"));
    // What NOWPayments received: the key, and a decimal price made from 1299 cents.
    let requests = mock.received_requests().await.unwrap();
    let invoice = requests.iter().find(|r| r.url.path() == "/v1/invoice").unwrap();
    assert_eq!(invoice.headers.get("x-api-key").unwrap(), NP_KEY);
    let raw = String::from_utf8(invoice.body.clone()).unwrap();
    assert!(raw.contains("\"price_amount\":12.99,"), "{raw}");
    let sent: Value = serde_json::from_slice(&invoice.body).unwrap();
    assert_eq!(sent["price_currency"], "usd");
    assert_eq!(sent["order_id"], order_id);
    assert_eq!(sent["order_description"], "Credits x1");
    assert!(sent["ipn_callback_url"].as_str().unwrap().ends_with("/api/v1/webhooks/nowpayments"), "{sent}");
    assert!(sent["success_url"].as_str().unwrap().contains(order_id) && sent["cancel_url"].is_string());
    assert_eq!(invoices.calls.load(Ordering::SeqCst), 1);
    let order = s.order(order_id).await;
    assert_eq!((order["status"].as_str(), order["provider"].as_str()), (Some("pending"), Some("nowpayments")));

    assert_eq!(deliver_ipn(&s, &ipn(&checkout, 5077125051, "waiting")).await, 200);
    assert_eq!(deliver_ipn(&s, &ipn(&checkout, 5077125051, "confirming")).await, 200);
    assert_eq!(s.order(order_id).await["status"], "processing");
    assert_eq!(s.entitlements().await["credit_balance"], 0);
    api_says(&mock, &checkout, 5077125051, "finished").await;
    let finished = ipn(&checkout, 5077125051, "finished");
    assert_eq!(deliver_ipn(&s, &finished).await, 200);
    assert_eq!(s.order(order_id).await["status"], "paid");
    assert_eq!(s.entitlements().await["credit_balance"], 500);
    assert_eq!(s.grants(order_id).await.len(), 1);
    // The API was asked before fulfilling, with the key.
    let asked = mock.received_requests().await.unwrap().iter().filter(|r| r.url.path() == "/v1/payment/5077125051").count();
    assert_eq!(asked, 1);

    // The same ledger as Stripe's, with the provider and the bytes as received.
    let rows = ledger(&s, Some("nowpayments")).await;
    assert_eq!(rows.len(), 3);
    assert!(ledger(&s, Some("stripe")).await.is_empty());
    let (row, history) = s.app.store.event(&np_id(&finished)).await.unwrap().expect("stored");
    assert_eq!(
        (row.payload.as_slice(), row.kind.as_str(), row.status.as_str()),
        (finished.as_slice(), "payment.finished", "processed")
    );
    assert!(history[0].detail.contains("granted ent_"), "{:?}", history);
    assert_eq!(s.event_status(&np_id(&ipn(&checkout, 5077125051, "waiting"))).await, "ignored");
    let r = s.get(&s.admin, "/api/v1/admin/events?provider=nowpayments&type=payment.finished").await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["provider"], "nowpayments");
    assert_eq!(s.get(&s.admin, "/api/v1/admin/events?provider=stripe").await.json::<Value>().await.unwrap()["data"], json!([]));
    // A re-sent IPN is a no-op, and so is a replay.
    assert_eq!(deliver_ipn(&s, &finished).await, 200);
    let replay = s.post(&s.admin, &format!("/api/v1/admin/events/{}/replay", np_id(&finished)), json!({})).await;
    assert_eq!(replay.status(), 200);
    assert_eq!(s.entitlements().await["credit_balance"], 500);
    assert_eq!(ledger(&s, None).await.len(), 3);
    // Counted under their provider on /metrics.
    let metrics = s.app.get("/metrics").await.text().await.unwrap();
    let processed = metrics
        .lines()
        .find(|l| l.starts_with(r#"tollgate_webhook_events_total{provider="nowpayments",outcome="processed"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(processed.is_some_and(|n| n >= 2.0), "{metrics}");
    // Refunds of crypto orders happen at NOWPayments; its refunded IPN revokes.
    let r = s.post(&s.admin, &format!("/api/v1/admin/orders/{order_id}/refunds"), json!({})).await;
    assert_problem(r, 409).await;
}

#[tokio::test]
async fn fifty_concurrent_deliveries_of_one_finished_ipn_grant_once() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    api_says(&mock, &checkout, 77, "finished").await;
    let body = ipn(&checkout, 77, "finished");
    let deliveries = (0..50).map(|_| deliver_ipn(&s, &body));
    let statuses = futures_util::future::join_all(deliveries).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(s.grants(checkout["order_id"].as_str().unwrap()).await.len(), 1);
    assert_eq!(s.entitlements().await["credit_balance"], 500);
    assert_eq!(ledger(&s, Some("nowpayments")).await.len(), 1);
}

fn permutations(items: &[&'static str]) -> Vec<Vec<&'static str>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first);
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn every_arrival_order_of_confirming_finished_refunded_ends_refunded_with_nothing_kept() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    for (i, order) in permutations(&["confirming", "finished", "refunded"]).into_iter().enumerate() {
        let checkout = crypto_checkout(&s, &product).await;
        let payment_id = 1000 + i as u64;
        api_says(&mock, &checkout, payment_id, "finished").await;
        for status in &order {
            assert_eq!(deliver_ipn(&s, &ipn(&checkout, payment_id, status)).await, 200, "{order:?}");
        }
        let order_id = checkout["order_id"].as_str().unwrap();
        assert_eq!(s.order(order_id).await["status"], "refunded", "{order:?}");
        assert!(s.grants(order_id).await.iter().all(|g| g.status.as_str() == "revoked"), "{order:?}");
        assert_eq!(s.entitlements().await["credit_balance"], 0, "{order:?}: the credits were clawed back (or never granted)");
    }
}

#[tokio::test]
async fn partially_paid_grants_nothing_and_finished_in_either_order_ends_paid() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    // Partially paid alone: processing, nothing granted, and the admins see how much arrived.
    let checkout = crypto_checkout(&s, &product).await;
    assert_eq!(deliver_ipn(&s, &ipn(&checkout, 500, "partially_paid")).await, 200);
    assert_eq!(s.order(checkout["order_id"].as_str().unwrap()).await["status"], "processing");
    assert_eq!(s.entitlements().await["credit_balance"], 0);
    let r = s.get(&s.admin, "/api/v1/admin/events?provider=nowpayments&type=payment.partially_paid").await;
    let id = r.json::<Value>().await.unwrap()["data"][0]["id"].as_str().unwrap().to_owned();
    let detail: Value = s.get(&s.admin, &format!("/api/v1/admin/events/{id}")).await.json().await.unwrap();
    assert!(
        detail["history"][0]["detail"].as_str().unwrap().contains("partially paid: 0.0001 btc arrived of 0.00021"),
        "{detail}"
    );
    let mut balance = 0;
    for (i, order) in permutations(&["partially_paid", "finished"]).into_iter().enumerate() {
        let checkout = crypto_checkout(&s, &product).await;
        let payment_id = 600 + i as u64;
        api_says(&mock, &checkout, payment_id, "finished").await;
        for status in &order {
            assert_eq!(deliver_ipn(&s, &ipn(&checkout, payment_id, status)).await, 200, "{order:?}");
        }
        let order_id = checkout["order_id"].as_str().unwrap();
        assert_eq!(s.order(order_id).await["status"], "paid", "{order:?}");
        balance += 500;
        assert_eq!(s.entitlements().await["credit_balance"], balance, "{order:?}");
    }
}

#[tokio::test]
async fn forged_tampered_wrong_secret_and_missing_signatures_are_400_and_store_nothing() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    api_says(&mock, &checkout, 9, "finished").await;
    let body = ipn(&checkout, 9, "finished");
    let good = np_sig(&body, IPN_SECRET);
    // Tampered: the price changed after signing.
    let tampered =
        String::from_utf8(body.clone()).unwrap().replace("\"price_amount\":12.99", "\"price_amount\":0.01").into_bytes();
    assert_ne!(tampered, body);
    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        ("forged", body.clone(), Some("ab".repeat(64))),
        ("wrong secret", body.clone(), Some(np_sig(&body, "another_secret_0123456789abcdefghij"))),
        ("tampered", tampered, Some(good.clone())),
        ("missing", body.clone(), None),
        ("not hex", body.clone(), Some("z".repeat(128))),
        ("sha256 length", body.clone(), Some("ab".repeat(32))),
    ];
    for (what, body, sig) in cases {
        let r = post_ipn(&s, &body, sig.as_deref()).await;
        assert_eq!(r.status(), 400, "{what}");
        assert_problem(r, 400).await;
    }
    assert!(ledger(&s, None).await.is_empty());
    assert_eq!(s.order(checkout["order_id"].as_str().unwrap()).await["status"], "pending");
    assert_eq!(s.entitlements().await["credit_balance"], 0);
}

#[tokio::test]
async fn whitespace_and_key_order_do_not_matter_but_duplicate_keys_and_non_objects_are_refused() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    let compact = ipn(&checkout, 31, "confirming");
    let sig = np_sig(&compact, IPN_SECRET);
    // The same IPN pretty-printed with its keys in reverse order: the same signature verifies.
    let value: serde_json::Map<String, Value> = serde_json::from_slice(&compact).unwrap();
    let reversed: Vec<String> = value
        .iter()
        .rev()
        .map(|(k, v)| format!("\n  {} :\t{}", serde_json::to_string(k).unwrap(), serde_json::to_string_pretty(v).unwrap()))
        .collect();
    let pretty = format!("{{{}\r\n}}\n", reversed.join(" ,"));
    assert_ne!(pretty.as_bytes(), compact.as_slice());
    let r = post_ipn(&s, pretty.as_bytes(), Some(&sig)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(s.order(checkout["order_id"].as_str().unwrap()).await["status"], "processing");
    let rows = ledger(&s, None).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].payload, pretty.as_bytes(), "stored as received");
    // A duplicate key: two parsers could read two different IPNs; refused before anything else.
    let text = String::from_utf8(ipn(&checkout, 32, "finished")).unwrap();
    let dup = text.replacen('{', "{\"payment_status\":\"waiting\",", 1);
    let r = post_ipn(&s, dup.as_bytes(), Some(&np_sig(text.as_bytes(), IPN_SECRET))).await;
    assert_problem(r, 400).await;
    for bad in [&b"[1,2]"[..], b"\"x\"", b"{\"a\":", b"", b"{\"payment_id\":1}"] {
        let sig = if bad.first() == Some(&b'{') && bad.last() == Some(&b'}') { np_sig(bad, IPN_SECRET) } else { "ab".repeat(64) };
        let r = post_ipn(&s, bad, Some(&sig)).await;
        assert_problem(r, 400).await;
    }
    assert_eq!(ledger(&s, None).await.len(), 1, "nothing more stored");
}

#[tokio::test]
async fn a_finished_ipn_that_the_api_calls_waiting_fulfils_nothing_until_the_api_agrees() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    // A leaked IPN secret is not enough: the API says the payment is still waiting.
    let waiting = Mock::given(method("GET"))
        .and(path("/v1/payment/41"))
        .respond_with(ResponseTemplate::new(200).set_body_json(payment(&checkout, 41, "waiting", 1)))
        .mount_as_scoped(&mock)
        .await;
    let body = ipn(&checkout, 41, "finished");
    let r = post_ipn(&s, &body, Some(&np_sig(&body, IPN_SECRET))).await;
    assert_problem(r, 502).await;
    assert_eq!(s.order(order_id).await["status"], "pending");
    assert!(s.grants(order_id).await.is_empty());
    let id = &np_id(&body);
    assert_eq!(s.event_status(id).await, "failed", "kept, not applied");
    let (_, history) = s.app.store.event(id).await.unwrap().unwrap();
    assert!(history[0].detail.contains("GET /v1/payment says waiting"), "{history:?}");
    drop(waiting);
    // NOWPayments re-sends; now the API agrees, and the same IPN fulfils.
    api_says(&mock, &checkout, 41, "finished").await;
    assert_eq!(deliver_ipn(&s, &body).await, 200);
    assert_eq!(s.order(order_id).await["status"], "paid");
    assert_eq!(s.entitlements().await["credit_balance"], 500);
}

#[tokio::test]
async fn ipns_for_no_order_of_ours_or_the_wrong_amount_are_stored_and_grant_nothing() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    // No such order.
    let mut stranger = checkout.clone();
    stranger["order_id"] = json!("ord_not_ours");
    api_says(&mock, &stranger, 51, "finished").await;
    assert_eq!(deliver_ipn(&s, &ipn(&stranger, 51, "finished")).await, 200);
    assert_eq!(s.event_status(&np_id(&ipn(&stranger, 51, "finished"))).await, "unmatched");
    // Our order, another invoice.
    let mut other_invoice = checkout.clone();
    other_invoice["checkout_session_id"] = json!("999");
    assert_eq!(deliver_ipn(&s, &ipn(&other_invoice, 52, "confirming")).await, 200);
    assert_eq!(s.event_status(&np_id(&ipn(&other_invoice, 52, "confirming"))).await, "unmatched");
    // Our order, paid 0.01 usd according to the API itself: flagged, nothing granted.
    let order_id = checkout["order_id"].as_str().unwrap();
    let mut cheap = payment(&checkout, 53, "finished", 1_764_583_208_000);
    cheap["price_amount"] = json!(0.01);
    Mock::given(method("GET"))
        .and(path("/v1/payment/53"))
        .respond_with(ResponseTemplate::new(200).set_body_json(cheap.clone()))
        .mount(&mock)
        .await;
    assert_eq!(deliver_ipn(&s, &serde_json::to_vec(&cheap).unwrap()).await, 200);
    let order = s.order(order_id).await;
    assert_eq!((order["status"].as_str(), order["flagged"].as_bool()), (Some("pending"), Some(true)), "{order}");
    assert!(s.grants(order_id).await.is_empty());
    assert_eq!(s.entitlements().await["credit_balance"], 0);
}

#[tokio::test]
async fn an_overpayment_is_recorded_on_the_ledger_and_the_order_is_fulfilled() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    let mut over = payment(&checkout, 61, "finished", 1_764_583_208_000);
    over["actually_paid"] = json!(0.0003);
    Mock::given(method("GET"))
        .and(path("/v1/payment/61"))
        .respond_with(ResponseTemplate::new(200).set_body_json(over.clone()))
        .mount(&mock)
        .await;
    assert_eq!(deliver_ipn(&s, &serde_json::to_vec(&over).unwrap()).await, 200);
    assert_eq!(s.entitlements().await["credit_balance"], 500);
    let (_, history) = s.app.store.event(&np_id(&serde_json::to_vec(&over).unwrap())).await.unwrap().unwrap();
    assert!(history[0].detail.contains("overpaid: 0.0003 btc arrived for 0.00021 asked"), "{history:?}");
}

#[tokio::test]
async fn checkout_refuses_an_unknown_or_unconfigured_provider_and_survives_nowpayments_being_down() {
    let mock = MockServer::start().await;
    // Stripe configured, NOWPayments not: a clear 422 on `provider`, no order.
    let stripe = MockServer::start().await;
    let s = stripe_shop(&stripe, &[]).await;
    let product = s.credits_product(1299, 500).await;
    let r = s.post(&s.user, "/api/v1/checkout/sessions", json!({"product_id": product, "provider": "nowpayments"})).await;
    let problem = assert_problem(r, 422).await;
    assert_eq!(problem["errors"][0]["field"], "provider", "{problem}");
    let r = s.post(&s.user, "/api/v1/checkout/sessions", json!({"product_id": product, "provider": "paypal"})).await;
    let problem = assert_problem(r, 422).await;
    assert_eq!(problem["errors"][0]["field"], "provider", "{problem}");
    assert_eq!(s.get(&s.user, "/api/v1/orders").await.json::<Value>().await.unwrap()["data"], json!([]));

    // NOWPayments down: 502, and the order is not left payable.
    Mock::given(method("POST")).and(path("/v1/invoice")).respond_with(ResponseTemplate::new(503)).mount(&mock).await;
    let uri = mock.uri();
    let s =
        shop(&[("NOWPAYMENTS_API_KEY", NP_KEY), ("NOWPAYMENTS_IPN_SECRET", IPN_SECRET), ("NOWPAYMENTS_API_BASE", uri.as_str())])
            .await;
    let product = s.credits_product(1299, 500).await;
    let r = s.post(&s.user, "/api/v1/checkout/sessions", json!({"product_id": product, "provider": "nowpayments"})).await;
    let problem = assert_problem(r, 502).await;
    assert!(!problem.to_string().contains(NP_KEY), "{problem}");
    let orders: Value = s.get(&s.user, "/api/v1/orders").await.json().await.unwrap();
    assert_eq!(orders["data"].as_array().unwrap().len(), 1);
    let order = &orders["data"][0];
    assert_eq!(
        (order["status"].as_str(), order["checkout_url"].is_null(), order["checkout_session_id"].is_null()),
        (Some("pending"), true, true)
    );
    assert_eq!(mock.received_requests().await.unwrap().len(), 1, "an invoice POST is never retried (it has no idempotency key)");
}

#[tokio::test]
async fn an_idempotency_key_makes_one_invoice() {
    let mock = MockServer::start().await;
    let (s, invoices) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let body = json!({"product_id": product, "provider": "nowpayments"});
    let send = || {
        s.app
            .client
            .post(s.app.url("/api/v1/checkout/sessions"))
            .bearer_auth(&s.user)
            .header("idempotency-key", "crypto-once")
            .json(&body)
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let second: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(first, second);
    assert_eq!(invoices.calls.load(Ordering::SeqCst), 1);
    let other = s
        .app
        .client
        .post(s.app.url("/api/v1/checkout/sessions"))
        .bearer_auth(&s.user)
        .header("idempotency-key", "crypto-once")
        .json(&json!({"product_id": product}))
        .send()
        .await
        .unwrap();
    assert_problem(other, 422).await;
}

#[tokio::test]
async fn sync_rereads_open_crypto_orders_from_the_api() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    let since = chrono::Utc::now() - chrono::Duration::minutes(1);
    assert_eq!(deliver_ipn(&s, &ipn(&checkout, 71, "confirming")).await, 200);
    // The finished IPN never arrives; the API knows.
    api_says(&mock, &checkout, 71, "finished").await;
    let report = s.app.state.payments.sync_nowpayments(since).await.unwrap();
    assert_eq!((report.seen, report.stored, report.already_had), (1, 1, 0));
    assert_eq!(s.order(order_id).await["status"], "paid");
    assert_eq!(s.entitlements().await["credit_balance"], 500);
    // Again: the order is no longer open, nothing is asked or stored.
    let report = s.app.state.payments.sync_nowpayments(since).await.unwrap();
    assert_eq!((report.seen, report.stored), (0, 0));
    assert_eq!(s.entitlements().await["credit_balance"], 500);
}

/// NOWPayments' check as their own Node SDK publishes it (`sortObjectDeep` in
/// `NowPaymentsIO/nowpayments-sdk-nodejs`, `src/ipn.js`): arrays mapped and kept as arrays, objects'
/// keys sorted recursively, then `JSON.stringify`. Written here to the same behaviour rather than
/// pasted (it is not on npm to install). Each line of the input file a JSON string holding one
/// payload's raw text.
const NODE_CANONICAL: &str = r#"
const crypto = require('crypto');
const fs = require('fs');
const sortObject = (o) => (o && typeof o === 'object')
  ? (Array.isArray(o) ? o.map(sortObject)
     : Object.keys(o).sort().reduce((r, k) => { r[k] = sortObject(o[k]); return r; }, {}))
  : o;
const payloads = JSON.parse(fs.readFileSync(process.argv[1], 'utf8'));
const out = payloads.map((p) => {
  const canonical = JSON.stringify(sortObject(JSON.parse(p)));
  return [canonical, crypto.createHmac('sha512', process.argv[2]).update(canonical).digest('hex')];
});
process.stdout.write(JSON.stringify(out));
"#;

const NUMBERS: &[&str] = &[
    "1e-7",
    "0.000001",
    "0.0000001",
    "12.99",
    "12.990000",
    "1e21",
    "1e+21",
    "1E21",
    "-0",
    "-0.0",
    "0",
    "0.0",
    "1.0e0",
    "123456789012345678901234567890",
    "9007199254740993",
    "9007199254740992",
    "-9007199254740993",
    "1E400",
    "-1e-400",
    "0.1",
    "100",
    "1.5E-10",
    "5e-324",
    "2.2250738585072014e-308",
    "1.7976931348623157e308",
    "0.30000000000000004",
    "999999999999999999999",
    "100000000000000000000",
    "1e-6",
    "1.23456789e-7",
    "0.00001234",
    "33.333333333333336",
];

const STRING_PIECES: &[&str] = &[
    "a",
    "Z",
    "0",
    " ",
    "é",
    "\u{1f600}",
    "\u{2028}",
    "\u{2029}",
    "\u{7f}",
    "\u{e000}",
    "\u{ffff}",
    "€",
    "\\u0001",
    "\\u001f",
    "\\ud800",
    "\\udc00",
    "\\ud83d\\ude00",
    "\\n",
    "\\t",
    "\\b",
    "\\f",
    "\\r",
    "\\\"",
    "\\\\",
    "\\/",
    "\\u00e9",
    "\\u2028",
    "\\u0000",
    "/",
    "<",
    "'",
];

const KEYS: &[&str] = &[
    "payment_id",
    "payment_status",
    "price_amount",
    "a",
    "B",
    "_",
    "0",
    "1",
    "9",
    "10",
    "01",
    "4294967294",
    "4294967295",
    "-1",
    "é",
    "\u{1f600}",
    "\u{e000}",
    "\\ud800",
    "z",
    "Z",
    "aa",
    "a b",
    "",
];

fn ws(rng: &mut StdRng, out: &mut String) {
    if rng.gen_bool(0.2) {
        out.push_str([" ", "\n", "\t", "\r", "  "][rng.gen_range(0..5)]);
    }
}

fn number(rng: &mut StdRng) -> String {
    match rng.gen_range(0..4) {
        0 => NUMBERS[rng.gen_range(0..NUMBERS.len())].to_owned(),
        1 => {
            let n = f64::from_bits(rng.gen());
            let n = if n.is_finite() { n } else { 1.5 };
            if rng.gen_bool(0.5) {
                format!("{n:e}")
            } else {
                format!("{n}")
            }
        }
        2 => {
            format!("{}.{:0width$}", rng.gen_range(0..100_000u64), rng.gen_range(0..100_000_000u64), width = rng.gen_range(1..9))
        }
        _ => {
            let digits: String = (0..rng.gen_range(1..25)).map(|_| char::from(b'0' + rng.gen_range(0..10u8))).collect();
            let digits = digits.trim_start_matches('0');
            let digits = if digits.is_empty() { "0" } else { digits };
            let sign = if rng.gen_bool(0.3) { "-" } else { "" };
            format!("{sign}{digits}e{}", rng.gen_range(-340..340))
        }
    }
}

fn string(rng: &mut StdRng) -> String {
    let pieces: String = (0..rng.gen_range(0..8)).map(|_| STRING_PIECES[rng.gen_range(0..STRING_PIECES.len())]).collect();
    format!("\"{pieces}\"")
}

fn value(rng: &mut StdRng, depth: usize, out: &mut String) {
    ws(rng, out);
    match rng.gen_range(0..if depth < 3 { 8 } else { 6 }) {
        0..=2 => out.push_str(&number(rng)),
        3 | 4 => out.push_str(&string(rng)),
        5 => out.push_str(["true", "false", "null"][rng.gen_range(0..3)]),
        6 => object(rng, depth + 1, out),
        _ => {
            out.push('[');
            for i in 0..rng.gen_range(0..4) {
                if i > 0 {
                    out.push(',');
                }
                value(rng, depth + 1, out);
            }
            ws(rng, out);
            out.push(']');
        }
    }
    ws(rng, out);
}

fn object(rng: &mut StdRng, depth: usize, out: &mut String) {
    out.push('{');
    let mut keys: Vec<&str> = KEYS.to_vec();
    for i in 0..rng.gen_range(0..8) {
        if i > 0 {
            out.push(',');
        }
        ws(rng, out);
        let key = keys.swap_remove(rng.gen_range(0..keys.len()));
        out.push_str(&format!("\"{key}\""));
        ws(rng, out);
        out.push(':');
        value(rng, depth, out);
    }
    ws(rng, out);
    out.push('}');
}

#[test]
fn the_canonical_form_is_byte_for_byte_what_node_json_stringify_writes() {
    const TEST: &str = "the_canonical_form_is_byte_for_byte_what_node_json_stringify_writes";
    let node_ok = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !node_ok {
        assert!(!in_ci(), "node is required in CI");
        skip(TEST, "node is not installed");
        return;
    }
    let mut rng = StdRng::seed_from_u64(14);
    let payloads: Vec<String> = (0..2000)
        .map(|_| {
            let mut out = String::new();
            ws(&mut rng, &mut out);
            object(&mut rng, 0, &mut out);
            ws(&mut rng, &mut out);
            out
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payloads.json");
    std::fs::write(&file, serde_json::to_vec(&payloads).unwrap()).unwrap();
    let secret = "ipn_secret_for_the_node_comparison";
    let output = std::process::Command::new("node").arg("-e").arg(NODE_CANONICAL).arg(&file).arg(secret).output().unwrap();
    assert!(output.status.success(), "node failed: {}", String::from_utf8_lossy(&output.stderr));
    let node: Vec<(String, String)> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(node.len(), payloads.len());
    let secret = SecretString::from(secret);
    let (mut awkward_numbers, mut escapes) = (0, 0);
    for (payload, (node_canonical, node_hmac)) in payloads.iter().zip(&node) {
        let (_, ours) = canonicalize(payload.as_bytes()).unwrap_or_else(|e| panic!("{e}: {payload}"));
        assert_eq!(&ours, node_canonical, "payload: {payload}");
        assert_eq!(&sign(&ours, &secret), node_hmac);
        awkward_numbers += usize::from(ours.contains("e-") || ours.contains("e+"));
        escapes += usize::from(ours.contains("\\u"));
    }
    // The generator did reach the cases that matter.
    assert!(awkward_numbers > 200 && escapes > 200, "{awkward_numbers} {escapes}");
}

/// Opens the sandbox's invoice page of `checkout` and presses `choice`; the page's text and the
/// status the choice answered.
async fn sandbox_invoice(s: &Shop, checkout: &Value, choice: &str) -> (String, u16) {
    let page = url::Url::parse(checkout["checkout_url"].as_str().unwrap()).unwrap();
    assert!(page.path().starts_with("/sandbox/nowpayments/"), "{page}");
    let text = s.app.client.get(s.app.url(page.path())).send().await.unwrap().text().await.unwrap();
    let form = s.app.client.post(s.app.url(page.path())).header("content-type", "application/x-www-form-urlencoded");
    (text, form.body(format!("choice={choice}")).send().await.unwrap().status().as_u16())
}

#[tokio::test]
async fn the_sandbox_sells_in_crypto_end_to_end_with_signed_ipns_and_its_own_status_api() {
    // Development without NOWPayments keys: the sandbox stands in for it.
    let s = shop(&[]).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    let (page, status) = sandbox_invoice(&s, &checkout, "pay").await;
    assert!(page.contains("12.99 USD") && page.contains(order_id), "{page}");
    assert_eq!(status, 200);
    assert_eq!(s.order(order_id).await["status"], "paid");
    assert_eq!(s.entitlements().await["credit_balance"], 500);
    // The IPNs came over HTTP, signed, into the ledger: confirming, then finished (re-checked
    // with the sandbox's GET /v1/payment before it fulfilled).
    let rows = ledger(&s, Some("nowpayments")).await;
    let kinds: Vec<(&str, &str)> = rows.iter().rev().map(|r| (r.kind.as_str(), r.status.as_str())).collect();
    assert_eq!(kinds, [("payment.confirming", "processed"), ("payment.finished", "processed")]);
    assert!(!rows[0].livemode);
    // Paid once: the page says so and refuses a second choice.
    let (page, status) = sandbox_invoice(&s, &checkout, "pay").await;
    assert!(page.contains("finished"), "{page}");
    assert_eq!(status, 409);

    let partial = crypto_checkout(&s, &product).await;
    assert_eq!(sandbox_invoice(&s, &partial, "partial").await.1, 200);
    assert_eq!(s.order(partial["order_id"].as_str().unwrap()).await["status"], "processing");
    let expired = crypto_checkout(&s, &product).await;
    assert_eq!(sandbox_invoice(&s, &expired, "expire").await.1, 200);
    assert_eq!(s.order(expired["order_id"].as_str().unwrap()).await["status"], "expired");
    assert_eq!(s.entitlements().await["credit_balance"], 500, "only the paid invoice granted");
}

#[tokio::test]
async fn the_nowpayments_sync_command_applies_what_the_api_says() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    assert_eq!(deliver_ipn(&s, &ipn(&checkout, 81, "confirming")).await, 200);
    api_says(&mock, &checkout, 81, "finished").await;
    let dir = tempfile::tempdir().unwrap();
    let uri = mock.uri();
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let env = [
        ("DATABASE_URL", s.app.database_url.as_str()),
        ("NOWPAYMENTS_API_KEY", NP_KEY),
        ("NOWPAYMENTS_IPN_SECRET", IPN_SECRET),
        ("NOWPAYMENTS_API_BASE", uri.as_str()),
    ];
    for (run, expected) in ["1 open payments asked, 1 stored", "0 open payments asked, 0 stored"].into_iter().enumerate() {
        let out = tollgate(dir.path(), &env).args(["nowpayments", "sync", "--since", &since]).output().unwrap();
        let text = output_text(&out);
        assert!(out.status.success(), "{text}");
        assert!(text.contains(expected), "run {run}: {text}");
        assert!(!text.contains(NP_KEY) && !text.contains(IPN_SECRET), "{text}");
    }
    assert_eq!(s.order(order_id).await["status"], "paid");
    assert_eq!(s.entitlements().await["credit_balance"], 500);
    let asked = mock.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == "/v1/payment/81").count();
    assert_eq!(asked, 1, "the sync asked once (its answer is the confirmation)");
    // Without keys it says what it needs.
    let out = tollgate(dir.path(), &[("DATABASE_URL", s.app.database_url.as_str())])
        .args(["nowpayments", "sync", "--since", &since])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(output_text(&out).contains("needs NOWPAYMENTS_API_KEY"), "{}", output_text(&out));
}

#[tokio::test]
async fn an_ipn_signed_by_node_as_nowpayments_signs_verifies_awkward_numbers_and_all() {
    const TEST: &str = "an_ipn_signed_by_node_as_nowpayments_signs_verifies_awkward_numbers_and_all";
    let node_ok = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !node_ok {
        assert!(!in_ci(), "node is required in CI");
        skip(TEST, "node is not installed");
        return;
    }
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    // Raw text with what a float printer could get wrong: 1e-7, 0.000001, an integer beyond 2^53,
    // a unicode escape and U+2028, keys out of order, whitespace.
    let body = format!(
        "{{ \"updated_at\": 1764583200000, \"payment_status\": \"confirming\", \"pay_amount\": 1E-7,\n \"actually_paid\": 0.0000010,\
         \"outcome_amount\": 12345678901234567890, \"order_description\": \"caf\\u00e9 \u{2028} \\ud83d\\ude00\",\
         \"invoice_id\": {}, \"order_id\": \"{}\", \"payment_id\": 91, \"price_amount\": 12.990, \"price_currency\": \"usd\",\
         \"pay_currency\": \"btc\", \"fee\": {{\"serviceFee\": 0, \"currency\": \"btc\"}} }}",
        checkout["checkout_session_id"].as_str().unwrap(),
        checkout["order_id"].as_str().unwrap()
    );
    // NOWPayments' SDK's sortObjectDeep behaviour (see NODE_CANONICAL), then its HMAC.
    let script = r#"
const crypto = require('crypto');
const sortObject = (o) => (o && typeof o === 'object')
  ? (Array.isArray(o) ? o.map(sortObject) : Object.keys(o).sort().reduce((r, k) => { r[k] = sortObject(o[k]); return r; }, {}))
  : o;
const body = require('fs').readFileSync(0, 'utf8');
process.stdout.write(crypto.createHmac('sha512', process.argv[1]).update(JSON.stringify(sortObject(JSON.parse(body)))).digest('hex'));
"#;
    let mut child = std::process::Command::new("node")
        .arg("-e")
        .arg(script)
        .arg(IPN_SECRET)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let node_sig = String::from_utf8(out.stdout).unwrap();
    assert_eq!(node_sig.len(), 128);
    let r = post_ipn(&s, body.as_bytes(), Some(&node_sig)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(s.order(checkout["order_id"].as_str().unwrap()).await["status"], "processing");
    assert_eq!(ledger(&s, Some("nowpayments")).await[0].payload, body.as_bytes());
}

/// The API answers `body` for payment `payment_id` (until the guard is dropped, or [`api_says`]
/// mounts an answer that takes precedence).
async fn api_answers(mock: &MockServer, payment_id: u64, body: Value) -> wiremock::MockGuard {
    Mock::given(method("GET"))
        .and(path(format!("/v1/payment/{payment_id}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .with_priority(2)
        .mount_as_scoped(mock)
        .await
}

#[tokio::test]
async fn a_finished_ipn_whose_payment_the_api_ties_to_another_order_or_to_none_grants_nothing() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    // With the IPN secret leaked: a real finished payment of the same price, made for another
    // order of ours...
    let other = crypto_checkout(&s, &product).await;
    let _api = api_answers(&mock, 71, payment(&other, 71, "finished", 1_764_583_208_000)).await;
    let r = post_ipn(&s, &ipn(&checkout, 71, "finished"), Some(&np_sig(&ipn(&checkout, 71, "finished"), IPN_SECRET))).await;
    assert_problem(r, 502).await;
    // ...or made with no order id at all (NOWPayments answers `"order_id": null`)...
    let mut orderless = payment(&checkout, 72, "finished", 1_764_583_208_000);
    orderless["order_id"] = Value::Null;
    let _api = api_answers(&mock, 72, orderless).await;
    let r = post_ipn(&s, &ipn(&checkout, 72, "finished"), Some(&np_sig(&ipn(&checkout, 72, "finished"), IPN_SECRET))).await;
    assert_problem(r, 502).await;
    // ...or for our order but another invoice: none of them fulfils the order the IPN names.
    let mut elsewhere = payment(&checkout, 73, "finished", 1_764_583_208_000);
    elsewhere["invoice_id"] = json!(1);
    let _api = api_answers(&mock, 73, elsewhere).await;
    let r = post_ipn(&s, &ipn(&checkout, 73, "finished"), Some(&np_sig(&ipn(&checkout, 73, "finished"), IPN_SECRET))).await;
    assert_problem(r, 502).await;
    assert_eq!(s.order(order_id).await["status"], "pending");
    assert!(s.grants(order_id).await.is_empty());
    assert!(s.grants(other["order_id"].as_str().unwrap()).await.is_empty());
    assert_eq!(s.entitlements().await["credit_balance"], 0);
    let held = ledger(&s, Some("nowpayments")).await;
    assert_eq!(held.len(), 3);
    assert!(held.iter().all(|row| row.status.as_str() == "failed"), "held, not applied");
}

#[tokio::test]
async fn one_payment_pays_one_order_and_an_order_is_paid_by_one_payment() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let first = crypto_checkout(&s, &product).await;
    let second = crypto_checkout(&s, &product).await;
    let (first_id, second_id) = (first["order_id"].as_str().unwrap(), second["order_id"].as_str().unwrap());
    Mock::given(method("GET"))
        .and(path("/v1/payment/81"))
        .respond_with(ResponseTemplate::new(200).set_body_json(payment(&first, 81, "finished", 1_764_583_208_000)))
        .with_priority(2)
        .up_to_n_times(1)
        .mount(&mock)
        .await;
    assert_eq!(deliver_ipn(&s, &ipn(&first, 81, "finished")).await, 200);
    assert_eq!(s.order(first_id).await["status"], "paid");
    assert_eq!(s.order(first_id).await["payment_intent_id"], "81", "the payment id is kept on the order");
    // The same payment id against the second order, even with an API that (wrongly) agrees:
    // the id is already the first order's, so nothing is granted for the second.
    let replayed = payment(&second, 81, "finished", 1_764_583_209_000);
    let _lying = api_answers(&mock, 81, replayed.clone()).await;
    let status = deliver_ipn(&s, &serde_json::to_vec(&replayed).unwrap()).await;
    let rows = ledger(&s, Some("nowpayments")).await;
    let histories: Vec<String> = futures_util::future::join_all(rows.iter().map(|r| s.app.store.event(&r.event_id)))
        .await
        .into_iter()
        .map(|e| format!("{:?}", e.unwrap().unwrap().1))
        .collect();
    assert_eq!(status, 200, "{histories:?}");
    assert_eq!(s.order(second_id).await["status"], "pending");
    assert!(s.grants(second_id).await.is_empty());
    assert_eq!(s.entitlements().await["credit_balance"], 500, "one payment, one grant");
    // A second payment for the first order is not applied to it either.
    let _api = api_answers(&mock, 82, payment(&first, 82, "finished", 1_764_583_210_000)).await;
    assert_eq!(deliver_ipn(&s, &serde_json::to_vec(&payment(&first, 82, "finished", 1_764_583_210_000)).unwrap()).await, 200);
    let rows = ledger(&s, Some("nowpayments")).await;
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "unmatched").count(), 2, "{statuses:?}");
    assert_eq!(s.order(first_id).await["payment_intent_id"], "81");
    assert_eq!(s.grants(first_id).await.len(), 1);
}

#[tokio::test]
async fn an_ipn_naming_a_stripe_order_changes_nothing_and_a_stripe_event_never_moves_a_crypto_order() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    // A Stripe order, paid and granted.
    let card = s.checkout(&product).await;
    let card_id = card["order_id"].as_str().unwrap();
    let (_, body) = crate::helpers::shop::completed(&card, 1299);
    assert_eq!(s.deliver(&body).await, 200);
    assert_eq!(s.order(card_id).await["status"], "paid");
    // With the IPN secret: "refunded", "failed" and "expired" IPNs that name it, its session too.
    for (n, status) in ["refunded", "failed", "expired"].into_iter().enumerate() {
        let forged = json!({"payment_id": 90 + n, "invoice_id": card["checkout_session_id"], "order_id": card_id,
            "payment_status": status, "price_amount": 12.99, "price_currency": "usd", "updated_at": 1_764_583_200_000u64});
        assert_eq!(deliver_ipn(&s, &serde_json::to_vec(&forged).unwrap()).await, 200);
    }
    let order = s.order(card_id).await;
    assert_eq!((order["status"].as_str(), order["provider"].as_str()), (Some("paid"), Some("stripe")), "{order}");
    assert_eq!(s.grants(card_id).await[0].status.as_str(), "active");
    assert_eq!(s.entitlements().await["credit_balance"], 500);
    let rows = ledger(&s, Some("nowpayments")).await;
    assert!(rows.iter().all(|r| r.status.as_str() == "unmatched"), "{rows:?}");

    // A crypto order: a Stripe event naming it (its order id, its invoice as the session) moves nothing.
    let crypto = crypto_checkout(&s, &product).await;
    let crypto_id = crypto["order_id"].as_str().unwrap();
    let (paid_id, body) = crate::helpers::shop::completed(&crypto, 1299);
    assert_eq!(s.deliver(&body).await, 200);
    let (expired_id, body) = crate::helpers::shop::expired(&crypto);
    assert_eq!(s.deliver(&body).await, 200);
    assert_eq!(s.order(crypto_id).await["status"], "pending");
    assert!(s.grants(crypto_id).await.is_empty());
    assert_eq!((s.event_status(&paid_id).await, s.event_status(&expired_id).await), ("unmatched".into(), "unmatched".into()));
    assert_eq!(s.entitlements().await["credit_balance"], 500);
}

#[tokio::test]
async fn an_ipn_and_the_apis_answer_about_the_same_update_are_one_ledger_row() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    let since = chrono::Utc::now() - chrono::Duration::minutes(1);
    let confirming = ipn(&checkout, 75, "confirming");
    assert_eq!(deliver_ipn(&s, &confirming).await, 200);
    // The API says the same (the IPN's milliseconds as ISO 8601 text, as the API writes them).
    let ms = serde_json::from_slice::<Value>(&confirming).unwrap()["updated_at"].as_i64().unwrap();
    let mut answer = payment(&checkout, 75, "confirming", 0);
    answer["updated_at"] =
        json!(chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let _api = api_answers(&mock, 75, answer).await;
    let report = s.app.state.payments.sync_nowpayments(since).await.unwrap();
    assert_eq!((report.seen, report.stored, report.already_had), (1, 0, 1));
    assert_eq!(ledger(&s, Some("nowpayments")).await.len(), 1, "one fact, one row");
    assert_eq!(s.order(checkout["order_id"].as_str().unwrap()).await["status"], "processing");
}

#[tokio::test]
async fn a_held_ipn_resent_again_and_again_asks_the_api_at_most_three_times_a_minute() {
    let mock = MockServer::start().await;
    let (s, _) = np_shop(&mock).await;
    let product = s.credits_product(1299, 500).await;
    let checkout = crypto_checkout(&s, &product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    let since = chrono::Utc::now() - chrono::Duration::minutes(1);
    let pid = 4_242_424_242u64;
    let waiting = api_answers(&mock, pid, payment(&checkout, pid, "waiting", 1)).await;
    let body = ipn(&checkout, pid, "finished");
    for _ in 0..6 {
        assert_problem(post_ipn(&s, &body, Some(&np_sig(&body, IPN_SECRET))).await, 502).await;
    }
    let replay = s.post(&s.admin, &format!("/api/v1/admin/events/{}/replay", np_id(&body)), json!({})).await;
    assert_eq!(replay.status(), 200);
    let asked = || async {
        mock.received_requests().await.unwrap().iter().filter(|r| r.url.path() == format!("/v1/payment/{pid}")).count()
    };
    assert_eq!(asked().await, 3, "seven re-checks of one held payment, three questions");
    let (row, history) = s.app.store.event(&np_id(&body)).await.unwrap().unwrap();
    assert_eq!(row.status.as_str(), "failed");
    assert!(history.iter().any(|h| h.detail.contains("already checked 3 times in the last minute")), "{history:?}");
    assert_eq!(s.order(order_id).await["status"], "pending");
    // Nothing is lost: the sync asks once more and applies what the API now says.
    drop(waiting);
    api_says(&mock, &checkout, pid, "finished").await;
    let report = s.app.state.payments.sync_nowpayments(since).await.unwrap();
    assert_eq!(report.seen, 1);
    assert_eq!(s.order(order_id).await["status"], "paid", "{report:?}");
    assert_eq!(asked().await, 4);
}
