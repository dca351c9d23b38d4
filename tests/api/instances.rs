//! Three instances behind one load balancer (issue 12): three applications on loopback sharing ONE
//! PostgreSQL database and ONE Redis, the requests of each test spread over them. Whatever guards
//! money or accounts holds as it does on one instance: a login limit counts every instance's
//! attempts, a Stripe event delivered to all three grants once, one `Idempotency-Key` makes one
//! order, a session or token works everywhere and a logout ends it everywhere, refunds never exceed
//! what was paid, the global budget is one budget.
//!
//! Runs when `TEST_DATABASE_URL` and `TEST_REDIS_URL` are both set (CI sets them); otherwise each
//! test says it was skipped and why, and passes (fails under CI).
//!
//! The instances are in-process (`helpers::app::spawn_apps`), each a separate `App`: its own
//! database pool, rate limiter (Redis client and in-memory fallback), password-hashing pool,
//! Prometheus recorder (per application, not the process-wide one) and HTTP server. That is
//! faithful to separate processes because nothing in `src/` keeps state in a process-wide place:
//! the only statics are the embedded migrations, constant tables, header names and the outbox's
//! wake-up (`store/outbox.rs`: another instance's dispatchers only wake to find nothing, they also
//! poll); the task-locals live for one request (`ratelimit/observe.rs`) or one transaction
//! (`store/invalidation.rs`: the users a transaction changed, which only that store's own read
//! view then forgets); the rustls crypto provider installed process-wide is stateless. So another
//! in-process instance hears of a change exactly as a separate process would: through its change
//! feed or its view's 500 ms bound (`read_view.rs`). Hence a revocation is asserted at once on the
//! instance that made it and within one second elsewhere. The instances share exactly what separate processes would: the database, Redis, and
//! the configured secrets (one `TOLLGATE_JWT_SECRET`, one webhook secret).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate::domain::account::Role;
use tollgate::stripe::webhook::sign;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::accounts::{bearer_for, login, me_with_bearer, me_with_cookie, register, tokens, PASSWORD};
use crate::helpers::shop::{completed, pi_of, refunded, Shop};
use crate::helpers::stripe::{deliver, fixture, WHSEC};
use crate::helpers::stripe_api::{form_value, StripeCheckout, SK};
use crate::helpers::{assert_problem, in_ci, skip, spawn_apps, TestApp};
use crate::read_view::refused_within_a_second;

/// Three instances on one fresh PostgreSQL database and one Redis (under a key prefix of this
/// test's own), or `None` when either service is not configured (skipped, saying why).
async fn three(test: &str, overrides: &[(&str, &str)]) -> Option<Vec<TestApp>> {
    let missing: Vec<&str> =
        ["TEST_DATABASE_URL", "TEST_REDIS_URL"].into_iter().filter(|v| std::env::var(v).map_or(true, |u| u.is_empty())).collect();
    if !missing.is_empty() {
        // CI's SQLite run unsets TEST_DATABASE_URL on purpose (its PostgreSQL run sets both): only
        // a PostgreSQL run without Redis is a CI mistake.
        let postgres_run = !missing.contains(&"TEST_DATABASE_URL");
        assert!(!(in_ci() && postgres_run), "TEST_REDIS_URL must be set in CI's PostgreSQL run");
        skip(test, &format!("{} not set: three instances need one PostgreSQL database and one Redis", missing.join(" and ")));
        return None;
    }
    let apps = spawn_apps(3, overrides).await;
    let ports: std::collections::HashSet<u16> = apps.iter().map(|a| a.addr.port()).collect();
    assert_eq!(ports.len(), 3, "three servers");
    Some(apps)
}

/// A shop whose first instance is `Shop::app` (the admin and the buyer registered there), and the
/// two other instances.
async fn shop_on(mut apps: Vec<TestApp>) -> (Shop, Vec<TestApp>) {
    let app = apps.remove(0);
    let (admin, _) = bearer_for(&app, "admin@example.com", Role::Admin).await;
    let (user, user_id) = bearer_for(&app, "buyer@example.com", Role::User).await;
    (Shop { app, admin, user, user_id }, apps)
}

