//! Credits as a ledger: debits that never take a balance below zero whatever the concurrency, once
//! per Idempotency-Key; refunds and disputes that claw back only the unspent part; admin
//! adjustments; the movement lists; and `tollgate credits check`. After every scenario the ledger
//! is checked: every balance_after >= 0, each the running sum, and sum == balance == the last one.

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::assert_problem;
use crate::helpers::binary::{output_text, tollgate};
use crate::helpers::keys::api_key;
use crate::helpers::shop::{completed, dispute, refunded, shop, Shop};

/// The buyer pays for a product granting `credits`: the checkout answer.
async fn buy_credits(s: &Shop, credits: i64) -> Value {
    let product = s.credits_product(1000, credits).await;
    let checkout = s.checkout(&product).await;
    assert_eq!(s.deliver(&completed(&checkout, 1000).1).await, 200);
    checkout
}

/// POST a debit of the buyer's credits with `key`, `idempotency_key` and `body`.
async fn debit(s: &Shop, key: &str, user_id: &str, idempotency_key: Option<&str>, body: Value) -> reqwest::Response {
    let mut r = s.app.client.post(s.app.url(&format!("/api/v1/users/{user_id}/credits/debits"))).bearer_auth(key).json(&body);
    if let Some(k) = idempotency_key {
        r = r.header("Idempotency-Key", k);
    }
    r.send().await.unwrap()
}

/// The buyer's balance as `/me/entitlements` shows it.
async fn balance(s: &Shop) -> i64 {
    s.entitlements().await["credit_balance"].as_i64().unwrap()
}

/// Checks the ledger of `user_id` adds up and returns its movements, oldest first.
async fn assert_ledger(s: &Shop, user_id: &str) -> Vec<tollgate::store::credits::MovementRow> {
    let mut movements = s.app.store.credit_movements(user_id, 10_000, None).await.unwrap();
    movements.reverse();
    let mut running = 0;
    for (i, m) in movements.iter().enumerate() {
        assert_eq!(m.seq, i as i64 + 1, "movements are numbered in order");
        assert!(m.balance_after >= 0, "never negative: {m:?}");
        running += m.amount;
        assert_eq!(m.balance_after, running, "balance_after is the running sum: {m:?}");
    }
    let stored = s.app.store.credit_balance(user_id).await.unwrap();
    assert_eq!(stored, running, "the balance is the sum of the movements");
    assert_eq!(stored, movements.last().map_or(0, |m| m.balance_after), "and the last balance_after");
    assert_eq!(s.app.store.check_credits().await.unwrap(), vec![], "the recomputation agrees everywhere");
    movements
}

