//! Payments end to end: the catalog, checkout against a mocked Stripe (wiremock, asserting what
//! Stripe receives), events built from Stripe's fixtures and signed like Stripe signs them, the
//! order state machine under any arrival order, exactly-once fulfilment under concurrency, refunds,
//! disputes, replay, the sandbox, and `stripe sync`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tollgate::domain::account::Role;
use tollgate::stripe::webhook::sign;
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::accounts::{register, tokens, PASSWORD};
use crate::helpers::binary::{output_text, tollgate};
use crate::helpers::stripe::{deliver, event, fixture, fixture_with, WHSEC};
use crate::helpers::{assert_problem, spawn_app_with, TestApp};

const SK: &str = "sk_test_tollgate0123456789abcdefghijklmnop";

struct Shop {
    app: TestApp,
    admin: String,
    user: String,
    user_id: String,
}

async fn bearer_for(app: &TestApp, email: &str, role: Role) -> (String, String) {
    let user = register(app, email).await;
    let id = user["id"].as_str().unwrap().to_owned();
    if role == Role::Admin {
        app.store.update_user_flags(None, &id, Some(role), None, chrono::Utc::now()).await.unwrap();
    }
    (tokens(app, email, PASSWORD).await.0, id)
}

/// An app with a known webhook secret: the sandbox provider unless `extra` configures Stripe.
async fn shop(extra: &[(&str, &str)]) -> Shop {
    let mut env = vec![("STRIPE_WEBHOOK_SECRET", WHSEC)];
    env.extend_from_slice(extra);
    let app = spawn_app_with(&env).await;
    let (admin, _) = bearer_for(&app, "admin@example.com", Role::Admin).await;
    let (user, user_id) = bearer_for(&app, "buyer@example.com", Role::User).await;
    Shop { app, admin, user, user_id }
}

async fn stripe_shop(mock: &MockServer, extra: &[(&str, &str)]) -> Shop {
    let uri = mock.uri();
    let mut env = vec![("STRIPE_SECRET_KEY", SK), ("STRIPE_API_BASE", uri.as_str())];
    env.extend_from_slice(extra);
    shop(&env).await
}

