//! Fulfilment: Stripe's events (built from its fixtures, signed like Stripe signs them) turn orders
//! paid and grant what was bought exactly once, under concurrency, in any arrival order, from the
//! webhook or the success page, and again by replay or `tollgate stripe sync` without doubling.

use std::sync::Arc;

use serde_json::{json, Value};
use tollgate::stripe::webhook::sign;
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::assert_problem;
use crate::helpers::binary::{output_text, tollgate};
use crate::helpers::database::execute;
use crate::helpers::shop::{completed, expired, refunded, session_fields, shop, stripe_shop};
use crate::helpers::stripe::{event, fixture_with, WHSEC};
use crate::helpers::stripe_api::{mock_checkout, SK};

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