#[tokio::test]
async fn a_hundred_concurrent_debits_of_7_against_500_leave_3_and_never_go_negative() {
    let s = shop(&[]).await;
    buy_credits(&s, 500).await;
    let key = api_key(&s.app, &s.admin, &["credits:write"]).await;
    let answers = join_all((0..100).map(|i| {
        let (s, key) = (&s, &key);
        async move {
            let r = debit(s, key, &s.user_id, Some(&format!("debit-{i}")), json!({"amount": 7, "reason": "render"})).await;
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let ok: Vec<&Value> = answers.iter().filter(|(st, _)| *st == 201).map(|(_, b)| b).collect();
    let refused: Vec<&Value> = answers.iter().filter(|(st, _)| *st == 409).map(|(_, b)| b).collect();
    assert_eq!((ok.len(), refused.len()), (71, 29), "{:?}", answers.iter().map(|a| a.0).collect::<Vec<_>>());
    for problem in refused {
        assert!(problem["type"].as_str().unwrap().ends_with("insufficient-credits"), "{problem}");
        assert!(problem["balance"].as_i64().unwrap() < 7, "{problem}");
    }
    let mut after: Vec<i64> = ok.iter().map(|b| b["balance_after"].as_i64().unwrap()).collect();
    after.sort_unstable();
    assert_eq!(after, (0..71).map(|i| 3 + 7 * i).collect::<Vec<_>>(), "each debit saw its own balance");
    assert_eq!(balance(&s).await, 3);
    let movements = assert_ledger(&s, &s.user_id).await;
    assert_eq!(movements.iter().filter(|m| m.kind.as_str() == "debit").count(), 71);
}

#[tokio::test]
async fn one_idempotency_key_sent_ten_times_at_once_is_one_debit() {
    let s = shop(&[]).await;
    buy_credits(&s, 100).await;
    let key = api_key(&s.app, &s.admin, &["credits:write"]).await;
    let body = json!({"amount": 10, "reason": "export", "metadata": {"job": "42"}});
    let answers = join_all((0..10).map(|_| {
        let (s, key, body) = (&s, &key, body.clone());
        async move {
            let r = debit(s, key, &s.user_id, Some("same-key"), body).await;
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (r.status().as_u16(), replayed, r.json::<Value>().await.unwrap())
        }
    }))
    .await;
    assert!(answers.iter().all(|(st, _, _)| *st == 201), "{answers:?}");
    let first = &answers[0].2;
    assert!(answers.iter().all(|(_, _, b)| b["id"] == first["id"]), "all answers name the same debit: {answers:?}");
    assert_eq!(answers.iter().filter(|(_, replayed, _)| !replayed).count(), 1, "one made it, nine were replays");
    assert_eq!((first["amount"].as_i64(), first["balance_after"].as_i64()), (Some(10), Some(90)));
    assert_eq!(first["metadata"], json!({"job": "42"}));
    assert_eq!(balance(&s).await, 90);

    // Later retries replay too; the same key with another body is refused and changes nothing.
    let again = debit(&s, &key, &s.user_id, Some("same-key"), body.clone()).await;
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    let other = debit(&s, &key, &s.user_id, Some("same-key"), json!({"amount": 11, "reason": "export"})).await;
    assert_eq!(assert_problem(other, 422).await["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(balance(&s).await, 90);
    assert_eq!(assert_ledger(&s, &s.user_id).await.len(), 2);

    // Idempotency-Keys belong to their caller: another API key using the same one is its own
    // debit and never sees the first caller's answer.
    let other_service = api_key(&s.app, &s.admin, &["credits:write"]).await;
    let theirs = debit(&s, &other_service, &s.user_id, Some("same-key"), body).await;
    assert_eq!(theirs.status(), 201);
    assert!(theirs.headers().get("idempotent-replayed").is_none());
    assert_ne!(theirs.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(balance(&s).await, 80);
    assert_eq!(assert_ledger(&s, &s.user_id).await.len(), 3);
}

#[tokio::test]
async fn debits_refuse_bad_input_precisely_and_change_nothing() {
    let s = shop(&[]).await;
    buy_credits(&s, 50).await;
    let key = api_key(&s.app, &s.admin, &["credits:write"]).await;
    let reader = api_key(&s.app, &s.admin, &["entitlements:read"]).await;
    let u = s.user_id.clone();
    let ok = json!({"amount": 5, "reason": "x"});

    let missing = debit(&s, &key, &u, None, ok.clone()).await;
    assert!(assert_problem(missing, 400).await["detail"].as_str().unwrap().contains("Idempotency-Key"));
    let blank = debit(&s, &key, &u, Some(""), ok.clone()).await;
    assert_eq!(assert_problem(blank, 422).await["errors"][0]["field"], "Idempotency-Key");
    for amount in [json!(0), json!(-1), json!(1.5), json!("7"), json!(1_000_000_001), json!(null)] {
        let r = debit(&s, &key, &u, Some("k-amount"), json!({"amount": amount, "reason": "x"})).await;
        assert_eq!(assert_problem(r, 422).await["errors"][0]["field"], "amount", "amount {amount}");
    }
    let r = debit(&s, &key, &u, Some("k-reason"), json!({"amount": 5, "reason": ""})).await;
    assert_eq!(assert_problem(r, 422).await["errors"][0]["field"], "reason");
    let many: serde_json::Map<String, Value> = (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
    let r = debit(&s, &key, &u, Some("k-meta"), json!({"amount": 5, "reason": "x", "metadata": many})).await;
    assert_eq!(assert_problem(r, 422).await["errors"][0]["field"], "metadata");
    let r = debit(&s, &key, &u, Some("k-meta2"), json!({"amount": 5, "reason": "x", "metadata": {"n": 1}})).await;
    assert_eq!(assert_problem(r, 422).await["errors"][0]["field"], "metadata.n");

    // Unknown user: 404, the same for any id; a key without credits:write: 403; no key: 401.
    assert_problem(debit(&s, &key, "usr_000000000000000000000000", Some("k-404"), ok.clone()).await, 404).await;
    assert_problem(debit(&s, &reader, &u, Some("k-403"), ok.clone()).await, 403).await;
    assert_problem(debit(&s, "tg_test_not-a-key", &u, Some("k-401"), ok.clone()).await, 401).await;
    // A user's own token is not a key.
    assert_problem(debit(&s, &s.user, &u, Some("k-user"), ok.clone()).await, 401).await;

    // More than the balance: 409 naming it, nothing debited.
    let r = debit(&s, &key, &u, Some("k-409"), json!({"amount": 51, "reason": "x"})).await;
    let problem = assert_problem(r, 409).await;
    assert!(problem["type"].as_str().unwrap().ends_with("insufficient-credits"));
    assert_eq!(problem["balance"], 50);
    assert!(problem["detail"].as_str().unwrap().contains("50"), "{problem}");
    // A user without any credits at all.
    let (_, other) =
        crate::helpers::accounts::bearer_for(&s.app, "poor@example.com", tollgate::domain::account::Role::User).await;
    let r = debit(&s, &key, &other, Some("k-poor"), json!({"amount": 1, "reason": "x"})).await;
    assert_eq!(assert_problem(r, 409).await["balance"], 0);

    assert_eq!(balance(&s).await, 50);
    assert_eq!(assert_ledger(&s, &u).await.len(), 1, "only the purchase");
    // After the refusal the same key may be used for a debit that fits.
    let r = debit(&s, &key, &u, Some("k-409"), json!({"amount": 50, "reason": "x"})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(balance(&s).await, 0);
}

#[tokio::test]
async fn a_refund_after_partial_spending_claws_back_only_the_unspent_part() {
    let s = shop(&[]).await;
    let key = api_key(&s.app, &s.admin, &["credits:write"]).await;
    let checkout = buy_credits(&s, 500).await;
    let order_id = checkout["order_id"].as_str().unwrap();
    let r = debit(&s, &key, &s.user_id, Some("spend"), json!({"amount": 430, "reason": "renders"})).await;
    assert_eq!(r.status(), 201);

    // A partial refund keeps the grant and the credits.
    assert_eq!(s.deliver(&refunded(&checkout, 1000, 300).1).await, 200);
    assert_eq!(balance(&s).await, 70);
    assert_eq!(s.order(order_id).await["credits_unrecoverable"], 0);
    // The rest: only the unspent 70 come back; 430 were spent and are recorded on the order.
    assert_eq!(s.deliver(&refunded(&checkout, 1000, 1000).1).await, 200);
    assert_eq!(balance(&s).await, 0, "zero, not -430");
    let order = s.order(order_id).await;
    assert_eq!((order["status"].as_str(), order["credits_unrecoverable"].as_i64()), (Some("refunded"), Some(430)));
    let listed = s.get(&s.user, "/api/v1/orders").await.json::<Value>().await.unwrap();
    assert_eq!(listed["data"][0]["credits_unrecoverable"], 430, "the list shows it too");
    // The refund event again (Stripe retries): nothing more.
    assert_eq!(s.deliver(&refunded(&checkout, 1000, 1000).1).await, 200);
    let movements = assert_ledger(&s, &s.user_id).await;
    let kinds: Vec<(&str, i64)> = movements.iter().map(|m| (m.kind.as_str(), m.amount)).collect();
    assert_eq!(kinds, vec![("grant", 500), ("debit", -430), ("clawback", -70)]);
    assert_eq!(movements[2].order_id.as_deref(), Some(order_id));

    // Credits bought later are not touched by the old order's refund.
    buy_credits(&s, 100).await;
    assert_eq!(balance(&s).await, 100);
    assert_ledger(&s, &s.user_id).await;
}

#[tokio::test]
async fn debits_racing_the_refund_never_go_negative_and_what_they_spent_is_exactly_the_unrecoverable_part() {
    let s = shop(&[]).await;
    let key = api_key(&s.app, &s.admin, &["credits:write"]).await;
    let checkout = buy_credits(&s, 500).await;
    let refund = refunded(&checkout, 1000, 1000).1;
    let debits = join_all((0..60).map(|i| {
        let (s, key) = (&s, &key);
        async move {
            debit(s, key, &s.user_id, Some(&format!("race-{i}")), json!({"amount": 7, "reason": "x"})).await.status().as_u16()
        }
    }));
    let (statuses, delivered) = tokio::join!(debits, s.deliver(&refund));
    assert_eq!(delivered, 200);
    assert!(statuses.iter().all(|st| *st == 201 || *st == 409), "{statuses:?}");
    let spent = 7 * statuses.iter().filter(|st| **st == 201).count() as i64;
    assert_eq!(balance(&s).await, 0, "the refund took whatever was left");
    let order = s.order(checkout["order_id"].as_str().unwrap()).await;
    assert_eq!(order["credits_unrecoverable"], spent, "what the debits spent before the claw-back, exactly");
    let movements = assert_ledger(&s, &s.user_id).await;
    let clawed: i64 = movements.iter().filter(|m| m.kind.as_str() == "clawback").map(|m| -m.amount).sum();
    assert_eq!(clawed + spent, 500);
}

#[tokio::test]
async fn a_dispute_holds_the_unspent_credits_a_won_one_restores_them_a_lost_one_keeps_them_clawed() {
    let s = shop(&[]).await;
    let key = api_key(&s.app, &s.admin, &["credits:write"]).await;
    for (outcome, after) in [("won", 300), ("lost", 0)] {
        let checkout = buy_credits(&s, 500).await;
        let order_id = checkout["order_id"].as_str().unwrap();
        let r = debit(&s, &key, &s.user_id, Some(&format!("spend-{outcome}")), json!({"amount": 200, "reason": "x"})).await;
        assert_eq!(r.status(), 201);
        assert_eq!(balance(&s).await, 300);

        assert_eq!(s.deliver(&dispute(&checkout, "charge.dispute.created", "needs_response").1).await, 200);
        assert_eq!(balance(&s).await, 0, "the unspent 300 are held");
        assert_eq!(s.order(order_id).await["credits_unrecoverable"], 200);
        // Nothing to spend while held.
        let r = debit(&s, &key, &s.user_id, Some(&format!("held-{outcome}")), json!({"amount": 1, "reason": "x"})).await;
        assert_eq!(assert_problem(r, 409).await["balance"], 0);

        assert_eq!(s.deliver(&dispute(&checkout, "charge.dispute.closed", outcome).1).await, 200);
        assert_eq!(balance(&s).await, after, "{outcome}");
        let unrecoverable = if outcome == "won" { 0 } else { 200 };
        assert_eq!(s.order(order_id).await["credits_unrecoverable"], unrecoverable, "{outcome}");
        let movements = assert_ledger(&s, &s.user_id).await;
        let last = movements.last().unwrap();
        match outcome {
            "won" => assert_eq!((last.kind.as_str(), last.amount), ("restore", 300)),
            _ => assert_eq!((last.kind.as_str(), last.amount), ("clawback", -300), "a loss claws nothing more"),
        }
        // Spend what is left, so the next round starts from zero.
        if after > 0 {
            let r = debit(&s, &key, &s.user_id, Some("rest"), json!({"amount": after, "reason": "x"})).await;
            assert_eq!(r.status(), 201);
        }
    }
}

#[tokio::test]
async fn admin_adjustments_add_and_remove_never_below_zero_and_are_audited() {
    let s = shop(&[]).await;
    let path = format!("/api/v1/admin/users/{}/credits/adjustments", s.user_id);
    let r = s.post(&s.admin, &path, json!({"amount": 120, "reason": "welcome gift"})).await;
    assert_eq!(r.status(), 201);
    let added: Value = r.json().await.unwrap();
    assert!(added["id"].as_str().unwrap().starts_with("cm_"));
    assert_eq!(
        (added["kind"].as_str(), added["amount"].as_i64(), added["balance_after"].as_i64()),
        (Some("adjustment"), Some(120), Some(120))
    );
    let r = s.post(&s.admin, &path, json!({"amount": -20, "reason": "correction"})).await;
    assert_eq!(r.json::<Value>().await.unwrap()["balance_after"], 100);

    let problem = assert_problem(s.post(&s.admin, &path, json!({"amount": -101, "reason": "too much"})).await, 409).await;
    assert!(problem["type"].as_str().unwrap().ends_with("insufficient-credits"));
    assert_eq!(problem["balance"], 100);
    for bad in [json!({"amount": 0, "reason": "x"}), json!({"amount": 2.5, "reason": "x"}), json!({"reason": "x"})] {
        assert_eq!(assert_problem(s.post(&s.admin, &path, bad).await, 422).await["errors"][0]["field"], "amount");
    }
    assert_eq!(
        assert_problem(s.post(&s.admin, &path, json!({"amount": 1, "reason": ""})).await, 422).await["errors"][0]["field"],
        "reason"
    );
    assert_problem(
        s.post(&s.admin, "/api/v1/admin/users/usr_nobody/credits/adjustments", json!({"amount": 1, "reason": "x"})).await,
        404,
    )
    .await;
    // The buyer is no admin.
    assert_problem(s.post(&s.user, &path, json!({"amount": 1000, "reason": "mine"})).await, 403).await;

    // An Idempotency-Key makes a retry one adjustment.
    let send = || {
        s.app
            .client
            .post(s.app.url(&path))
            .bearer_auth(&s.admin)
            .header("Idempotency-Key", "adj-1")
            .json(&json!({"amount": 5, "reason": "retry me"}))
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(balance(&s).await, 105);

    let audit = s.app.store.list_audit(100).await.unwrap();
    let adjustments: Vec<_> = audit.iter().filter(|e| e.action == "credits.adjust").collect();
    assert_eq!(adjustments.len(), 3, "two adjustments and the idempotent one, each once");
    assert!(adjustments.iter().all(|e| e.resource.as_deref() == Some(s.user_id.as_str())));
    assert_ledger(&s, &s.user_id).await;
}

#[tokio::test]
async fn movement_lists_are_newest_first_and_paginated_for_the_user_and_the_merchant() {
    let s = shop(&[]).await;
    let checkout = buy_credits(&s, 40).await;
    let path = format!("/api/v1/admin/users/{}/credits/adjustments", s.user_id);
    for i in 1..=3 {
        assert_eq!(s.post(&s.admin, &path, json!({"amount": i, "reason": format!("gift {i}")})).await.status(), 201);
    }
    let mine: Value = s.get(&s.user, "/api/v1/me/credits?limit=2").await.json().await.unwrap();
    assert_eq!(mine["has_more"], true);
    let amounts: Vec<i64> = mine["data"].as_array().unwrap().iter().map(|m| m["amount"].as_i64().unwrap()).collect();
    assert_eq!(amounts, vec![3, 2]);
    assert_eq!(mine["data"][0]["balance_after"], 46);
    let last = mine["data"][1]["id"].as_str().unwrap();
    let rest: Value = s.get(&s.user, &format!("/api/v1/me/credits?limit=2&starting_after={last}")).await.json().await.unwrap();
    assert_eq!(rest["has_more"], false);
    let grant = &rest["data"][1];
    assert_eq!((grant["kind"].as_str(), grant["amount"].as_i64()), (Some("grant"), Some(40)));
    assert_eq!(grant["order_id"], checkout["order_id"]);
    assert_problem(s.get(&s.user, "/api/v1/me/credits?limit=0").await, 422).await;
    // Another user sees only their own (none).
    let (other, _) =
        crate::helpers::accounts::bearer_for(&s.app, "other@example.com", tollgate::domain::account::Role::User).await;
    let theirs: Value = s.get(&other, "/api/v1/me/credits").await.json().await.unwrap();
    assert_eq!(theirs, json!({"data": [], "has_more": false}));

    // The merchant's server with entitlements:read sees the same list; without it, 403.
    let reader = api_key(&s.app, &s.admin, &["entitlements:read"]).await;
    let writer = api_key(&s.app, &s.admin, &["credits:write"]).await;
    let by_key = |key: String, user: String| {
        let url = s.app.url(&format!("/api/v1/users/{user}/credits"));
        let client = s.app.client.clone();
        async move { client.get(url).bearer_auth(key).send().await.unwrap() }
    };
    let listed: Value = by_key(reader.clone(), s.user_id.clone()).await.json().await.unwrap();
    let all_mine: Value = s.get(&s.user, "/api/v1/me/credits").await.json().await.unwrap();
    assert_eq!(listed, all_mine);
    assert_eq!(listed["data"].as_array().unwrap().len(), 4);
    assert_problem(by_key(writer, s.user_id.clone()).await, 403).await;
    assert_problem(by_key(reader, "usr_nobody".to_owned()).await, 404).await;
}

/// Runs a statement on the test's database (to play a bug or an operator editing it by hand).
async fn tamper(database_url: &str, sql: &str, user_id: &str) {
    use sqlx::Connection;
    let takes_user = sql.contains("$1");
    if database_url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        let q = sqlx::query(sql);
        if takes_user { q.bind(user_id) } else { q }.execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(database_url).await.unwrap();
        let q = sqlx::query(sql);
        if takes_user { q.bind(user_id) } else { q }.execute(&mut c).await.unwrap();
    }
}

#[tokio::test]
async fn tollgate_credits_check_recomputes_every_balance_and_names_the_users_that_disagree() {
    let s = shop(&[]).await;
    buy_credits(&s, 500).await;
    let path = format!("/api/v1/admin/users/{}/credits/adjustments", s.user_id);
    assert_eq!(s.post(&s.admin, &path, json!({"amount": -123, "reason": "spent"})).await.status(), 201);
    let dir = tempfile::tempdir().unwrap();
    let check =
        || tollgate(dir.path(), &[("DATABASE_URL", s.app.database_url.as_str())]).args(["credits", "check"]).output().unwrap();

    let out = check();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("every balance agrees"), "{}", output_text(&out));

    // A balance changed behind the ledger's back.
    tamper(&s.app.database_url, "UPDATE credit_balances SET balance = balance + 5 WHERE user_id = $1", &s.user_id).await;
    let out = check();
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.contains(&s.user_id) && text.contains("balance 382") && text.contains("sum of movements 377"), "{text}");
    let reported = s.app.store.check_credits().await.unwrap();
    assert_eq!(reported.len(), 1);
    assert_eq!((reported[0].balance, reported[0].total, reported[0].last_balance_after), (382, 377, 377));
}

#[tokio::test]
async fn the_migration_turns_active_and_held_credits_grants_into_movements_and_balances() {
    let s = shop(&[]).await;
    let (active, held, revoked) = (buy_credits(&s, 500).await, buy_credits(&s, 300).await, buy_credits(&s, 200).await);
    assert_eq!(s.deliver(&dispute(&held, "charge.dispute.created", "needs_response").1).await, 200);
    assert_eq!(s.deliver(&refunded(&revoked, 1000, 1000).1).await, 200);
    // Back to the schema before the ledger, with the grants as they were: active, suspended, revoked.
    let before = [
        "DROP TABLE credit_movements",
        "DROP TABLE credit_balances",
        "ALTER TABLE orders DROP COLUMN credits_unrecoverable",
        "ALTER TABLE grants DROP COLUMN credits_clawed_back",
        "ALTER TABLE grants DROP COLUMN credits_step",
        "DELETE FROM _sqlx_migrations WHERE version = 20261201000004",
    ];
    for sql in before {
        tamper(&s.app.database_url, sql, "").await;
    }
    let states: Vec<String> = [&active, &held, &revoked].iter().map(|c| c["order_id"].as_str().unwrap().to_owned()).collect();
    let mut seen = Vec::new();
    for order_id in &states {
        seen.push(s.grants(order_id).await[0].status.as_str().to_owned());
    }
    assert_eq!(seen, vec!["active", "suspended", "revoked"]);

    assert_eq!(s.app.store.migrate().await.unwrap(), vec![20261201000004]);
    assert_eq!(balance(&s).await, 500, "only the active grant's credits are spendable");
    let movements = assert_ledger(&s, &s.user_id).await;
    let kinds: Vec<(&str, i64)> = movements.iter().map(|m| (m.kind.as_str(), m.amount)).collect();
    assert_eq!(kinds, vec![("grant", 500), ("grant", 300), ("clawback", -300)]);
    assert!(movements.iter().all(|m| m.id.starts_with("cm_") && m.actor == "system"));
    // The held grant is restored by a won dispute, exactly as if it had been held by the ledger.
    assert_eq!(s.deliver(&dispute(&held, "charge.dispute.closed", "won").1).await, 200);
    assert_eq!(balance(&s).await, 800);
    assert_ledger(&s, &s.user_id).await;
}
