//! The Stripe webhook endpoint and the ledger: events built from Stripe's own example objects
//! (`tests/fixtures/stripe/fixtures3.json`, vendored, see `helpers/stripe.rs`), signed like Stripe
//! signs them, and attacked.

use serde_json::{json, Value};
use tollgate::stripe::webhook::sign;

use crate::helpers::accounts::{login, make_admin, register, PASSWORD};
use crate::helpers::stripe::{deliver, event, fixture, WHSEC};
use crate::helpers::{assert_problem, spawn_app_with, TestApp};

const ROTATED: &str = "whsec_rotated_fedcba9876543210fedcba98765432";

async fn app() -> TestApp {
    spawn_app_with(&[("STRIPE_WEBHOOK_SECRET", WHSEC)]).await
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn ledger_count(app: &TestApp) -> usize {
    app.store.list_events(None, None, 1000, None).await.unwrap().len()
}

#[tokio::test]
async fn a_genuine_event_is_stored_byte_for_byte_then_acknowledged() {
    let app = app().await;
    let (id, body) = event("checkout.session.completed", "checkout.session").build();
    let r = deliver(&app, &body, &sign(&body, WHSEC, now())).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"received": true}));
    let (row, history) = app.store.event(&id).await.unwrap().expect("in the ledger");
    assert_eq!(row.payload, body, "the exact bytes Stripe signed");
    assert_eq!(row.kind, "checkout.session.completed");
    assert_eq!(row.status.as_str(), "unmatched", "a handled type with no order");
    assert_eq!(history.len(), 1);
}

#[tokio::test]
async fn an_unhandled_type_is_stored_as_ignored_and_answered_200() {
    let app = app().await;
    let (id, body) = event("plan.created", "plan").build();
    assert_eq!(deliver(&app, &body, &sign(&body, WHSEC, now())).await.status(), 200);
    let (row, history) = app.store.event(&id).await.unwrap().unwrap();
    assert_eq!(row.status.as_str(), "ignored");
    assert!(history[0].detail.contains("not handled"));
}

#[tokio::test]
async fn forged_stale_future_and_missing_signatures_are_400_and_store_nothing() {
    let app = app().await;
    let (_, body) = event("checkout.session.completed", "checkout.session").build();
    let cases = [
        ("forged", sign(&body, "whsec_attacker_0123456789abcdef012345", now())),
        ("stale", sign(&body, WHSEC, now() - 301)),
        ("future", sign(&body, WHSEC, now() + 301)),
        ("missing", String::new()),
        ("garbage", "t=abc,v1=xyz".to_owned()),
    ];
    for (what, header) in cases {
        let r = deliver(&app, &body, &header).await;
        let problem = assert_problem(r, 400).await;
        assert_eq!(problem["detail"], "invalid Stripe-Signature", "{what}");
    }
    // Signed, then re-serialised by something in between: not the bytes that were signed.
    let header = sign(&body, WHSEC, now());
    let reserialised = serde_json::to_vec(&serde_json::from_slice::<Value>(&body).unwrap()).unwrap();
    assert_problem(deliver(&app, &reserialised, &header).await, 400).await;
    assert_eq!(ledger_count(&app).await, 0, "nothing unverified is stored");
}

#[tokio::test]
async fn a_signed_body_that_is_not_an_event_is_400() {
    let app = app().await;
    let body = serde_json::to_vec(&fixture("charge")).unwrap();
    assert_problem(deliver(&app, &body, &sign(&body, WHSEC, now())).await, 400).await;
    assert_eq!(ledger_count(&app).await, 0);
}

#[tokio::test]
async fn several_secrets_verify_during_a_rotation() {
    let app = spawn_app_with(&[("STRIPE_WEBHOOK_SECRET", &format!("{ROTATED},{WHSEC}"))]).await;
    for secret in [WHSEC, ROTATED] {
        let (id, body) = event("charge.refunded", "charge").build();
        assert_eq!(deliver(&app, &body, &sign(&body, secret, now())).await.status(), 200);
        assert!(app.store.event(&id).await.unwrap().is_some());
    }
    // Stripe sends one v1 per active secret; any matching one is enough.
    let (_, body) = event("charge.refunded", "charge").build();
    let good = sign(&body, ROTATED, now());
    let good_v1 = good.split_once(",v1=").unwrap().1;
    let header = format!("t={},v1={},v1={good_v1}", now(), "ab".repeat(32));
    assert_eq!(deliver(&app, &body, &header).await.status(), 200);
}