impl Shop {
    async fn send(&self, method: reqwest::Method, token: &str, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut r = self.app.client.request(method, self.app.url(path)).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap()
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> reqwest::Response {
        self.send(reqwest::Method::POST, token, path, Some(body)).await
    }

    async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, token, path, None).await
    }

    async fn product(&self, body: Value) -> String {
        let r = self.post(&self.admin, "/api/v1/admin/products", body).await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    async fn credits_product(&self, amount: i64, credits: i64) -> String {
        self.product(
            json!({"name": "Credits", "amount": amount, "currency": "usd", "grant": {"kind": "credits", "amount": credits}}),
        )
        .await
    }

    async fn checkout(&self, product_id: &str) -> Value {
        let r = self.post(&self.user, "/api/v1/checkout/sessions", json!({"product_id": product_id})).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    async fn order(&self, id: &str) -> Value {
        let r = self.get(&self.user, &format!("/api/v1/orders/{id}")).await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn entitlements(&self) -> Value {
        let r = self.get(&self.user, "/api/v1/me/entitlements").await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn deliver(&self, body: &[u8]) -> u16 {
        deliver(&self.app, body, &sign(body, WHSEC, chrono::Utc::now().timestamp())).await.status().as_u16()
    }

    /// Grants the database holds for `order_id` (the UNIQUE constraint says at most one).
    async fn grants(&self, order_id: &str) -> Vec<tollgate::store::payments::GrantRow> {
        self.app.store.grants_for_user(&self.user_id).await.unwrap().into_iter().filter(|g| g.order_id == order_id).collect()
    }

    /// Presses a button on the sandbox's checkout page for `checkout`.
    async fn sandbox(&self, checkout: &Value, choice: &str) -> u16 {
        let page = url::Url::parse(checkout["checkout_url"].as_str().unwrap()).unwrap();
        let form = self.app.client.post(self.app.url(page.path())).header("content-type", "application/x-www-form-urlencoded");
        form.body(format!("choice={choice}")).send().await.unwrap().status().as_u16()
    }

    async fn event_status(&self, id: &str) -> String {
        self.app.store.event(id).await.unwrap().expect("in the ledger").0.status.as_str().to_owned()
    }
}

fn pi_of(order_id: &str) -> String {
    format!("pi_for_{order_id}")
}

fn session_fields(checkout: &Value, status: &str, payment_status: &str, amount: i64, currency: &str) -> Value {
    let order_id = checkout["order_id"].as_str().unwrap();
    json!({
        "id": checkout["checkout_session_id"], "client_reference_id": order_id, "metadata": {"order_id": order_id},
        "status": status, "payment_status": payment_status, "amount_total": amount, "currency": currency,
        "payment_intent": pi_of(order_id),
    })
}

fn completed(checkout: &Value, amount: i64) -> (String, Vec<u8>) {
    event("checkout.session.completed", "checkout.session")
        .with(session_fields(checkout, "complete", "paid", amount, "usd"))
        .build()
}

fn expired(checkout: &Value) -> (String, Vec<u8>) {
    event("checkout.session.expired", "checkout.session").with(session_fields(checkout, "expired", "unpaid", 0, "usd")).build()
}

fn refunded(checkout: &Value, amount: i64, amount_refunded: i64) -> (String, Vec<u8>) {
    let order_id = checkout["order_id"].as_str().unwrap();
    event("charge.refunded", "charge").with(json!({"id": format!("ch_for_{order_id}"), "amount": amount, "amount_captured": amount, "amount_refunded": amount_refunded,
               "currency": "usd", "payment_intent": pi_of(order_id), "metadata": {"order_id": order_id},
               "refunded": amount_refunded >= amount, "captured": true})).build()
}

fn dispute(checkout: &Value, kind: &str, status: &str) -> (String, Vec<u8>) {
    let order_id = checkout["order_id"].as_str().unwrap();
    event(kind, "dispute")
        .with(json!({"charge": format!("ch_for_{order_id}"), "payment_intent": pi_of(order_id), "status": status}))
        .build()
}

/// Answers `POST /v1/checkout/sessions` like Stripe: a new session per call, for the order the
/// form names; counts the calls.
#[derive(Clone, Default)]
struct StripeCheckout {
    calls: Arc<AtomicUsize>,
}

fn form(request: &Request) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&request.body).into_owned().collect()
}

fn form_value(request: &Request, key: &str) -> Option<String> {
    form(request).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

impl Respond for StripeCheckout {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut session = fixture("checkout.session");
        let id = format!("cs_test_{}", uuid::Uuid::new_v4().simple());
        session["id"] = json!(id);
        session["url"] = json!(format!("https://checkout.stripe.com/c/pay/{id}"));
        session["client_reference_id"] = json!(form_value(request, "client_reference_id"));
        session["metadata"] = json!({"order_id": form_value(request, "metadata[order_id]")});
        session["expires_at"] = json!(form_value(request, "expires_at").and_then(|v| v.parse::<i64>().ok()));
        ResponseTemplate::new(200).set_body_json(session)
    }
}

async fn mock_checkout(mock: &MockServer) -> StripeCheckout {
    let responder = StripeCheckout::default();
    Mock::given(method("POST")).and(path("/v1/checkout/sessions")).respond_with(responder.clone()).mount(mock).await;
    responder
}

#[tokio::test]
async fn the_catalog_is_admin_managed_and_a_price_change_makes_a_new_version() {
    let s = shop(&[]).await;
    let body = json!({"name": "Pro, 30 days", "amount": 1999, "currency": "usd",
                      "grant": {"kind": "access", "feature": "pro", "duration_days": 30}});
    // Only admins write the catalog.
    assert_problem(s.post(&s.user, "/api/v1/admin/products", body.clone()).await, 403).await;
    let anonymous = s.app.client.post(s.app.url("/api/v1/admin/products")).json(&body).send().await.unwrap();
    assert_problem(anonymous, 401).await;
    // Bad input: precise field errors, nothing stored.
    let bad = json!({"name": "", "amount": 0, "currency": "USD", "grant": {"kind": "credits", "amount": -5}});
    let problem = assert_problem(s.post(&s.admin, "/api/v1/admin/products", bad).await, 422).await;
    let fields: Vec<&str> = problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["name", "amount", "currency", "grant.amount"]);
    let float = json!({"name": "x", "amount": 19.99, "currency": "usd", "grant": {"kind": "credits", "amount": 5}});
    assert!(s.post(&s.admin, "/api/v1/admin/products", float).await.status().is_client_error(), "money is never a float");
    assert_eq!(s.app.store.list_products(false, 10, None).await.unwrap().len(), 0);

    let id = s.product(body).await;
    let listed: Value = s.app.client.get(s.app.url("/api/v1/products")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"][0]["id"], id.as_str(), "anyone can list the catalog");
    assert_eq!(listed["data"][0]["amount"], 1999);
    assert_eq!(listed["data"][0]["version"], 1);

    // An order at the old price keeps it after the price changes.
    let checkout = s.checkout(&id).await;
    let r =
        s.send(reqwest::Method::PATCH, &s.admin, &format!("/api/v1/admin/products/{id}"), Some(json!({"amount": 2999}))).await;
    assert_eq!(r.status(), 200);
    let changed: Value = r.json().await.unwrap();
    assert_eq!((changed["amount"].as_i64(), changed["version"].as_i64()), (Some(2999), Some(2)));
    let renamed =
        s.send(reqwest::Method::PATCH, &s.admin, &format!("/api/v1/admin/products/{id}"), Some(json!({"name": "Pro"}))).await;
    assert_eq!(renamed.json::<Value>().await.unwrap()["version"], 2, "a new name is not a new price");
    let order = s.order(checkout["order_id"].as_str().unwrap()).await;
    assert_eq!((order["amount"].as_i64(), order["product_version"].as_i64()), (Some(1999), Some(1)));
    // Paid at the price it was created with: not flagged, granted.
    assert_eq!(s.deliver(&completed(&checkout, 1999).1).await, 200);
    let order = s.order(checkout["order_id"].as_str().unwrap()).await;
    assert_eq!((order["status"].as_str(), order["flagged"].as_bool()), (Some("paid"), Some(false)));

    // Deactivated: not listed, not for sale.
    let r =
        s.send(reqwest::Method::PATCH, &s.admin, &format!("/api/v1/admin/products/{id}"), Some(json!({"active": false}))).await;
    assert_eq!(r.status(), 200);
    let listed: Value = s.app.client.get(s.app.url("/api/v1/products")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 0);
    let problem = assert_problem(s.post(&s.user, "/api/v1/checkout/sessions", json!({"product_id": id})).await, 422).await;
    assert_eq!(problem["errors"][0]["field"], "product_id");
    let unknown = s.send(reqwest::Method::PATCH, &s.admin, "/api/v1/admin/products/pr_nope", Some(json!({"name": "x"}))).await;
    assert_problem(unknown, 404).await;
}

#[tokio::test]
async fn checkout_sends_stripe_the_catalog_amount_with_an_idempotency_key_and_never_the_clients() {
    let mock = MockServer::start().await;
    let stripe = mock_checkout(&mock).await;
    let s = stripe_shop(&mock, &[]).await;
    let product = s.credits_product(1500, 100).await;

    // The client cannot name an amount.
    let r = s.post(&s.user, "/api/v1/checkout/sessions", json!({"product_id": product, "amount": 1})).await;
    assert!(r.status().is_client_error());
    assert_eq!(stripe.calls.load(Ordering::SeqCst), 0, "nothing sent to Stripe");

    let r = s.post(&s.user, "/api/v1/checkout/sessions", json!({"product_id": product, "quantity": 2})).await;
    assert_eq!(r.status(), 201);
    let out: Value = r.json().await.unwrap();
    let order_id = out["order_id"].as_str().unwrap();
    assert!(out["checkout_url"].as_str().unwrap().starts_with("https://checkout.stripe.com/"));

    let requests = mock.received_requests().await.unwrap();
    let sent = requests.iter().find(|r| r.url.path() == "/v1/checkout/sessions").unwrap();
    assert_eq!(sent.headers.get("authorization").unwrap(), &format!("Bearer {SK}"));
    assert_eq!(sent.headers.get("idempotency-key").unwrap(), &format!("tollgate-checkout-{order_id}"));
    assert_eq!(sent.headers.get("stripe-version").unwrap(), "2024-06-20");
    assert_eq!(sent.headers.get("content-type").unwrap(), "application/x-www-form-urlencoded");
    let value = |k: &str| form_value(sent, k).unwrap_or_else(|| panic!("form field {k}"));
    assert_eq!(value("mode"), "payment");
    assert_eq!(value("line_items[0][price_data][unit_amount]"), "1500");
    assert_eq!(value("line_items[0][price_data][currency]"), "usd");
    assert_eq!(value("line_items[0][quantity]"), "2");
    assert_eq!(value("client_reference_id"), order_id);
    assert_eq!(value("metadata[order_id]"), order_id);
    assert_eq!(value("payment_intent_data[metadata][order_id]"), order_id);
    assert!(value("success_url").contains(order_id));
    let expires = value("expires_at").parse::<i64>().unwrap() - chrono::Utc::now().timestamp();
    assert!((3500..=3610).contains(&expires), "one hour by default: {expires}");

    let order = s.order(order_id).await;
    assert_eq!(order["status"], "pending");
    assert_eq!(order["amount"], 3000, "the catalog's amount times the quantity");
    // A quantity whose grant would pass the largest one order may give is refused up front.
    let big = s.credits_product(100, 50_000_000).await;
    let problem =
        assert_problem(s.post(&s.user, "/api/v1/checkout/sessions", json!({"product_id": big, "quantity": 21})).await, 422).await;
    assert_eq!(problem["errors"][0]["field"], "quantity");
    assert_eq!(stripe.calls.load(Ordering::SeqCst), 1, "nothing more sent to Stripe");
    assert_eq!(order["checkout_session_id"], out["checkout_session_id"]);
    assert_eq!(order["grant"], json!({"kind": "credits", "amount": 200}));
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body() {
    let mock = MockServer::start().await;
    let stripe = mock_checkout(&mock).await;
    let s = stripe_shop(&mock, &[]).await;
    let product = s.credits_product(500, 10).await;
    let other = s.credits_product(700, 10).await;
    let post = |body: Value, key: &'static str| {
        let s = &s;
        async move {
            s.app
                .client
                .post(s.app.url("/api/v1/checkout/sessions"))
                .bearer_auth(&s.user)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let first = post(json!({"product_id": product}), "order-42").await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = post(json!({"product_id": product}), "order-42").await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first, "the first answer again");
    assert_eq!(stripe.calls.load(Ordering::SeqCst), 1, "one session at Stripe");
    let problem = assert_problem(post(json!({"product_id": other}), "order-42").await, 422).await;
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(s.app.store.list_orders(None, 100, None).await.unwrap().len(), 1, "one order");
    // Another user's identical key is theirs, not a replay of ours.
    let (other_user, _) = bearer_for(&s.app, "other@example.com", Role::User).await;
    let r = s
        .app
        .client
        .post(s.app.url("/api/v1/checkout/sessions"))
        .bearer_auth(&other_user)
        .header("idempotency-key", "order-42")
        .json(&json!({"product_id": product}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_ne!(r.json::<Value>().await.unwrap()["order_id"], first["order_id"]);
    let bad_key = s.app.client.post(s.app.url("/api/v1/checkout/sessions")).bearer_auth(&s.user).header("idempotency-key", "");
    assert_problem(bad_key.json(&json!({"product_id": product})).send().await.unwrap(), 422).await;
}

#[tokio::test]
async fn stripe_failures_are_retried_with_the_same_key_then_answered_502_without_internals() {
    let mock = MockServer::start().await;
    // Two 500s, then success: one session, three attempts with one Idempotency-Key.
    Mock::given(method("POST"))
        .and(path("/v1/checkout/sessions"))
        .respond_with(
            ResponseTemplate::new(500).set_body_json(json!({"error": {"type": "api_error", "message": "internal sk_test_x"}})),
        )
        .up_to_n_times(2)
        .mount(&mock)
        .await;
    let stripe = mock_checkout(&mock).await;
    let s = stripe_shop(&mock, &[]).await;
    let product = s.credits_product(500, 10).await;
    let out = s.checkout(&product).await;
    let attempts: Vec<_> =
        mock.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == "/v1/checkout/sessions").collect();
    assert_eq!(attempts.len(), 3);
    let keys: std::collections::HashSet<_> = attempts.iter().map(|r| r.headers.get("idempotency-key").unwrap().clone()).collect();
    assert_eq!(keys.len(), 1, "every retry carries the same key");
    assert_eq!(stripe.calls.load(Ordering::SeqCst), 1);
    assert!(out["checkout_session_id"].as_str().unwrap().starts_with("cs_test_"));

    // A card error is not retried and reaches the client as a 502 with nothing of Stripe's in it.
    mock.reset().await;
    Mock::given(method("POST"))
        .and(path("/v1/checkout/sessions"))
        .respond_with(ResponseTemplate::new(400).insert_header("stripe-should-retry", "false").set_body_json(
            json!({"error": {"type": "invalid_request_error", "code": "parameter_invalid", "message": "No such price; key sk_test_leak"}}),
        ))
        .expect(1)
        .mount(&mock)
        .await;
    let r = s.post(&s.user, "/api/v1/checkout/sessions", json!({"product_id": product})).await;
    let problem = assert_problem(r, 502).await;
    let text = problem.to_string();
    assert!(!text.contains("sk_test") && !text.contains("No such price") && !text.contains("parameter_invalid"), "{text}");
    mock.verify().await;
}

#[tokio::test]
async fn fifty_concurrent_deliveries_of_one_completion_grant_exactly_once() {
    let s = shop(&[]).await;
    let product = s.credits_product(1000, 500).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap().to_owned();
    let (event_id, body) = completed(&checkout, 1000);
    let body = Arc::new(body);
    let deliveries: Vec<_> = (0..50)
        .map(|_| {
            let (app_body, client, url) = (body.clone(), s.app.client.clone(), s.app.url("/api/v1/webhooks/stripe"));
            tokio::spawn(async move {
                let signature = sign(&app_body, WHSEC, chrono::Utc::now().timestamp());
                let r = client.post(url).header("stripe-signature", signature).body(app_body.to_vec()).send().await.unwrap();
                r.status().as_u16()
            })
        })
        .collect();
    for d in deliveries {
        assert_eq!(d.await.unwrap(), 200);
    }
    // Ten more events that each say the same order was paid, concurrently, still one grant.
    let more: Vec<_> = (0..10).map(|_| completed(&checkout, 1000).1).collect();
    let results = futures_util::future::join_all(more.iter().map(|b| s.deliver(b))).await;
    assert!(results.iter().all(|r| *r == 200));
    assert_eq!(s.grants(&order_id).await.len(), 1);
    assert_eq!(s.event_status(&event_id).await, "processed");
    assert_eq!(s.app.store.event(&event_id).await.unwrap().unwrap().1.len(), 1, "one history entry: duplicates are no-ops");
    assert_eq!(s.order(&order_id).await["status"], "paid");
    assert_eq!(s.entitlements().await["credit_balance"], 500);
}

#[tokio::test]
async fn every_arrival_order_of_completed_refunded_expired_ends_refunded_with_nothing_granted() {
    let s = shop(&[]).await;
    let product = s
        .product(json!({"name": "Pro", "amount": 1000, "currency": "usd",
                                    "grant": {"kind": "access", "feature": "pro", "duration_days": 30}}))
        .await;
    let orders: [[usize; 3]; 6] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    for permutation in orders {
        let checkout = s.checkout(&product).await;
        let events = [completed(&checkout, 1000), refunded(&checkout, 1000, 1000), expired(&checkout)];
        for i in permutation {
            assert_eq!(s.deliver(&events[i].1).await, 200, "{permutation:?}");
        }
        let order_id = checkout["order_id"].as_str().unwrap();
        let order = s.order(order_id).await;
        assert_eq!(order["status"], "refunded", "{permutation:?}");
        assert_eq!(order["amount_refunded"], 1000);
        // Granted then revoked when the completion came first; never granted when the refund did.
        let completion_first = permutation.iter().position(|i| *i == 0) < permutation.iter().position(|i| *i == 1);
        let grants = s.grants(order_id).await;
        assert_eq!(grants.len(), usize::from(completion_first), "{permutation:?}");
        assert!(grants.iter().all(|g| g.status.as_str() == "revoked"), "{permutation:?}");
        for (id, _) in &events {
            assert_eq!(s.event_status(id).await, "processed");
        }
    }
    assert_eq!(s.entitlements().await, json!({"access": [], "credit_balance": 0}));
}

#[tokio::test]
async fn the_success_page_and_the_webhook_racing_fulfil_once() {
    let mock = MockServer::start().await;
    mock_checkout(&mock).await;
    let s = stripe_shop(&mock, &[]).await;
    let product = s.credits_product(1000, 50).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap().to_owned();
    // Stripe says the session is complete and paid.
    let session = fixture_with("checkout.session", session_fields(&checkout, "complete", "paid", 1000, "usd"));
    Mock::given(method("GET"))
        .and(path_regex(r"^/v1/checkout/sessions/cs_test_[0-9a-f]+$"))
        .and(header("authorization", format!("Bearer {SK}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(session))
        .mount(&mock)
        .await;
    let events: Vec<_> = (0..10).map(|_| completed(&checkout, 1000).1).collect();
    let page = format!("/api/v1/orders/{order_id}");
    let pages = futures_util::future::join_all((0..10).map(|_| s.get(&s.user, &page)));
    let hooks = futures_util::future::join_all(events.iter().map(|b| s.deliver(b)));
    let (pages, hooks) = tokio::join!(pages, hooks);
    assert!(pages.iter().all(|r| r.status() == 200));
    assert!(hooks.iter().all(|r| *r == 200));
    assert_eq!(s.grants(&order_id).await.len(), 1);
    assert_eq!(s.order(&order_id).await["status"], "paid");
    assert_eq!(s.entitlements().await["credit_balance"], 50);
}

#[tokio::test]
async fn the_success_page_alone_fulfils_a_paid_order() {
    let mock = MockServer::start().await;
    mock_checkout(&mock).await;
    let s = stripe_shop(&mock, &[]).await;
    let product = s.credits_product(1000, 50).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    let mut session = fixture_with("checkout.session", session_fields(&checkout, "open", "unpaid", 1000, "usd"));
    let open = Mock::given(method("GET"))
        .and(path_regex(r"^/v1/checkout/sessions/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(&session));
    let guard = open.mount_as_scoped(&mock).await;
    assert_eq!(s.order(order_id).await["status"], "pending", "still open at Stripe");
    drop(guard);
    session["status"] = json!("complete");
    session["payment_status"] = json!("paid");
    Mock::given(method("GET"))
        .and(path_regex(r"^/v1/checkout/sessions/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(&session))
        .mount(&mock)
        .await;
    assert_eq!(s.order(order_id).await["status"], "paid");
    assert_eq!(s.grants(order_id).await.len(), 1);
    // The webhook arriving afterwards finds it done.
    let (event_id, body) = completed(&checkout, 1000);
    assert_eq!(s.deliver(&body).await, 200);
    assert_eq!(s.event_status(&event_id).await, "processed");
    assert_eq!(s.grants(order_id).await.len(), 1);
}

#[tokio::test]
async fn a_payment_that_does_not_match_the_order_flags_it_and_grants_nothing() {
    let s = shop(&[]).await;
    let product = s.credits_product(1000, 500).await;
    let cheap = s.checkout(&product).await;
    assert_eq!(s.deliver(&completed(&cheap, 1).1).await, 200);
    let euro = s.checkout(&product).await;
    let body = event("checkout.session.completed", "checkout.session")
        .with(session_fields(&euro, "complete", "paid", 1000, "eur"))
        .build()
        .1;
    assert_eq!(s.deliver(&body).await, 200);
    for checkout in [&cheap, &euro] {
        let order_id = checkout["order_id"].as_str().unwrap();
        let order = s.order(order_id).await;
        assert_eq!(order["flagged"], true);
        assert!(order["flag_reason"].as_str().unwrap().contains("flagged"));
        assert_ne!(order["status"], "paid");
        assert!(s.grants(order_id).await.is_empty());
    }
    assert_eq!(s.entitlements().await["credit_balance"], 0);
}

async fn execute(database_url: &str, sql: &str) {
    use sqlx::Connection;
    if database_url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
    }
}

#[tokio::test]
async fn an_event_whose_processing_failed_is_kept_answered_500_and_processed_on_redelivery() {
    let s = shop(&[]).await;
    let product = s.credits_product(1000, 500).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    // Break fulfilment from outside: the database refuses grants.
    let sqlite = s.app.database_url.starts_with("sqlite:");
    if sqlite {
        execute(
            &s.app.database_url,
            "CREATE TRIGGER no_grants BEFORE INSERT ON grants BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .await;
    } else {
        execute(
            &s.app.database_url,
            "CREATE FUNCTION no_grants() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
             CREATE TRIGGER no_grants BEFORE INSERT ON grants FOR EACH ROW EXECUTE FUNCTION no_grants();",
        )
        .await;
    }
    let (event_id, body) = completed(&checkout, 1000);
    assert_eq!(s.deliver(&body).await, 500, "Stripe will retry");
    let (row, history) = s.app.store.event(&event_id).await.unwrap().expect("kept in the ledger");
    assert_eq!(row.status.as_str(), "failed");
    assert_eq!(row.payload, body);
    assert!(history.last().unwrap().detail.contains("processing failed"));
    assert_eq!(s.order(order_id).await["status"], "pending", "rolled back whole");
    assert!(s.grants(order_id).await.is_empty());

    execute(&s.app.database_url, if sqlite { "DROP TRIGGER no_grants;" } else { "DROP TRIGGER no_grants ON grants;" }).await;
    assert_eq!(s.deliver(&body).await, 200, "Stripe's retry");
    let (row, history) = s.app.store.event(&event_id).await.unwrap().unwrap();
    assert_eq!(row.status.as_str(), "processed");
    assert!(history.last().unwrap().detail.contains("processed again after a failure"));
    assert_eq!(s.grants(order_id).await.len(), 1);
    assert_eq!(s.deliver(&body).await, 200);
    assert_eq!(s.grants(order_id).await.len(), 1);
}

#[tokio::test]
async fn orders_are_private_to_their_owner_and_admins() {
    let s = shop(&[]).await;
    let product = s.credits_product(1000, 5).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    let (intruder, _) = bearer_for(&s.app, "intruder@example.com", Role::User).await;
    assert_problem(s.get(&intruder, &format!("/api/v1/orders/{order_id}")).await, 404).await;
    assert_problem(s.get(&intruder, "/api/v1/orders/ord_doesnotexist").await, 404).await;
    let theirs: Value = s.get(&intruder, "/api/v1/orders").await.json().await.unwrap();
    assert_eq!(theirs["data"].as_array().unwrap().len(), 0);
    assert_problem(s.get(&intruder, &format!("/api/v1/orders?user_id={}", s.user_id)).await, 403).await;
    let mine: Value = s.get(&s.user, "/api/v1/orders").await.json().await.unwrap();
    assert_eq!(mine["data"][0]["id"], order_id);
    let admin_view: Value = s.get(&s.admin, &format!("/api/v1/orders?user_id={}", s.user_id)).await.json().await.unwrap();
    assert_eq!(admin_view["data"][0]["id"], order_id);
    assert_eq!(s.get(&s.admin, &format!("/api/v1/orders/{order_id}")).await.status(), 200);
    // Refunds are for admins only.
    let r = s.post(&intruder, &format!("/api/v1/admin/orders/{order_id}/refunds"), json!({})).await;
    assert_problem(r, 403).await;
    assert_problem(s.app.client.get(s.app.url("/api/v1/orders")).send().await.unwrap(), 401).await;
}

#[tokio::test]
async fn admin_refunds_go_to_stripe_once_and_the_refund_event_revokes_or_keeps_the_grant() {
    let mock = MockServer::start().await;
    mock_checkout(&mock).await;
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(|request: &Request| {
            let mut refund = fixture("refund");
            refund["id"] = json!(format!("re_{}", uuid::Uuid::new_v4().simple()));
            refund["amount"] = json!(form_value(request, "amount").unwrap().parse::<i64>().unwrap());
            refund["payment_intent"] = json!(form_value(request, "payment_intent"));
            ResponseTemplate::new(200).set_body_json(refund)
        })
        .mount(&mock)
        .await;
    let s = stripe_shop(&mock, &[]).await;
    let product = s.credits_product(1000, 100).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    let refunds = format!("/api/v1/admin/orders/{order_id}/refunds");
    assert_problem(s.post(&s.admin, &refunds, json!({})).await, 409).await;
    assert_eq!(s.deliver(&completed(&checkout, 1000).1).await, 200);

    assert_problem(s.post(&s.admin, &refunds, json!({"amount": 1001})).await, 422).await;
    assert_problem(s.post(&s.admin, &refunds, json!({"reason": "because"})).await, 422).await;
    let r = s.post(&s.admin, &refunds, json!({"amount": 300, "reason": "requested_by_customer"})).await;
    assert_eq!(r.status(), 201);
    let refund: Value = r.json().await.unwrap();
    assert!(refund["stripe_refund_id"].as_str().unwrap().starts_with("re_"));
    let sent = mock.received_requests().await.unwrap().into_iter().find(|r| r.url.path() == "/v1/refunds").unwrap();
    assert_eq!(form_value(&sent, "payment_intent").unwrap(), pi_of(order_id));
    assert_eq!(form_value(&sent, "amount").unwrap(), "300");
    assert_eq!(form_value(&sent, "reason").unwrap(), "requested_by_customer");
    assert_eq!(sent.headers.get("idempotency-key").unwrap(), &format!("tollgate-refund-{}", refund["id"].as_str().unwrap()));

    // Stripe's charge.refunded: partial keeps the grant and records the amount.
    assert_eq!(s.deliver(&refunded(&checkout, 1000, 300).1).await, 200);
    let order = s.order(order_id).await;
    assert_eq!((order["status"].as_str(), order["amount_refunded"].as_i64()), (Some("partially_refunded"), Some(300)));
    assert_eq!(s.entitlements().await["credit_balance"], 100);
    // The rest, in full: the grant goes.
    let r = s.post(&s.admin, &refunds, json!({})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["amount"], 700, "what was left");
    assert_eq!(s.deliver(&refunded(&checkout, 1000, 1000).1).await, 200);
    assert_eq!(s.order(order_id).await["status"], "refunded");
    assert_eq!(s.grants(order_id).await[0].status.as_str(), "revoked");
    assert_eq!(s.entitlements().await["credit_balance"], 0);
    assert_problem(s.post(&s.admin, &refunds, json!({})).await, 409).await;
    let audit = s.app.store.list_audit(100).await.unwrap();
    assert_eq!(audit.iter().filter(|e| e.action == "order.refund").count(), 2);
}

#[tokio::test]
async fn a_dispute_suspends_the_grant_a_won_one_restores_it_a_lost_one_revokes_it() {
    let s = shop(&[]).await;
    for (outcome, restored) in [("won", true), ("lost", false)] {
        let grant = json!({"kind": "access", "feature": format!("pro-{outcome}"), "duration_days": null});
        let product = s.product(json!({"name": "Pro", "amount": 1000, "currency": "usd", "grant": grant})).await;
        let checkout = s.checkout(&product).await;
        let order_id = checkout["order_id"].as_str().unwrap();
        let has_access = || async {
            let e = s.entitlements().await;
            e["access"].as_array().unwrap().iter().any(|a| a["order_id"] == order_id)
        };
        assert_eq!(s.deliver(&completed(&checkout, 1000).1).await, 200);
        assert!(has_access().await);
        assert_eq!(s.deliver(&dispute(&checkout, "charge.dispute.created", "needs_response").1).await, 200);
        assert_eq!(s.order(order_id).await["status"], "disputed");
        assert!(!has_access().await, "suspended while disputed");
        assert_eq!(s.deliver(&dispute(&checkout, "charge.dispute.closed", outcome).1).await, 200);
        assert_eq!(has_access().await, restored, "{outcome}");
        assert_eq!(s.order(order_id).await["status"], if restored { "paid" } else { "disputed" });
        assert_eq!(s.grants(order_id).await[0].status.as_str(), if restored { "active" } else { "revoked" });
    }
}

#[tokio::test]
async fn a_delayed_payment_is_processing_until_it_succeeds_or_fails() {
    let s = shop(&[]).await;
    let product = s.credits_product(1000, 10).await;
    for (last, status, granted) in
        [("checkout.session.async_payment_succeeded", "paid", 1), ("checkout.session.async_payment_failed", "failed", 0)]
    {
        let checkout = s.checkout(&product).await;
        let order_id = checkout["order_id"].as_str().unwrap();
        let unpaid = session_fields(&checkout, "complete", "unpaid", 1000, "usd");
        assert_eq!(s.deliver(&event("checkout.session.completed", "checkout.session").with(unpaid).build().1).await, 200);
        assert_eq!(s.order(order_id).await["status"], "processing");
        assert!(s.grants(order_id).await.is_empty());
        let settled = session_fields(&checkout, "complete", "paid", 1000, "usd");
        assert_eq!(s.deliver(&event(last, "checkout.session").with(settled).build().1).await, 200);
        assert_eq!(s.order(order_id).await["status"], status);
        assert_eq!(s.grants(order_id).await.len(), granted);
    }
}

#[tokio::test]
async fn access_bought_twice_is_extended_not_overlapped() {
    let s = shop(&[]).await;
    let product = s
        .product(json!({"name": "Pro", "amount": 1000, "currency": "usd",
                                    "grant": {"kind": "access", "feature": "pro", "duration_days": 30}}))
        .await;
    for _ in 0..2 {
        let checkout = s.checkout(&product).await;
        assert_eq!(s.deliver(&completed(&checkout, 1000).1).await, 200);
    }
    let access = s.entitlements().await["access"].clone();
    let ends: Vec<chrono::DateTime<chrono::Utc>> =
        access.as_array().unwrap().iter().map(|a| a["expires_at"].as_str().unwrap().parse().unwrap()).collect();
    let last = ends.iter().max().unwrap();
    let days = (*last - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((59.9..=60.1).contains(&days), "{days} days of access");
}

#[tokio::test]
async fn replaying_an_event_is_idempotent_and_admin_only() {
    let s = shop(&[]).await;
    let product = s.credits_product(1000, 10).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    let (event_id, body) = completed(&checkout, 1000);
    assert_eq!(s.deliver(&body).await, 200);
    let replay = format!("/api/v1/admin/events/{event_id}/replay");
    assert_problem(s.post(&s.user, &replay, json!({})).await, 403).await;
    for _ in 0..3 {
        let r = s.send(reqwest::Method::POST, &s.admin, &replay, None).await;
        assert_eq!(r.status(), 200);
        let detail: Value = r.json().await.unwrap();
        assert_eq!(detail["status"], "processed");
        assert!(detail["history"].as_array().unwrap().last().unwrap()["detail"].as_str().unwrap().starts_with("replayed by"));
    }
    assert_eq!(s.grants(order_id).await.len(), 1);
    assert_eq!(s.entitlements().await["credit_balance"], 10);
    assert_problem(s.send(reqwest::Method::POST, &s.admin, "/api/v1/admin/events/evt_nope/replay", None).await, 404).await;
    // An event for no known order is kept as unmatched, ready for a replay.
    let (lonely_id, lonely) =
        event("checkout.session.completed", "checkout.session").with(json!({"metadata": {"order_id": "ord_unknown"}})).build();
    assert_eq!(s.deliver(&lonely).await, 200);
    assert_eq!(s.event_status(&lonely_id).await, "unmatched");
}

#[tokio::test]
async fn a_live_mode_event_under_a_test_key_is_stored_and_not_applied() {
    let s = shop(&[]).await;
    let product = s.credits_product(1000, 10).await;
    let checkout = s.checkout(&product).await;
    let (id, body) = completed(&checkout, 1000);
    let mut live: Value = serde_json::from_slice(&body).unwrap();
    live["livemode"] = json!(true);
    let live = serde_json::to_vec(&live).unwrap();
    assert_eq!(s.deliver(&live).await, 200);
    assert_eq!(s.event_status(&id).await, "ignored");
    assert_eq!(s.order(checkout["order_id"].as_str().unwrap()).await["status"], "pending");
}

#[tokio::test]
async fn checkouts_are_rate_limited_per_user() {
    let s = shop(&[("TOLLGATE_CHECKOUT_LIMIT", "2")]).await;
    let product = s.credits_product(1000, 10).await;
    s.checkout(&product).await;
    s.checkout(&product).await;
    let r = s.post(&s.user, "/api/v1/checkout/sessions", json!({"product_id": product})).await;
    assert!(r.headers().get("retry-after").is_some());
    assert_problem(r, 429).await;
    let (other, _) = bearer_for(&s.app, "other@example.com", Role::User).await;
    let r = s.post(&other, "/api/v1/checkout/sessions", json!({"product_id": product})).await;
    assert_eq!(r.status(), 201, "another user has their own allowance");
}

#[tokio::test]
async fn a_purchase_in_the_sandbox_goes_through_our_own_webhook() {
    let s = shop(&[]).await;
    let product = s.credits_product(1999, 500).await;
    let checkout = s.checkout(&product).await;
    let url = checkout["checkout_url"].as_str().unwrap();
    assert!(url.contains("/sandbox/checkout/cs_test_sandbox_"), "{url}");
    let page_path = url::Url::parse(url).unwrap().path().to_owned();
    let page = s.app.get(&page_path).await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("19.99 USD") && html.contains("value=\"pay\""));
    assert_eq!(s.sandbox(&checkout, "pay").await, 200);
    let order_id = checkout["order_id"].as_str().unwrap();
    assert_eq!(s.order(order_id).await["status"], "paid");
    assert_eq!(s.entitlements().await["credit_balance"], 500);
    let events = s
        .app
        .store
        .list_events(Some("checkout.session.completed"), Some(tollgate::domain::ledger::EventStatus::Processed), 10, None)
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "a signed event through the webhook endpoint");
    assert_eq!(s.sandbox(&checkout, "pay").await, 409, "paid once");

    // Refunds in the sandbox come back as charge.refunded too.
    let r = s.post(&s.admin, &format!("/api/v1/admin/orders/{order_id}/refunds"), json!({})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(s.order(order_id).await["status"], "refunded");
    assert_eq!(s.entitlements().await["credit_balance"], 0);

    // A declined card leaves the checkout open, as Stripe's page does; another try can pay.
    let declined = s.checkout(&product).await;
    assert_eq!(s.sandbox(&declined, "decline").await, 200);
    assert_eq!(s.order(declined["order_id"].as_str().unwrap()).await["status"], "pending");
    let failed = s.app.store.list_events(Some("payment_intent.payment_failed"), None, 10, None).await.unwrap();
    assert_eq!(failed.len(), 1, "the decline reached the webhook");
    assert_eq!(s.sandbox(&declined, "pay").await, 200);
    assert_eq!(s.order(declined["order_id"].as_str().unwrap()).await["status"], "paid");
    // Cancelling expires it.
    let canceled = s.checkout(&product).await;
    assert_eq!(s.sandbox(&canceled, "cancel").await, 200);
    assert_eq!(s.order(canceled["order_id"].as_str().unwrap()).await["status"], "expired");
    assert_eq!(s.sandbox(&canceled, "bogus").await, 400);
    assert_eq!(s.app.get("/sandbox/checkout/cs_test_unknown").await.status(), 404);
}

#[tokio::test]
async fn a_replayed_payment_intent_returns_its_client_secret_which_is_never_readable_at_rest() {
    let s = shop(&[]).await;
    let product = s.credits_product(900, 10).await;
    let key = uuid::Uuid::new_v4().to_string();
    let post = || {
        s.app
            .client
            .post(s.app.url("/api/v1/payment-intents"))
            .bearer_auth(&s.user)
            .header("idempotency-key", &key)
            .json(&json!({"product_id": product}))
            .send()
    };
    let first = post().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let secret = first["client_secret"].as_str().unwrap().to_owned();
    assert!(secret.contains("_secret_"));
    let again = post().await.unwrap();
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first, "the same client_secret again");

    // What the database holds: neither the key nor the secret, in any readable form.
    let rows: Vec<(String, Vec<u8>)> = match s.app.store.engine() {
        tollgate::store::Engine::Sqlite => {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&s.app.database_url).await.unwrap();
            sqlx::query_as("SELECT key, response FROM idempotency_keys").fetch_all(&mut c).await.unwrap()
        }
        tollgate::store::Engine::Postgres => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&s.app.database_url).await.unwrap();
            sqlx::query_as("SELECT key, response FROM idempotency_keys").fetch_all(&mut c).await.unwrap()
        }
    };
    assert_eq!(rows.len(), 1);
    let (stored_key, response) = &rows[0];
    assert_ne!(stored_key, &key, "the key is stored as a hash");
    assert!(!stored_key.contains(&key));
    let secret_bytes = secret.as_bytes();
    assert!(!response.windows(secret_bytes.len()).any(|w| w == secret_bytes), "the client_secret is sealed");
    assert!(!String::from_utf8_lossy(response).contains("_secret_"));
}

#[tokio::test]
async fn the_payment_intent_flow_creates_an_order_and_its_events_fulfil_it() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/payment_intents"))
        .respond_with(|request: &Request| {
            let mut intent = fixture("payment_intent");
            let id = format!("pi_{}", uuid::Uuid::new_v4().simple());
            intent["client_secret"] = json!(format!("{id}_secret_abc"));
            intent["id"] = json!(id);
            intent["amount"] = json!(form_value(request, "amount").unwrap().parse::<i64>().unwrap());
            intent["metadata"] = json!({"order_id": form_value(request, "metadata[order_id]")});
            ResponseTemplate::new(200).set_body_json(intent)
        })
        .mount(&mock)
        .await;
    let s = stripe_shop(&mock, &[]).await;
    let product = s.credits_product(1200, 30).await;
    let r = s.post(&s.user, "/api/v1/payment-intents", json!({"product_id": product})).await;
    assert_eq!(r.status(), 201);
    let out: Value = r.json().await.unwrap();
    let sent = mock.received_requests().await.unwrap().into_iter().find(|r| r.url.path() == "/v1/payment_intents").unwrap();
    let order_id = out["order_id"].as_str().unwrap();
    assert_eq!(form_value(&sent, "amount").unwrap(), "1200");
    assert_eq!(sent.headers.get("idempotency-key").unwrap(), &format!("tollgate-payment-intent-{order_id}"));
    let pi = out["payment_intent_id"].as_str().unwrap();
    let (_, body) = event("payment_intent.succeeded", "payment_intent")
        .with(
            json!({"id": pi, "amount": 1200, "amount_received": 1200, "currency": "usd", "status": "succeeded", "metadata": {}}),
        )
        .build();
    assert_eq!(s.deliver(&body).await, 200, "matched by the payment intent id alone");
    assert_eq!(s.order(order_id).await["status"], "paid");
    assert_eq!(s.entitlements().await["credit_balance"], 30);
}

#[tokio::test]
async fn stripe_sync_fills_a_gap_in_the_ledger_without_doubling_anything() {
    let mock = MockServer::start().await;
    mock_checkout(&mock).await;
    let s = stripe_shop(&mock, &[]).await;
    let product = s.credits_product(1000, 40).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap().to_owned();
    // One event arrived by webhook; the completion was lost while we were down.
    let (seen_id, seen) = event("customer.created", "customer").build();
    assert_eq!(s.deliver(&seen).await, 200);
    let (lost_id, lost) = completed(&checkout, 1000);
    let (other_id, other) = event("plan.created", "plan").build();
    let as_value = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
    // Newest first, two pages, as Stripe's Events API answers.
    Mock::given(method("GET"))
        .and(path("/v1/events"))
        .and(wiremock::matchers::query_param("starting_after", lost_id.as_str()))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": [as_value(&seen)], "has_more": false})),
        )
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/events"))
        .and(header("authorization", format!("Bearer {SK}").as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"object": "list", "data": [as_value(&other), as_value(&lost)], "has_more": true})),
        )
        .mount(&mock)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let uri = mock.uri();
    let env = [("DATABASE_URL", s.app.database_url.as_str()), ("STRIPE_SECRET_KEY", SK), ("STRIPE_API_BASE", uri.as_str())];
    for run in 0..2 {
        let out = tollgate(dir.path(), &env).args(["stripe", "sync", "--since", "7d"]).output().unwrap();
        let text = output_text(&out);
        assert!(out.status.success(), "{text}");
        let expected = if run == 0 {
            "3 events seen, 2 stored, 1 already in the ledger"
        } else {
            "3 events seen, 0 stored, 3 already in the ledger"
        };
        assert!(text.contains(expected), "{text}");
        assert!(text.contains("syncing Stripe events since"), "a progress line: {text}");
    }
    let lists: Vec<_> = mock.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == "/v1/events").collect();
    let since = lists[0].url.query_pairs().find(|(k, _)| k == "created[gte]").unwrap().1.parse::<i64>().unwrap();
    assert!((chrono::Utc::now().timestamp() - since - 7 * 86400).abs() < 60);
    assert_eq!(s.event_status(&lost_id).await, "processed");
    assert_eq!(s.event_status(&other_id).await, "ignored");
    assert_eq!(s.event_status(&seen_id).await, "ignored");
    assert_eq!(s.grants(&order_id).await.len(), 1);
    assert_eq!(s.order(&order_id).await["status"], "paid");

    // And `events replay` from the command line: idempotent too.
    let out = tollgate(dir.path(), &env).args(["events", "replay", &lost_id]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("processed"));
    assert_eq!(s.grants(&order_id).await.len(), 1);
    let out = tollgate(dir.path(), &env).args(["events", "replay", "evt_nope"]).output().unwrap();
    assert!(!out.status.success() && output_text(&out).contains("no event evt_nope"));
}

#[tokio::test]
async fn different_events_for_one_order_at_once_lose_nothing() {
    let s = shop(&[]).await;
    let product = s.credits_product(1000, 10).await;
    for _ in 0..5 {
        let checkout = s.checkout(&product).await;
        let order_id = checkout["order_id"].as_str().unwrap();
        assert_eq!(s.deliver(&completed(&checkout, 1000).1).await, 200);
        // A partial refund and a dispute, delivered together: each must survive the other.
        let refund = refunded(&checkout, 1000, 300).1;
        let opened = dispute(&checkout, "charge.dispute.created", "needs_response").1;
        let (a, b) = tokio::join!(s.deliver(&refund), s.deliver(&opened));
        assert_eq!((a, b), (200, 200));
        let order = s.order(order_id).await;
        assert_eq!(order["amount_refunded"], 300, "the refund was not lost");
        assert_eq!(order["status"], "disputed", "the dispute was not lost");
        assert_eq!(s.grants(order_id).await[0].status.as_str(), "suspended");
    }
}

#[tokio::test]
async fn a_payment_elsewhere_that_names_an_order_cannot_touch_it() {
    let s = shop(&[]).await;
    let product = s.credits_product(1000, 10).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    // A Payment Link or another session whose client_reference_id / metadata names our order.
    let mut fields = session_fields(&checkout, "complete", "paid", 1000, "usd");
    fields["id"] = json!("cs_test_somewhere_else");
    fields["payment_intent"] = json!("pi_somewhere_else");
    let (id, body) = event("checkout.session.completed", "checkout.session").with(fields).build();
    assert_eq!(s.deliver(&body).await, 200);
    let (row, history) = s.app.store.event(&id).await.unwrap().unwrap();
    assert_eq!(row.status.as_str(), "unmatched");
    assert!(history[0].detail.contains("not that order's"), "{}", history[0].detail);
    let order = s.order(order_id).await;
    assert_eq!((order["status"].as_str(), order["flagged"].as_bool()), (Some("pending"), Some(false)));
    assert!(s.grants(order_id).await.is_empty());
}

#[tokio::test]
async fn refunding_the_first_of_two_access_purchases_moves_the_second_up() {
    let s = shop(&[]).await;
    let product = s
        .product(json!({"name": "Pro", "amount": 1000, "currency": "usd",
                                    "grant": {"kind": "access", "feature": "pro", "duration_days": 30}}))
        .await;
    let first = s.checkout(&product).await;
    assert_eq!(s.deliver(&completed(&first, 1000).1).await, 200);
    let second = s.checkout(&product).await;
    assert_eq!(s.deliver(&completed(&second, 1000).1).await, 200);
    let days_left = |e: Value| {
        let ends = e["access"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["expires_at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap());
        (ends.max().unwrap() - chrono::Utc::now()).num_minutes() as f64 / 1440.0
    };
    assert!((59.9..=60.1).contains(&days_left(s.entitlements().await)));
    assert_eq!(s.deliver(&refunded(&first, 1000, 1000).1).await, 200);
    let e = s.entitlements().await;
    assert_eq!(e["access"].as_array().unwrap().len(), 1);
    assert_eq!(e["access"][0]["order_id"], second["order_id"]);
    assert!((29.9..=30.1).contains(&days_left(e)), "one paid period left, starting now");
}

#[tokio::test]
async fn a_refund_retried_with_its_idempotency_key_after_stripe_failed_is_made_once() {
    let mock = MockServer::start().await;
    mock_checkout(&mock).await;
    // Stripe fails three times (one whole call with its retries), then answers.
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(|request: &Request| {
            let mut refund = fixture("refund");
            refund["id"] = json!("re_made_once");
            refund["amount"] = json!(form_value(request, "amount").unwrap().parse::<i64>().unwrap());
            ResponseTemplate::new(200).set_body_json(refund)
        })
        .mount(&mock)
        .await;
    let s = stripe_shop(&mock, &[]).await;
    let product = s.credits_product(1000, 10).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap().to_owned();
    assert_eq!(s.deliver(&completed(&checkout, 1000).1).await, 200);
    let refund = |key: &'static str, amount: i64| {
        let (client, url, admin) =
            (s.app.client.clone(), s.app.url(&format!("/api/v1/admin/orders/{order_id}/refunds")), s.admin.clone());
        async move {
            client
                .post(url)
                .bearer_auth(admin)
                .header("idempotency-key", key)
                .json(&json!({"amount": amount}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_problem(refund("refund-1", 300).await, 502).await;
    // Its outcome is unknown, so it counts: 800 more could exceed what was paid.
    assert_problem(refund("refund-2", 800).await, 422).await;
    let r = refund("refund-1", 300).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["stripe_refund_id"], "re_made_once");
    let sent: Vec<_> = mock.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == "/v1/refunds").collect();
    assert_eq!(sent.len(), 4, "three failed attempts and the retry");
    let keys: std::collections::HashSet<_> = sent.iter().map(|r| r.headers.get("idempotency-key").unwrap().clone()).collect();
    assert_eq!(keys.len(), 1, "one key at Stripe for one refund: Stripe cannot make it twice");
    let rows = s.app.store.refunds_for_order(&order_id).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status.as_str(), "succeeded");
    assert_eq!(form_value(&sent[3], "metadata[refund_id]").unwrap(), rows[0].id, "Stripe's refund names ours");
    // The same key for another amount is refused, not silently answered with the first refund.
    let problem = assert_problem(refund("refund-1", 200).await, 422).await;
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");

    // Without a key, repeating the request whose outcome was unknown repeats the same refund.
    mock.reset().await;
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(|request: &Request| {
            let mut refund = fixture("refund");
            refund["id"] = json!(format!("re_for_{}", form_value(request, "metadata[refund_id]").unwrap()));
            refund["amount"] = json!(form_value(request, "amount").unwrap().parse::<i64>().unwrap());
            ResponseTemplate::new(200).set_body_json(refund)
        })
        .mount(&mock)
        .await;
    let path = format!("/api/v1/admin/orders/{order_id}/refunds");
    assert_problem(s.post(&s.admin, &path, json!({"amount": 200})).await, 502).await;
    assert_eq!(s.post(&s.admin, &path, json!({"amount": 200})).await.status(), 201);
    let sent: Vec<_> = mock.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == "/v1/refunds").collect();
    let keys: std::collections::HashSet<_> = sent.iter().map(|r| r.headers.get("idempotency-key").unwrap().clone()).collect();
    assert_eq!((sent.len(), keys.len()), (4, 1), "the repeat carried the first attempt's key");
    assert_eq!(s.app.store.refunds_for_order(&order_id).await.unwrap().len(), 2);
    // Asked again within the minute without a key: a double click, the same refund.
    let again: Value = s.post(&s.admin, &path, json!({"amount": 200})).await.json().await.unwrap();
    assert_eq!(again["stripe_refund_id"].as_str().unwrap().len(), "re_for_rf_".len() + 24);
    assert_eq!(s.app.store.refunds_for_order(&order_id).await.unwrap().len(), 2);
    // A deliberate second refund of the same amount says so with its own key.
    assert_eq!(refund("another-200", 200).await.status(), 201);
    assert_eq!(s.app.store.refunds_for_order(&order_id).await.unwrap().len(), 3);
}

#[tokio::test]
async fn concurrent_refunds_never_exceed_what_was_paid() {
    let s = shop(&[]).await;
    let product = s.credits_product(1000, 10).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    assert_eq!(s.sandbox(&checkout, "pay").await, 200);
    let path = format!("/api/v1/admin/orders/{order_id}/refunds");
    // Six different refunds at once: any two fit in 1000, no three do.
    let attempts = futures_util::future::join_all((0..6).map(|i| s.post(&s.admin, &path, json!({"amount": 400 + i})))).await;
    let mut made = 0;
    for r in attempts {
        match r.status().as_u16() {
            201 => made += r.json::<Value>().await.unwrap()["amount"].as_i64().unwrap(),
            422 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!((801..=809).contains(&made), "two refunds made: {made}");
    assert_eq!(s.order(order_id).await["amount_refunded"], made);
    assert_eq!(
        s.app.store.refunds_for_order(order_id).await.unwrap().iter().filter(|r| r.status.as_str() == "succeeded").count(),
        2
    );
}

#[tokio::test]
async fn a_double_clicked_refund_is_made_once() {
    let s = shop(&[]).await;
    let product = s.credits_product(1000, 10).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    assert_eq!(s.sandbox(&checkout, "pay").await, 200);
    let path = format!("/api/v1/admin/orders/{order_id}/refunds");
    let (a, b) = tokio::join!(s.post(&s.admin, &path, json!({"amount": 300})), s.post(&s.admin, &path, json!({"amount": 300})));
    let statuses = [a.status().as_u16(), b.status().as_u16()];
    assert!(statuses.contains(&201) && statuses.iter().all(|s| [201, 409].contains(s)), "{statuses:?}");
    assert_eq!(s.app.store.refunds_for_order(order_id).await.unwrap().len(), 1);
    assert_eq!(s.order(order_id).await["amount_refunded"], 300);
}

#[tokio::test]
async fn creating_a_product_twice_with_one_idempotency_key_makes_one() {
    let s = shop(&[]).await;
    let body = json!({"name": "Credits", "amount": 500, "currency": "usd", "grant": {"kind": "credits", "amount": 5}});
    let create = || {
        s.app
            .client
            .post(s.app.url("/api/v1/admin/products"))
            .bearer_auth(&s.admin)
            .header("idempotency-key", "p-1")
            .json(&body)
            .send()
    };
    let first: Value = create().await.unwrap().json().await.unwrap();
    let second = create().await.unwrap();
    assert_eq!(second.status(), 201);
    assert_eq!(second.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(s.app.store.list_products(false, 10, None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn stripes_refund_events_settle_a_refund_whose_answer_was_lost() {
    let mock = MockServer::start().await;
    mock_checkout(&mock).await;
    Mock::given(method("POST")).and(path("/v1/refunds")).respond_with(ResponseTemplate::new(503)).mount(&mock).await;
    let s = stripe_shop(&mock, &[]).await;
    let product = s.credits_product(1000, 10).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap().to_owned();
    assert_eq!(s.deliver(&completed(&checkout, 1000).1).await, 200);
    let refunds = format!("/api/v1/admin/orders/{order_id}/refunds");
    assert_problem(s.post(&s.admin, &refunds, json!({"amount": 1000})).await, 502).await;
    let row = s.app.store.refunds_for_order(&order_id).await.unwrap().remove(0);
    assert_eq!(row.status.as_str(), "unknown");
    assert_problem(s.post(&s.admin, &refunds, json!({"amount": 500})).await, 422).await;
    // Stripe says that refund failed: it stops counting.
    let fields = json!({"id": "re_lost", "amount": 1000, "status": "failed", "payment_intent": pi_of(&order_id),
                        "metadata": {"order_id": order_id, "refund_id": row.id}});
    let (event_id, body) = event("refund.failed", "refund").with(fields).build();
    assert_eq!(s.deliver(&body).await, 200);
    assert_eq!(s.event_status(&event_id).await, "processed");
    let row = s.app.store.refunds_for_order(&order_id).await.unwrap().remove(0);
    assert_eq!((row.status.as_str(), row.stripe_refund_id.as_deref()), ("failed", Some("re_lost")));
    mock.reset().await;
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "re_second", "object": "refund", "amount": 500, "status": "succeeded"})),
        )
        .mount(&mock)
        .await;
    assert_eq!(s.post(&s.admin, &refunds, json!({"amount": 500})).await.status(), 201);
    // A refund made elsewhere (the dashboard) names none of ours.
    let (other_id, other) = event("refund.created", "refund").with(json!({"metadata": {}})).build();
    assert_eq!(s.deliver(&other).await, 200);
    assert_eq!(s.event_status(&other_id).await, "unmatched");
}

#[tokio::test]
async fn idempotency_keys_older_than_a_day_are_swept() {
    use chrono::{Duration, SubsecRound, Utc};
    use tollgate::store::IdempotencyStart;
    let s = shop(&[]).await;
    let store = &s.app.store;
    let now = Utc::now();
    // Whole seconds and fractions mixed: SQLite keeps these as text, which must still sort as time.
    let old = (now - Duration::hours(25)).trunc_subsecs(0);
    assert_eq!(store.idempotency_start("usr_a", "old", "h", old).await.unwrap(), IdempotencyStart::New);
    assert_eq!(store.idempotency_start("usr_a", "recent", "h", now - Duration::hours(23)).await.unwrap(), IdempotencyStart::New);
    assert_eq!(
        store.idempotency_start("usr_a", "edge", "h", (now - Duration::hours(24)).trunc_subsecs(0)).await.unwrap(),
        IdempotencyStart::New
    );
    let cutoff = now - Duration::hours(24);
    assert_eq!(
        store.sweep_idempotency(cutoff).await.unwrap(),
        2,
        "the 25 h key and the one a fraction of a second before the cutoff"
    );
    store.idempotency_finish("usr_a", "recent", 201, b"{}").await.unwrap();
    let kept = store.idempotency_start("usr_a", "recent", "h", now).await.unwrap();
    assert_eq!(kept, IdempotencyStart::Replay { status: 201, body: b"{}".to_vec() }, "kept");
    assert_eq!(store.idempotency_start("usr_a", "old", "other", now).await.unwrap(), IdempotencyStart::New, "forgotten");
}
