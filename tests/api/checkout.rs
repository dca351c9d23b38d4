//! Buying: the admin-managed catalog, checkout sessions and payment intents against a mocked
//! Stripe (wiremock, asserting what Stripe receives), idempotency keys, who may read an order, the
//! checkout rate limit, and a whole purchase in the sandbox.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};
use tollgate::domain::account::Role;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::accounts::bearer_for;
use crate::helpers::assert_problem;
use crate::helpers::database::idempotency_rows;
use crate::helpers::shop::{completed, shop, stripe_shop};
use crate::helpers::stripe::{event, fixture};
use crate::helpers::stripe_api::{form_value, mock_checkout, SK};

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
    let rows = idempotency_rows(&s.app).await;
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