/// One number straight from the shared database (`$1` bound to `arg`).
async fn count(app: &TestApp, sql: &str, arg: &str) -> i64 {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&app.database_url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as(sql).bind(arg).fetch_one(&mut c).await.unwrap();
    n
}

/// The value of the series `series` (exactly as written in the scrape) on `app`'s `/metrics`.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines().filter_map(|l| l.rsplit_once(' ')).find(|(s, _)| *s == series).map_or(0.0, |(_, v)| v.parse().unwrap())
}

async fn login_from(app: &TestApp, ip: &str, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", ip)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn checked_guesses(app: &TestApp, email: &str) -> i64 {
    let sql = "SELECT count(*) FROM audit_log a JOIN users u ON u.id = a.actor WHERE a.action = 'login.failure' AND u.email = $1";
    count(app, sql, email).await
}

#[tokio::test]
async fn a_login_limit_holds_across_three_instances() {
    let test = "a_login_limit_holds_across_three_instances";
    let Some(apps) = three(
        test,
        &[
            ("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32"),
            ("TOLLGATE_LOGIN_MAX_FAILURES", "4"),
            ("TOLLGATE_LOGIN_ACCOUNT_CEILING", "6"),
            ("TOLLGATE_LOGIN_IP_LIMIT", "1000"),
        ],
    )
    .await
    else {
        return;
    };
    for email in ["ada@example.com", "bob@example.com", "cy@example.com"] {
        register(&apps[0], email).await;
    }
    // One client, round robin over the three: four guesses in all, not four per instance.
    let attacker = "198.51.100.7";
    for i in 0..4 {
        let r = login_from(&apps[i % 3], attacker, "ada@example.com", "wrong password entirely").await;
        assert_eq!(r.status(), 401, "guess {} (instance {})", i + 1, i % 3);
    }
    for (i, app) in apps.iter().enumerate() {
        let r = login_from(app, attacker, "ada@example.com", PASSWORD).await;
        assert_eq!(r.headers()["ratelimit-limit"], "4", "instance {i}");
        assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 0);
        assert_problem(r, 429).await;
    }
    assert_eq!(checked_guesses(&apps[0], "ada@example.com").await, 4, "exactly four guesses were checked");
    // The owner, from another address, gets in on any instance.
    assert_eq!(login_from(&apps[2], "203.0.113.5", "ada@example.com", PASSWORD).await.status(), 200);

    // A botnet, one guess per address, spread over the three: the account's ceiling for clients
    // it does not know (6), then one free turn, then 429 everywhere, right password or not.
    for i in 0..7 {
        let r = login_from(&apps[i % 3], &format!("192.0.2.{i}"), "bob@example.com", "wrong password entirely").await;
        assert_eq!(r.status(), 401, "stranger {} (instance {})", i + 1, i % 3);
    }
    for (i, app) in apps.iter().enumerate() {
        let r = login_from(app, &format!("192.0.2.{}", 50 + i), "bob@example.com", PASSWORD).await;
        assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 10, "instance {i}");
        assert_problem(r, 429).await;
    }
    assert_eq!(checked_guesses(&apps[0], "bob@example.com").await, 7, "the ceiling bounds guesses across instances");

    // Thirty guesses from one client at once, ten to each instance: at most four are checked.
    let burst: Vec<_> = (0..30)
        .map(|i| {
            let (client, url) = (apps[i % 3].client.clone(), apps[i % 3].url("/api/v1/auth/login"));
            tokio::spawn(async move {
                let body = json!({"email": "cy@example.com", "password": format!("wrong password number {i}")});
                client.post(url).header("x-forwarded-for", "198.51.100.9").json(&body).send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for b in burst {
        statuses.push(b.await.unwrap());
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(checked <= 4, "at most 4 guesses checked, not {checked}: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 30 - checked, "{statuses:?}");
    assert_eq!(checked_guesses(&apps[0], "cy@example.com").await, checked as i64);
}

#[tokio::test]
async fn one_completion_delivered_150_times_over_three_instances_grants_once() {
    let test = "one_completion_delivered_150_times_over_three_instances_grants_once";
    let Some(apps) = three(test, &[("STRIPE_WEBHOOK_SECRET", WHSEC), ("TOLLGATE_DATABASE_MAX_CONNECTIONS", "10")]).await else {
        return;
    };
    let (s, others) = shop_on(apps).await;
    let all = [&s.app, &others[0], &others[1]];
    let product = s.credits_product(1000, 500).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap().to_owned();
    let (event_id, body) = completed(&checkout, 1000);
    let body = Arc::new(body);
    // 3 × 50 at once, each signed when sent, as Stripe's retries after an outage would be.
    let deliveries: Vec<_> = (0..150)
        .map(|i| {
            let app = all[i % 3];
            let (body, client, url) = (body.clone(), app.client.clone(), app.url("/api/v1/webhooks/stripe"));
            tokio::spawn(async move {
                let signature = sign(&body, WHSEC, chrono::Utc::now().timestamp());
                client.post(url).header("stripe-signature", signature).body(body.to_vec()).send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    for d in deliveries {
        assert_eq!(d.await.unwrap(), 200, "every verified delivery is acknowledged");
    }
    assert_eq!(s.grants(&order_id).await.len(), 1, "one grant");
    assert_eq!(count(&s.app, "SELECT count(*) FROM grants WHERE order_id = $1", &order_id).await, 1);
    assert_eq!(count(&s.app, "SELECT count(*) FROM stripe_events WHERE event_id = $1", &event_id).await, 1, "one ledger row");
    assert_eq!(s.event_status(&event_id).await, "processed");
    assert_eq!(s.app.store.event(&event_id).await.unwrap().unwrap().1.len(), 1, "one history entry: the rest were no-ops");
    assert_eq!(count(&s.app, "SELECT count(*) FROM credit_movements WHERE order_id = $1", &order_id).await, 1, "credited once");
    for app in all {
        let order = app.client.get(app.url(&format!("/api/v1/orders/{order_id}"))).bearer_auth(&s.user).send().await.unwrap();
        assert_eq!(order.json::<Value>().await.unwrap()["status"], "paid");
        let e = app.client.get(app.url("/api/v1/me/entitlements")).bearer_auth(&s.user).send().await.unwrap();
        assert_eq!(e.json::<Value>().await.unwrap()["credit_balance"], 500, "paid once, on every instance");
    }
    // What the three instances counted, together: one processed, 149 duplicates, one fulfilment.
    let w = "tollgate_webhook_events_total";
    let (mut processed, mut duplicates, mut fulfilled) = (0.0, 0.0, 0.0);
    for app in all {
        processed += metric(app, &format!(r#"{w}{{provider="stripe",outcome="processed"}}"#)).await;
        duplicates += metric(app, &format!(r#"{w}{{provider="stripe",outcome="duplicate"}}"#)).await;
        fulfilled += metric(app, "tollgate_orders_fulfilled_total").await;
    }
    assert_eq!((processed, duplicates, fulfilled), (1.0, 149.0, 1.0));
}

/// Stripe's checkout-session endpoint, answering after `delay`: requests sent at once overlap.
struct Slow(StripeCheckout, Duration);

impl Respond for Slow {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0.respond(request).set_delay(self.1)
    }
}

#[tokio::test]
async fn one_idempotency_key_sent_to_three_instances_at_once_makes_one_order() {
    let test = "one_idempotency_key_sent_to_three_instances_at_once_makes_one_order";
    let mock = MockServer::start().await;
    let stripe = StripeCheckout::default();
    let slow = Slow(stripe.clone(), Duration::from_millis(300));
    Mock::given(method("POST")).and(path("/v1/checkout/sessions")).respond_with(slow).mount(&mock).await;
    let uri = mock.uri();
    let env = [("STRIPE_WEBHOOK_SECRET", WHSEC), ("STRIPE_SECRET_KEY", SK), ("STRIPE_API_BASE", uri.as_str())];
    let Some(apps) = three(test, &env).await else { return };
    let (s, others) = shop_on(apps).await;
    let all = [&s.app, &others[0], &others[1]];
    let product = s.credits_product(500, 10).await;
    let post = |app: &TestApp| {
        app.client
            .post(app.url("/api/v1/checkout/sessions"))
            .bearer_auth(&s.user)
            .header("idempotency-key", "order-42")
            .json(&json!({"product_id": product}))
            .send()
    };
    let (a, b, c) = tokio::join!(post(all[0]), post(all[1]), post(all[2]));
    let mut first = None;
    let mut statuses = Vec::new();
    for r in [a.unwrap(), b.unwrap(), c.unwrap()] {
        let replayed = r.headers().get("idempotent-replayed").is_some();
        statuses.push((r.status().as_u16(), replayed));
        match (r.status().as_u16(), replayed) {
            (201, false) => {
                assert!(first.is_none(), "made once: {statuses:?}");
                first = Some(r.json::<Value>().await.unwrap());
            }
            // Another instance still making it: 409, retry shortly (or, if it already finished, the replay).
            (409, false) => {
                assert_problem(r, 409).await;
            }
            (201, true) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let first = first.unwrap_or_else(|| panic!("one of them made it: {statuses:?}"));
    // The retries, on every instance: the first answer again.
    for app in all {
        let r = post(app).await.unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        assert_eq!(r.json::<Value>().await.unwrap(), first, "the replay is the first answer");
    }
    assert_eq!(stripe.calls.load(Ordering::SeqCst), 1, "one checkout session at Stripe");
    assert_eq!(count(&s.app, "SELECT count(*) FROM orders WHERE user_id = $1", &s.user_id).await, 1, "one order");
    assert_eq!(count(&s.app, "SELECT count(*) FROM idempotency_keys WHERE principal = $1", &s.user_id).await, 1);
}

#[tokio::test]
async fn a_session_and_a_token_work_on_every_instance_and_logout_on_one_ends_them_everywhere() {
    let test = "a_session_and_a_token_work_on_every_instance_and_logout_on_one_ends_them_everywhere";
    // No grace window: a spent refresh token presented again is a theft at once.
    let Some(apps) = three(test, &[("TOLLGATE_REFRESH_GRACE", "0s")]).await else { return };
    register(&apps[0], "ada@example.com").await;
    // A browser session made by instance 0, an API client's tokens by instance 1.
    let browser = login(&apps[0], "ada@example.com", PASSWORD).await;
    let (access, refresh) = tokens(&apps[1], "ada@example.com", PASSWORD).await;
    for (i, app) in apps.iter().enumerate() {
        assert_eq!(me_with_cookie(app, &browser.cookie).await, 200, "session on instance {i}");
        assert_eq!(me_with_bearer(app, &access).await, 200, "token on instance {i}");
    }
    // The refresh token made by instance 1 is spent on instance 2; the new pair works on 0.
    let r =
        apps[2].client.post(apps[2].url("/api/v1/auth/refresh")).json(&json!({"refresh_token": refresh})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let pair: Value = r.json().await.unwrap();
    let (access2, refresh2) =
        (pair["access_token"].as_str().unwrap().to_owned(), pair["refresh_token"].as_str().unwrap().to_owned());
    assert_eq!(me_with_bearer(&apps[0], &access2).await, 200);
    // The spent one replayed on instance 0 is theft: the family dies everywhere.
    let (mallory, _) = tokens(&apps[0], "ada@example.com", PASSWORD).await;
    let r =
        apps[0].client.post(apps[0].url("/api/v1/auth/refresh")).json(&json!({"refresh_token": refresh})).send().await.unwrap();
    assert_problem(r, 401).await;
    // At once where the replay was caught, within a second everywhere (the read views' bound).
    let since = Instant::now();
    assert_eq!(me_with_bearer(&apps[0], &access2).await, 401, "a replayed refresh token ends the family at once");
    for app in &apps {
        refused_within_a_second(app, &access2, since).await;
    }
    let r =
        apps[1].client.post(apps[1].url("/api/v1/auth/refresh")).json(&json!({"refresh_token": refresh2})).send().await.unwrap();
    assert_problem(r, 401).await;

    // Logout of the session on instance 1, with the CSRF token instance 0 gave.
    let r = apps[1]
        .client
        .post(apps[1].url("/api/v1/auth/logout"))
        .header("cookie", &browser.cookie)
        .header("x-csrf-token", &browser.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for (i, app) in apps.iter().enumerate() {
        assert_eq!(me_with_cookie(app, &browser.cookie).await, 401, "the session is over on instance {i}");
    }
    // Logout of a token family on instance 2.
    assert_eq!(me_with_bearer(&apps[2], &mallory).await, 200, "another family of the same user");
    let r = apps[2].client.post(apps[2].url("/api/v1/auth/logout")).bearer_auth(&mallory).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let since = Instant::now();
    assert_eq!(me_with_bearer(&apps[2], &mallory).await, 401, "the token is over at once where it logged out");
    for app in &apps {
        refused_within_a_second(app, &mallory, since).await;
    }
    let user = apps[0].store.user_by_email("ada@example.com").await.unwrap().unwrap();
    assert_eq!(count(&apps[0], "SELECT count(*) FROM sessions WHERE user_id = $1", &user.id).await, 0, "no session left");
    let live = "SELECT count(*) FROM token_families WHERE user_id = $1 AND revoked_at IS NULL";
    assert_eq!(count(&apps[0], live, &user.id).await, 0, "no live token family left");
}

#[tokio::test]
async fn refunds_requested_on_several_instances_at_once_never_exceed_what_was_paid() {
    let test = "refunds_requested_on_several_instances_at_once_never_exceed_what_was_paid";
    let mock = MockServer::start().await;
    crate::helpers::stripe_api::mock_checkout(&mock).await;
    // Stripe answers a refund after 200 ms, so that the requests overlap.
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(|request: &Request| {
            let mut refund = fixture("refund");
            refund["id"] = json!(format!("re_{}", uuid::Uuid::new_v4().simple()));
            refund["amount"] = json!(form_value(request, "amount").unwrap().parse::<i64>().unwrap());
            refund["payment_intent"] = json!(form_value(request, "payment_intent"));
            ResponseTemplate::new(200).set_body_json(refund).set_delay(Duration::from_millis(200))
        })
        .mount(&mock)
        .await;
    let uri = mock.uri();
    let env = [("STRIPE_WEBHOOK_SECRET", WHSEC), ("STRIPE_SECRET_KEY", SK), ("STRIPE_API_BASE", uri.as_str())];
    let Some(apps) = three(test, &env).await else { return };
    let (s, others) = shop_on(apps).await;
    let all = [&s.app, &others[0], &others[1]];
    let refund = |app: &TestApp, order_id: &str, amount: i64| {
        app.client
            .post(app.url(&format!("/api/v1/admin/orders/{order_id}/refunds")))
            .bearer_auth(&s.admin)
            .json(&json!({"amount": amount}))
            .send()
    };
    let sent_to_stripe = |order_id: String| {
        let mock = &mock;
        async move {
            let requests = mock.received_requests().await.unwrap();
            let sent: Vec<_> = requests
                .into_iter()
                .filter(|r| r.url.path() == "/v1/refunds" && form_value(r, "payment_intent") == Some(pi_of(&order_id)))
                .collect();
            let keys: std::collections::HashSet<_> = sent.iter().map(|r| r.headers["idempotency-key"].clone()).collect();
            assert_eq!(keys.len(), sent.len(), "no refund was asked of Stripe twice");
            sent.iter().map(|r| form_value(r, "amount").unwrap().parse::<i64>().unwrap()).collect::<Vec<_>>()
        }
    };
    let product = s.credits_product(1000, 10).await;

    // Two instances asked for 600 and 700 of an order of 1000 at the same moment: one is made.
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap().to_owned();
    assert_eq!(s.deliver(&completed(&checkout, 1000).1).await, 200);
    let (a, b) = tokio::join!(refund(all[1], &order_id, 600), refund(all[2], &order_id, 700));
    let (a, b) = (a.unwrap(), b.unwrap());
    let made = match (a.status().as_u16(), b.status().as_u16()) {
        (201, 422) => {
            assert_problem(b, 422).await;
            600
        }
        (422, 201) => {
            assert_problem(a, 422).await;
            700
        }
        other => panic!("one refund made, the other refused as too much: {other:?}"),
    };
    assert_eq!(sent_to_stripe(order_id.clone()).await, vec![made], "what Stripe received");
    assert_eq!(count(&s.app, "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM refunds WHERE order_id = $1", &order_id).await, made);
    // The order's refunded total is what Stripe's charge.refunded says, delivered to another instance.
    assert_eq!(s.order(&order_id).await["amount_refunded"], 0, "not before Stripe says so");
    let (_, body) = refunded(&checkout, 1000, made);
    assert_eq!(deliver(all[2], &body, &sign(&body, WHSEC, chrono::Utc::now().timestamp())).await.status(), 200);
    assert_eq!(s.order(&order_id).await["amount_refunded"], made);

    // Six different refunds at once, two on each instance: any two fit in 1000, no three do.
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap().to_owned();
    assert_eq!(s.deliver(&completed(&checkout, 1000).1).await, 200);
    let attempts = futures_util::future::join_all((0..6).map(|i| refund(all[i % 3], &order_id, 400 + i as i64))).await;
    let mut made = 0;
    for r in attempts {
        let r = r.unwrap();
        match r.status().as_u16() {
            201 => made += r.json::<Value>().await.unwrap()["amount"].as_i64().unwrap(),
            422 => {
                assert_problem(r, 422).await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!((801..=809).contains(&made), "two refunds made: {made}");
    let sent = sent_to_stripe(order_id.clone()).await;
    assert_eq!((sent.len(), sent.iter().sum::<i64>()), (2, made), "Stripe was asked for exactly what was made");
    assert_eq!(count(&s.app, "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM refunds WHERE order_id = $1", &order_id).await, made);
    let (_, body) = refunded(&checkout, 1000, made);
    assert_eq!(deliver(all[1], &body, &sign(&body, WHSEC, chrono::Utc::now().timestamp())).await.status(), 200);
    for app in all {
        let order = app.client.get(app.url(&format!("/api/v1/orders/{order_id}"))).bearer_auth(&s.user).send().await.unwrap();
        assert_eq!(order.json::<Value>().await.unwrap()["amount_refunded"], made);
    }
}

#[tokio::test]
async fn the_global_budget_is_one_budget_across_three_instances() {
    let test = "the_global_budget_is_one_budget_across_three_instances";
    let Some(apps) = three(test, &[("TOLLGATE_API_HOURLY_LIMIT", "6"), ("TOLLGATE_API_DAILY_LIMIT", "100")]).await else {
        return;
    };
    // Six for this address an hour, whichever instance answers.
    for i in 0..6 {
        let r = apps[i % 3].get("/api/v1/products").await;
        assert_eq!(r.status(), 200, "request {} (instance {})", i + 1, i % 3);
        assert_eq!(r.headers()["ratelimit-limit"], "6");
        assert_eq!(r.headers()["ratelimit-remaining"], (5 - i).to_string().as_str());
    }
    for (i, app) in apps.iter().enumerate() {
        let r = app.get("/api/v1/products").await;
        // 6 an hour: the next waits one interval, 600 s (less the few ms the test took).
        let wait = r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap();
        assert!((599..=600).contains(&wait), "instance {i}: {wait}");
        assert_problem(r, 429).await;
    }
    // A user has a budget of their own, on every instance alike.
    register(&apps[0], "ada@example.com").await;
    let (access, _) = tokens(&apps[1], "ada@example.com", PASSWORD).await;
    for i in 0..6 {
        assert_eq!(me_with_bearer(&apps[(i + 2) % 3], &access).await, 200, "request {}", i + 1);
    }
    for app in &apps {
        assert_eq!(me_with_bearer(app, &access).await, 429);
    }
}
