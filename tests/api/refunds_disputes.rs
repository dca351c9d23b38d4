//! Refunds and disputes: admin refunds made at Stripe once whatever is retried or clicked twice,
//! never more than was paid, settled by Stripe's refund events; disputes suspend a grant, and a won
//! or lost one restores or revokes it.

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::assert_problem;
use crate::helpers::shop::{completed, dispute, pi_of, refunded, shop, stripe_shop};
use crate::helpers::stripe::{event, fixture};
use crate::helpers::stripe_api::{form_value, mock_checkout};

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
