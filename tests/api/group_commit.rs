//! Group commit: concurrent deliveries share a transaction, each in a savepoint of its own. One
//! that fails is rolled back alone (kept `failed`, answered 500); every other one is applied,
//! stored once and acknowledged only after the commit.

use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::Value;
use tollgate::stripe::webhook::sign;

use crate::helpers::database::rows;
use crate::helpers::shop::{completed, shop};
use crate::helpers::stripe::WHSEC;

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

/// Makes the database refuse to finish processing the event `event_id` (its history line), from
/// outside the application: a trigger, so no hook exists in production code.
async fn fail_processing_of(database_url: &str, event_id: &str) {
    let sql = if database_url.starts_with("sqlite:") {
        format!(
            "CREATE TRIGGER fail_one BEFORE INSERT ON stripe_event_history
             WHEN NEW.event_id = '{event_id}' AND NEW.status <> 'failed'
             BEGIN SELECT RAISE(ABORT, 'injected'); END;"
        )
    } else {
        format!(
            "CREATE FUNCTION fail_one() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.event_id = '{event_id}' AND NEW.status <> 'failed' THEN RAISE EXCEPTION 'injected'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER fail_one BEFORE INSERT ON stripe_event_history FOR EACH ROW EXECUTE FUNCTION fail_one();"
        )
    };
    execute(database_url, &sql).await;
}

#[tokio::test]
async fn two_hundred_concurrent_events_with_one_failing_fail_it_alone_and_acknowledge_the_rest_once() {
    const N: usize = 200;
    const VICTIM: usize = 117;
    let s = Arc::new(shop(&[("TOLLGATE_CHECKOUT_LIMIT", "100000")]).await);
    let product = s.credits_product(1000, 1).await;
    let checkouts: Vec<Value> =
        futures_util::stream::iter(0..N).map(|_| s.checkout(&product)).buffered(8).collect::<Vec<_>>().await;
    let events: Vec<(String, Vec<u8>)> = checkouts.iter().map(|c| completed(c, 1000)).collect();
    let victim = events[VICTIM].0.clone();
    fail_processing_of(&s.app.database_url, &victim).await;

    // All at once: the writer finds many queued while a commit runs, so they share transactions.
    let deliveries: Vec<_> = events
        .iter()
        .map(|(_, body)| {
            let (body, client, url) = (body.clone(), s.app.client.clone(), s.app.url("/api/v1/webhooks/stripe"));
            tokio::spawn(async move {
                let signature = sign(&body, WHSEC, chrono::Utc::now().timestamp());
                client.post(url).header("stripe-signature", signature).body(body).send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for d in deliveries {
        statuses.push(d.await.unwrap());
    }
    for (i, status) in statuses.iter().enumerate() {
        let expected = if i == VICTIM { 500 } else { 200 };
        assert_eq!(*status, expected, "delivery {i} ({})", events[i].0);
    }

    // Each event stored exactly once, with the status its answer said.
    let stored: Vec<(String, String)> = rows(&s.app, "SELECT event_id, status FROM stripe_events").await;
    assert_eq!(stored.len(), N);
    for (id, status) in &stored {
        let expected = if *id == victim { "failed" } else { "processed" };
        assert_eq!(status, expected, "event {id}");
    }
    // One history line each: applied once (the victim's says why it failed).
    let history: Vec<(String, i64)> = rows(&s.app, "SELECT event_id, count(*) FROM stripe_event_history GROUP BY event_id").await;
    assert_eq!(history.len(), N);
    assert!(history.iter().all(|(_, n)| *n == 1), "{history:?}");
    let (_, victim_history) = s.app.store.event(&victim).await.unwrap().unwrap();
    assert!(victim_history[0].detail.contains("injected"), "{:?}", victim_history[0].detail);

    // The victim's order was rolled back whole; every other order paid and granted once.
    for (i, checkout) in checkouts.iter().enumerate() {
        let order_id = checkout["order_id"].as_str().unwrap();
        let (status, grants) = if i == VICTIM { ("pending", 0) } else { ("paid", 1) };
        assert_eq!(s.order(order_id).await["status"], status, "order {i}");
        assert_eq!(s.grants(order_id).await.len(), grants, "order {i}");
    }
    assert_eq!(s.entitlements().await["credit_balance"], (N - 1) as i64);

    // Stripe's retry once the database accepts it again: applied, still stored once.
    let drop_trigger = if s.app.database_url.starts_with("sqlite:") {
        "DROP TRIGGER fail_one"
    } else {
        "DROP TRIGGER fail_one ON stripe_event_history"
    };
    execute(&s.app.database_url, drop_trigger).await;
    assert_eq!(s.deliver(&events[VICTIM].1).await, 200);
    assert_eq!(s.event_status(&victim).await, "processed");
    assert_eq!(s.entitlements().await["credit_balance"], N as i64);
    let stored: Vec<(i64,)> = rows(&s.app, "SELECT count(*) FROM stripe_events").await;
    assert_eq!(stored[0].0, N as i64);
}