#[tokio::test]
async fn fifty_concurrent_deliveries_of_one_event_store_it_once() {
    let app = app().await;
    let (id, body) = event("checkout.session.completed", "checkout.session").build();
    let header = sign(&body, WHSEC, now());
    let deliveries: Vec<_> = (0..50)
        .map(|_| {
            let (client, url, body, header) =
                (app.client.clone(), app.url("/api/v1/webhooks/stripe"), body.clone(), header.clone());
            tokio::spawn(async move {
                client.post(url).header("stripe-signature", header).body(body).send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    for d in deliveries {
        assert_eq!(d.await.unwrap(), 200, "every delivery is acknowledged");
    }
    assert_eq!(ledger_count(&app).await, 1);
    let (_, history) = app.store.event(&id).await.unwrap().unwrap();
    assert_eq!(history.len(), 1, "processed once");
    // And once more, later: a no-op.
    assert_eq!(deliver(&app, &body, &sign(&body, WHSEC, now())).await.status(), 200);
    assert_eq!(ledger_count(&app).await, 1);
}

#[tokio::test]
async fn an_event_of_the_other_mode_is_stored_but_not_applied() {
    let app = app().await;
    let (id, body) = event("checkout.session.completed", "checkout.session").live().build();
    assert_eq!(deliver(&app, &body, &sign(&body, WHSEC, now())).await.status(), 200);
    let (row, history) = app.store.event(&id).await.unwrap().unwrap();
    assert!(row.livemode);
    assert_eq!(row.status.as_str(), "ignored");
    assert!(history[0].detail.contains("live-mode event"), "{}", history[0].detail);
}

#[tokio::test]
async fn admins_read_the_ledger_and_nobody_else_does() {
    let app = app().await;
    let (plan_id, body) = event("plan.created", "plan").build();
    deliver(&app, &body, &sign(&body, WHSEC, now())).await;
    let (cs_id, body) = event("checkout.session.completed", "checkout.session").build();
    deliver(&app, &body, &sign(&body, WHSEC, now())).await;

    let admin = make_admin(&app, "root@example.com").await;
    let get = |path: String| app.client.get(app.url(&path)).header("cookie", &admin.cookie).send();
    let all: Value = get("/api/v1/admin/events".into()).await.unwrap().json().await.unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    assert_eq!(all["data"][0]["id"], cs_id.as_str(), "newest first");
    let ignored: Value = get("/api/v1/admin/events?status=ignored".into()).await.unwrap().json().await.unwrap();
    assert_eq!(ignored["data"].as_array().unwrap().len(), 1);
    assert_eq!(ignored["data"][0]["id"], plan_id.as_str());
    let by_type: Value = get("/api/v1/admin/events?type=checkout.session.completed".into()).await.unwrap().json().await.unwrap();
    assert_eq!(by_type["data"][0]["status"], "unmatched");
    let paged: Value = get(format!("/api/v1/admin/events?limit=1&starting_after={cs_id}")).await.unwrap().json().await.unwrap();
    assert_eq!(paged["data"][0]["id"], plan_id.as_str());
    assert_eq!(paged["has_more"], false);
    assert_problem(get("/api/v1/admin/events?status=lost".into()).await.unwrap(), 422).await;

    let one: Value = get(format!("/api/v1/admin/events/{cs_id}")).await.unwrap().json().await.unwrap();
    assert_eq!(one["raw_payload"].as_str().unwrap().as_bytes(), body.as_slice());
    assert_eq!(one["history"][0]["status"], "unmatched");
    assert_problem(get("/api/v1/admin/events/evt_nope".into()).await.unwrap(), 404).await;

    register(&app, "ada@example.com").await;
    let ada = login(&app, "ada@example.com", PASSWORD).await;
    let r = app.client.get(app.url("/api/v1/admin/events")).header("cookie", &ada.cookie).send().await.unwrap();
    assert_problem(r, 403).await;
    assert_problem(app.get(&format!("/api/v1/admin/events/{cs_id}")).await, 401).await;
}
