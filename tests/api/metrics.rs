//! `GET /metrics`: the Prometheus text format, served to loopback clients and to the metrics token;
//! after a known sequence of requests its counters moved by exactly what happened, and no label
//! holds an id, an email or a raw path.

use std::collections::BTreeMap;

use serde_json::json;
use tollgate::stripe::webhook::sign;

use crate::helpers::accounts::{one_place_password_queue, wrong_password_burst};
use crate::helpers::shop::{completed, shop};
use crate::helpers::stripe::{deliver, event};
use crate::helpers::{assert_problem, spawn_app_with, TestApp};

const TOKEN: &str = "metrics-token-0123456789abcdef0123456789";

/// Every sample of a scrape: `name{labels}` (as written) → value.
type Samples = BTreeMap<String, f64>;

fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        samples.insert(series.to_owned(), value.parse().unwrap_or_else(|_| panic!("not a value: {line}")));
    }
    samples
}

async fn scrape(app: &TestApp) -> (String, Samples) {
    let r = app.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

/// What each series moved by between two scrapes (series that did not move are left out).
fn moved(before: &Samples, after: &Samples, prefix: &str) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

fn series(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[tokio::test]
async fn the_counters_read_exactly_the_requests_that_were_made() {
    let s = shop(&[("TOLLGATE_CHECKOUT_LIMIT", "1")]).await;
    let (_, before) = scrape(&s.app).await;

    let product = s.credits_product(1000, 10).await;
    let checkout = s.checkout(&product).await;
    let order_id = checkout["order_id"].as_str().unwrap().to_owned();
    let r = s.post(&s.user, "/api/v1/checkout/sessions", json!({"product_id": product})).await;
    assert_problem(r, 429).await;

    let (paid_id, paid) = completed(&checkout, 1000);
    assert_eq!(s.deliver(&paid).await, 200, "processed, and the order fulfilled");
    assert_eq!(s.deliver(&paid).await, 200, "a redelivery: duplicate");
    let (_, plan) = event("plan.created", "plan").build();
    assert_eq!(s.deliver(&plan).await, 200, "ignored");
    let (_, stray) = event("checkout.session.completed", "checkout.session").build();
    assert_eq!(s.deliver(&stray).await, 200, "unmatched");
    let forged =
        deliver(&s.app, &plan, &sign(&plan, "whsec_attacker_0123456789abcdef012345", chrono::Utc::now().timestamp())).await;
    assert_problem(forged, 400).await;
    assert_eq!(s.order(&order_id).await["status"], "paid");

    for _ in 0..2 {
        let r = s
            .app
            .client
            .post(s.app.url("/api/v1/auth/login"))
            .json(&json!({"email": "buyer@example.com", "password": "not the password at all"}))
            .send()
            .await
            .unwrap();
        assert_problem(r, 401).await;
    }
    assert_problem(s.app.get(&format!("/api/v1/no/such/{order_id}")).await, 404).await;

    let (text, after) = scrape(&s.app).await;
    let m = "tollgate_http_requests_total";
    assert_eq!(
        moved(&before, &after, m),
        series(&[
            (&format!(r#"{m}{{method="GET",route="/metrics",status="2xx"}}"#), 1.0),
            (&format!(r#"{m}{{method="POST",route="/api/v1/admin/products",status="2xx"}}"#), 1.0),
            (&format!(r#"{m}{{method="POST",route="/api/v1/checkout/sessions",status="2xx"}}"#), 1.0),
            (&format!(r#"{m}{{method="POST",route="/api/v1/checkout/sessions",status="4xx"}}"#), 1.0),
            (&format!(r#"{m}{{method="POST",route="/api/v1/webhooks/stripe",status="2xx"}}"#), 4.0),
            (&format!(r#"{m}{{method="POST",route="/api/v1/webhooks/stripe",status="4xx"}}"#), 1.0),
            (&format!(r#"{m}{{method="GET",route="/api/v1/orders/{{id}}",status="2xx"}}"#), 1.0),
            (&format!(r#"{m}{{method="POST",route="/api/v1/auth/login",status="4xx"}}"#), 2.0),
            (&format!(r#"{m}{{method="GET",route="<unmatched>",status="4xx"}}"#), 1.0),
        ]),
        "{text}"
    );
    let w = "tollgate_webhook_events_total";
    assert_eq!(
        moved(&before, &after, w),
        series(&[
            (&format!(r#"{w}{{provider="stripe",outcome="processed"}}"#), 1.0),
            (&format!(r#"{w}{{provider="stripe",outcome="duplicate"}}"#), 1.0),
            (&format!(r#"{w}{{provider="stripe",outcome="ignored"}}"#), 1.0),
            (&format!(r#"{w}{{provider="stripe",outcome="unmatched"}}"#), 1.0),
            (&format!(r#"{w}{{provider="stripe",outcome="rejected"}}"#), 1.0),
        ]),
        "{text}"
    );
    assert_eq!(moved(&before, &after, "tollgate_orders_fulfilled_total"), series(&[("tollgate_orders_fulfilled_total", 1.0)]));
    assert_eq!(moved(&before, &after, "tollgate_login_failures_total"), series(&[("tollgate_login_failures_total", 2.0)]));
    assert_eq!(
        moved(&before, &after, "tollgate_rate_limited_total"),
        series(&[(r#"tollgate_rate_limited_total{route="/api/v1/checkout/sessions"}"#, 1.0)])
    );
    assert_eq!(moved(&before, &after, "tollgate_password_queue_refusals_total"), series(&[]));
    assert_eq!(moved(&before, &after, "tollgate_database_faults_total"), series(&[]));
    assert_eq!(after[r#"tollgate_database_faults_total{kind="storage"}"#], 0.0);
    // One duration sample per request answered between the scrapes, in a histogram.
    let d = "tollgate_http_request_duration_seconds_count";
    assert_eq!(moved(&before, &after, d).values().sum::<f64>(), 13.0, "{text}");
    assert!(text.contains("tollgate_http_request_duration_seconds_bucket{"));

    // No id, email or raw path in any label.
    for secret in [order_id.as_str(), paid_id.as_str(), &product, &s.user_id, "buyer@example.com", "/api/v1/no/such"] {
        assert!(!text.contains(secret), "{secret} appears in the metrics:\n{text}");
    }
}

#[tokio::test]
async fn metrics_are_served_to_loopback_and_to_the_token_only() {
    // 127.0.0.1 is a trusted proxy here, so X-Forwarded-For makes the client someone else.
    let app = spawn_app_with(&[("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32"), ("TOLLGATE_METRICS_TOKEN", TOKEN)]).await;
    let from = |ip: &'static str| app.client.get(app.url("/metrics")).header("x-forwarded-for", ip);

    assert_eq!(app.get("/metrics").await.status(), 200, "the loopback client itself");
    assert_eq!(from("127.0.0.1").send().await.unwrap().status(), 200, "forwarded for a loopback client");
    let body = assert_problem(from("198.51.100.7").send().await.unwrap(), 403).await;
    assert!(!body.to_string().contains(TOKEN));
    assert_problem(from("198.51.100.7").bearer_auth("wrong-token").send().await.unwrap(), 403).await;
    assert_problem(from("198.51.100.7").bearer_auth(&TOKEN[..TOKEN.len() - 1]).send().await.unwrap(), 403).await;
    assert_problem(from("198.51.100.7").header("authorization", TOKEN).send().await.unwrap(), 403).await;
    let r = from("198.51.100.7").bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("tollgate_http_requests_total{"));

    // Without a token, only loopback.
    let app = spawn_app_with(&[("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let r =
        app.client.get(app.url("/metrics")).header("x-forwarded-for", "198.51.100.7").bearer_auth(TOKEN).send().await.unwrap();
    assert_problem(r, 403).await;
    assert_eq!(app.get("/metrics").await.status(), 200);
}

#[tokio::test]
async fn a_forwarded_for_header_from_an_untrusted_peer_cannot_open_or_close_metrics() {
    // No trusted proxies: the socket peer (loopback) decides, whatever the header says.
    let app = spawn_app_with(&[]).await;
    let r = app.client.get(app.url("/metrics")).header("x-forwarded-for", "198.51.100.7").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn password_queue_refusals_and_login_failures_count_what_was_answered() {
    let app = one_place_password_queue().await;
    let (_, before) = scrape(&app).await;
    let (mut refused, mut failed) = (0.0, 0.0);
    for (status, _, _) in wrong_password_burst(&app, 40).await {
        match status {
            401 => failed += 1.0,
            503 => refused += 1.0,
            other => panic!("unexpected {other}"),
        }
    }
    let (text, after) = scrape(&app).await;
    let moved_by = |name: &str| moved(&before, &after, name).values().sum::<f64>();
    assert_eq!(moved_by("tollgate_password_queue_refusals_total"), refused, "{text}");
    assert_eq!(moved_by("tollgate_login_failures_total"), failed, "{text}");
    assert_eq!(refused + failed, 40.0);
    assert!(refused > 0.0, "with one place in the queue, a burst of 40 is partly refused at once");
}
