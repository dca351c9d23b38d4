//! Group commit: concurrent deliveries share a transaction, each in a savepoint of its own. One
//! that fails is rolled back alone (kept `failed`, answered 500); every other one is applied,
//! stored once and acknowledged only after the commit. What a batch's composition decides
//! (duplicates within one batch, a failed commit) is tested on the writer directly, in
//! `src/store/ledger_tests.rs`.

use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::Value;
use tollgate::stripe::webhook::sign;

use crate::helpers::database::{execute, rows};
use crate::helpers::shop::{completed, shop, Shop};
use crate::helpers::skip;
use crate::helpers::stripe::WHSEC;

/// Makes the database refuse to finish processing the event `event_id` (its history line), from
/// outside the application: a trigger, so no hook exists in production code. `raise` is SQLite's
/// `RAISE` kind: `ABORT` fails the statement, `ROLLBACK` ends the whole transaction (PostgreSQL
/// always fails the statement).
async fn fail_processing_of(database_url: &str, event_id: &str, raise: &str) {
    let sql = if database_url.starts_with("sqlite:") {
        format!(
            "CREATE TRIGGER fail_one BEFORE INSERT ON stripe_event_history
             WHEN NEW.event_id = '{event_id}' AND NEW.status <> 'failed'
             BEGIN SELECT RAISE({raise}, 'injected'); END;"
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

/// Delivers every body at once (each in a task of its own); the statuses, in the same order.
async fn deliver_all(s: &crate::helpers::shop::Shop, bodies: &[Vec<u8>]) -> Vec<u16> {
    let deliveries: Vec<_> = bodies
        .iter()
        .map(|body| {
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
    statuses
}

/// `n` concurrent deliveries, of which the one at `victim` is refused by the database with
/// `raise` (see [`fail_processing_of`]): that one alone is answered 500 and kept `failed`; every
/// other one is applied, stored once and answered 200; Stripe's retry then applies the victim.
async fn concurrent_deliveries_with_one_failing(n: usize, victim_at: usize, raise: &str) {
    let s = Arc::new(shop(&[("TOLLGATE_CHECKOUT_LIMIT", "100000")]).await);
    let product = s.credits_product(1000, 1).await;
    let checkouts: Vec<Value> =
        futures_util::stream::iter(0..n).map(|_| s.checkout(&product)).buffered(8).collect::<Vec<_>>().await;
    let events: Vec<(String, Vec<u8>)> = checkouts.iter().map(|c| completed(c, 1000)).collect();
    let victim = events[victim_at].0.clone();
    fail_processing_of(&s.app.database_url, &victim, raise).await;

    // All at once: the writer finds many queued while a commit runs, so they share transactions.
    let bodies: Vec<Vec<u8>> = events.iter().map(|(_, body)| body.clone()).collect();
    let statuses = deliver_all(&s, &bodies).await;
    for (i, status) in statuses.iter().enumerate() {
        let expected = if i == victim_at { 500 } else { 200 };
        assert_eq!(*status, expected, "delivery {i} ({})", events[i].0);
    }

    // Each event stored exactly once, with the status its answer said.
    let stored: Vec<(String, String)> = rows(&s.app, "SELECT event_id, status FROM stripe_events").await;
    assert_eq!(stored.len(), n);
    for (id, status) in &stored {
        let expected = if *id == victim { "failed" } else { "processed" };
        assert_eq!(status, expected, "event {id}");
    }
    // One history line each: applied once (the victim's says why it failed).
    let history: Vec<(String, i64)> = rows(&s.app, "SELECT event_id, count(*) FROM stripe_event_history GROUP BY event_id").await;
    assert_eq!(history.len(), n);
    assert!(history.iter().all(|(_, n)| *n == 1), "{history:?}");
    let (_, victim_history) = s.app.store.event(&victim).await.unwrap().unwrap();
    assert!(victim_history[0].detail.contains("injected"), "{:?}", victim_history[0].detail);

    // The victim's order was rolled back whole; every other order paid and granted once.
    for (i, checkout) in checkouts.iter().enumerate() {
        let order_id = checkout["order_id"].as_str().unwrap();
        let (status, grants) = if i == victim_at { ("pending", 0) } else { ("paid", 1) };
        assert_eq!(s.order(order_id).await["status"], status, "order {i}");
        assert_eq!(s.grants(order_id).await.len(), grants, "order {i}");
    }
    assert_eq!(s.entitlements().await["credit_balance"], (n - 1) as i64);

    // Stripe's retry once the database accepts it again: applied, still stored once.
    let drop_trigger = if s.app.database_url.starts_with("sqlite:") {
        "DROP TRIGGER fail_one"
    } else {
        "DROP TRIGGER fail_one ON stripe_event_history"
    };
    execute(&s.app.database_url, drop_trigger).await;
    assert_eq!(s.deliver(&events[victim_at].1).await, 200);
    assert_eq!(s.event_status(&victim).await, "processed");
    assert_eq!(s.entitlements().await["credit_balance"], n as i64);
    let stored: Vec<(i64,)> = rows(&s.app, "SELECT count(*) FROM stripe_events").await;
    assert_eq!(stored[0].0, n as i64);
}

#[tokio::test]
async fn two_hundred_concurrent_events_with_one_failing_fail_it_alone_and_acknowledge_the_rest_once() {
    concurrent_deliveries_with_one_failing(200, 117, "ABORT").await;
}

/// SQLite only (PostgreSQL has no failure that ends a transaction on its own): a trigger's
/// `RAISE(ROLLBACK)` takes the whole shared transaction with it, yet only its event is failed.
///
/// Which deliveries share the victim's batch depends on timing: should the victim land alone in
/// a batch, this passes without the writer's handling of an ended transaction ever running.
/// `store::ledger_tests::an_event_whose_failure_ends_the_transaction_fails_alone_and_the_rest_of_its_batch_commits`
/// hands the writer such a batch itself and covers that handling every time.
#[tokio::test]
async fn an_event_whose_failure_ends_the_shared_transaction_fails_alone_on_sqlite() {
    if std::env::var("TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        return skip(
            "group_commit::an_event_whose_failure_ends_the_shared_transaction_fails_alone_on_sqlite",
            "SQLite only, and TEST_DATABASE_URL is set (PostgreSQL never ends a transaction on its own)",
        );
    }
    concurrent_deliveries_with_one_failing(100, 41, "ROLLBACK").await;
}

/// PostgreSQL only: a shop with one pending credits order (its checkout) and the
/// `checkout.session.completed` (id, body) that pays it; `None`, the test skipped and saying so, without PostgreSQL.
async fn one_order_on_postgres(test: &str) -> Option<(Shop, Value, String, Vec<u8>)> {
    if !std::env::var("TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        skip(test, "needs PostgreSQL, and TEST_DATABASE_URL is not set");
        return None;
    }
    let s = shop(&[]).await;
    let product = s.credits_product(1000, 1).await;
    let checkout = s.checkout(&product).await;
    let (id, body) = completed(&checkout, 1000);
    Some((s, checkout, id, body))
}

/// PostgreSQL only: an event that keeps meeting deadlocks (injected: a trigger raising SQLSTATE
/// 40P01 on the first four tries, counted by a sequence, which no rollback undoes) is tried again
/// alone until it goes through.
#[tokio::test]
async fn an_event_that_keeps_meeting_deadlocks_is_tried_again_until_it_goes_through() {
    let Some((s, checkout, id, body)) =
        one_order_on_postgres("group_commit::an_event_that_keeps_meeting_deadlocks_is_tried_again_until_it_goes_through").await
    else {
        return;
    };
    execute(
        &s.app.database_url,
        &format!(
            "CREATE SEQUENCE deadlocks;
             CREATE FUNCTION deadlock() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.event_id = '{id}' THEN
                 IF nextval('deadlocks') <= 4 THEN RAISE EXCEPTION 'injected deadlock' USING ERRCODE = '40P01'; END IF;
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER deadlock BEFORE INSERT ON stripe_event_history FOR EACH ROW EXECUTE FUNCTION deadlock();"
        ),
    )
    .await;
    assert_eq!(s.deliver(&body).await, 200);
    assert_eq!(s.event_status(&id).await, "processed");
    let (_, history) = s.app.store.event(&id).await.unwrap().unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(s.grants(checkout["order_id"].as_str().unwrap()).await.len(), 1);
    let tries: Vec<(i64,)> = rows(&s.app, "SELECT last_value FROM deadlocks").await;
    assert_eq!(tries[0].0, 5, "four deadlocks (the batch's two tries, two alone), then through");
}

/// The same events delivered several times at once (Stripe retrying while the first delivery is
/// still in flight): on PostgreSQL the copies land in different writers' transactions side by
/// side. Each event is applied and stored once, and no delivery fails.
#[tokio::test]
async fn the_same_events_delivered_at_once_several_times_are_each_applied_once() {
    const EVENTS: usize = 40;
    const COPIES: usize = 4;
    let s = shop(&[("TOLLGATE_CHECKOUT_LIMIT", "100000")]).await;
    let product = s.credits_product(1000, 1).await;
    let checkouts: Vec<Value> =
        futures_util::stream::iter(0..EVENTS).map(|_| s.checkout(&product)).buffered(8).collect::<Vec<_>>().await;
    let events: Vec<(String, Vec<u8>)> = checkouts.iter().map(|c| completed(c, 1000)).collect();
    // Copies interleaved, so each batch holds several ids and several batches hold each id.
    let bodies: Vec<Vec<u8>> = (0..COPIES).flat_map(|_| events.iter().map(|(_, body)| body.clone())).collect();
    let statuses = deliver_all(&s, &bodies).await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");

    let stored: Vec<(String, String)> = rows(&s.app, "SELECT event_id, status FROM stripe_events").await;
    assert_eq!(stored.len(), EVENTS);
    assert!(stored.iter().all(|(_, status)| status == "processed"), "{stored:?}");
    let history: Vec<(String, i64)> = rows(&s.app, "SELECT event_id, count(*) FROM stripe_event_history GROUP BY event_id").await;
    assert_eq!(history.len(), EVENTS);
    assert!(history.iter().all(|(_, n)| *n == 1), "{history:?}");
    for checkout in &checkouts {
        assert_eq!(s.grants(checkout["order_id"].as_str().unwrap()).await.len(), 1);
    }
    assert_eq!(s.entitlements().await["credit_balance"], EVENTS as i64);
}

/// PostgreSQL only: the writer's connection dies inside a batch (a trigger terminates its own
/// backend: SQLSTATE 57P01). The delivery is answered 500 and nothing more is written for it: it
/// is not recorded `failed` (with group commit, one write per event of the batch, to a database
/// that just faulted). Stripe's retry stores and applies it.
#[tokio::test]
async fn a_connection_lost_inside_a_batch_answers_500_and_writes_nothing_more() {
    let Some((s, checkout, id, body)) =
        one_order_on_postgres("group_commit::a_connection_lost_inside_a_batch_answers_500_and_writes_nothing_more").await
    else {
        return;
    };
    execute(
        &s.app.database_url,
        &format!(
            "CREATE FUNCTION lose_connection() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.event_id = '{id}' AND NEW.status <> 'failed' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER lose_connection BEFORE INSERT ON stripe_event_history FOR EACH ROW EXECUTE FUNCTION lose_connection();"
        ),
    )
    .await;
    assert_eq!(s.deliver(&body).await, 500);
    let stored: Vec<(i64,)> = rows(&s.app, &format!("SELECT count(*) FROM stripe_events WHERE event_id = '{id}'")).await;
    assert_eq!(stored[0].0, 0, "not recorded `failed` after the fault");
    execute(&s.app.database_url, "DROP TRIGGER lose_connection ON stripe_event_history").await;
    assert_eq!(s.deliver(&body).await, 200);
    assert_eq!(s.event_status(&id).await, "processed");
    assert_eq!(s.grants(checkout["order_id"].as_str().unwrap()).await.len(), 1);
}
