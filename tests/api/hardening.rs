//! The accounts findings of the outside review, each as the attack that found it: lockouts handed
//! to attackers, logins racing a password change or a disable, the hashing queue, dead sessions
//! listed forever, lost refresh answers, admins demoting each other, secrets kept at rest.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::accounts::{
    change_password, login, make_admin, me_with_bearer, me_with_cookie, one_place_password_queue, register, session_cookie_from,
    tokens, wrong_password_burst, Browser, NEW_PASSWORD, PASSWORD,
};
use crate::helpers::{assert_problem, spawn_app, spawn_app_with, TestApp};

/// A login from `ip` (the app trusts 127.0.0.1 as a proxy, so X-Forwarded-For names the client).
async fn login_from(app: &TestApp, ip: &str, email: &str, password: &str, device: Option<&str>) -> reqwest::Response {
    let mut r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", ip)
        .json(&json!({"email": email, "password": password}));
    if let Some(d) = device {
        r = r.header("cookie", d);
    }
    r.send().await.unwrap()
}

/// The statuses of `logins` (address, password) for `email`, all sent at once.
async fn login_burst(app: &TestApp, email: &str, logins: Vec<(String, String)>) -> Vec<u16> {
    let sent: Vec<_> = logins
        .into_iter()
        .map(|(ip, password)| {
            let (client, url, email) = (app.client.clone(), app.url("/api/v1/auth/login"), email.to_owned());
            tokio::spawn(async move {
                let body = json!({"email": email, "password": password});
                client.post(url).header("x-forwarded-for", ip).json(&body).send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for s in sent {
        statuses.push(s.await.unwrap());
    }
    statuses
}

/// The device cookie a login set (`name=value`).
fn device_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.contains("tollgate_device="))
        .map(|c| c.split(';').next().unwrap().to_owned())
}

async fn checked_guesses(app: &TestApp) -> usize {
    app.store.list_audit(1000).await.unwrap().iter().filter(|e| e.action == "login.failure").count()
}

#[tokio::test]
async fn one_client_gets_ten_guesses_and_the_owner_still_gets_in_from_elsewhere() {
    let app = spawn_app_with(&[("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    register(&app, "ada@example.com").await;
    let attacker = "198.51.100.7";
    for i in 0..10 {
        let r = login_from(&app, attacker, "ada@example.com", "wrong password entirely", None).await;
        assert_eq!(r.status(), 401, "guess {}", i + 1);
    }
    // The eleventh from the same client is refused, even with the right password and whatever
    // the address's case.
    for email in ["ada@example.com", "ADA@example.com"] {
        let r = login_from(&app, attacker, email, PASSWORD, None).await;
        assert_eq!(r.headers().get("ratelimit-limit").unwrap(), "10");
        assert!(r.headers().get("retry-after").unwrap().to_str().unwrap().parse::<u64>().unwrap() > 0);
        assert_problem(r, 429).await;
    }
    assert_eq!(checked_guesses(&app).await, 10, "exactly ten guesses were checked");
    // The owner, from an address that never failed, is not locked out.
    let r = login_from(&app, "203.0.113.5", "ada@example.com", PASSWORD, None).await;
    assert_eq!(r.status(), 200, "the owner gets in while the attacker is limited");

    // The same answers for an account that does not exist.
    for _ in 0..10 {
        assert_eq!(login_from(&app, attacker, "nobody@example.com", "wrong password entirely", None).await.status(), 401);
    }
    assert_eq!(login_from(&app, attacker, "nobody@example.com", PASSWORD, None).await.status(), 429);
}

#[tokio::test]
async fn parallel_guesses_from_one_client_all_count() {
    let app = spawn_app_with(&[("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    register(&app, "ada@example.com").await;
    let guesses = (0..20).map(|i| ("198.51.100.7".to_owned(), format!("wrong password number {i}"))).collect();
    let statuses = login_burst(&app, "ada@example.com", guesses).await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(checked <= 10, "at most 10 guesses were checked, not {checked}: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 20 - checked);
    assert_eq!(login_from(&app, "203.0.113.5", "ada@example.com", PASSWORD, None).await.status(), 200);
}

#[tokio::test]
async fn guesses_from_many_clients_hit_a_ceiling_that_never_stops_a_known_device_or_address() {
    let app = spawn_app_with(&[("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32"), ("TOLLGATE_LOGIN_ACCOUNT_CEILING", "5")]).await;
    register(&app, "ada@example.com").await;
    // Ada logged in before from her office, and from her laptop's browser (which keeps its cookie).
    assert_eq!(login_from(&app, "192.0.2.10", "ada@example.com", PASSWORD, None).await.status(), 200);
    let first = login_from(&app, "192.0.2.20", "ada@example.com", PASSWORD, None).await;
    let laptop = device_cookie(&first).expect("a device cookie at the first login");
    assert!(first.headers().get_all("set-cookie").iter().any(|c| c.to_str().unwrap().contains("HttpOnly")));

    // A botnet: one guess per address.
    for i in 0..5 {
        let r = login_from(&app, &format!("198.51.100.{i}"), "ada@example.com", "wrong password entirely", None).await;
        assert_eq!(r.status(), 401, "guess {}", i + 1);
    }
    // Past the ceiling, unknown clients take turns: one attempt per 15 min / 5 = 3 min. The next
    // turn is free; after it the wait is longer than the 10 s an attempt may wait, so it is 429
    // with the time to wait, right password or not.
    assert_eq!(login_from(&app, "198.51.100.99", "ada@example.com", "another wrong guess", None).await.status(), 401);
    for password in ["yet another wrong guess", PASSWORD] {
        let r = login_from(&app, "198.51.100.99", "ada@example.com", password, None).await;
        assert!(r.headers().get("retry-after").unwrap().to_str().unwrap().parse::<u64>().unwrap() > 10);
        assert_problem(r, 429).await;
    }
    assert_eq!(checked_guesses(&app).await, 6, "the ceiling bounds guesses across clients");

    // Ada from her office address, and from her laptop on a new network, gets straight in.
    assert_eq!(login_from(&app, "192.0.2.10", "ada@example.com", PASSWORD, None).await.status(), 200);
    assert_eq!(login_from(&app, "203.0.113.200", "ada@example.com", PASSWORD, Some(&laptop)).await.status(), 200);
    // A forged or foreign device cookie buys an attacker nothing.
    let forged = format!("{laptop}x");
    assert_eq!(login_from(&app, "198.51.100.98", "ada@example.com", PASSWORD, Some(&forged)).await.status(), 429);
    register(&app, "eve@example.com").await;
    let eves = device_cookie(&login_from(&app, "198.51.100.97", "eve@example.com", PASSWORD, None).await).unwrap();
    assert_eq!(login_from(&app, "198.51.100.97", "ada@example.com", PASSWORD, Some(&eves)).await.status(), 429);
    // A known address is still held to its own ten guesses.
    for _ in 0..10 {
        assert_eq!(login_from(&app, "192.0.2.10", "ada@example.com", "wrong password entirely", None).await.status(), 401);
    }
    assert_eq!(login_from(&app, "192.0.2.10", "ada@example.com", PASSWORD, None).await.status(), 429);
    assert_eq!(login_from(&app, "203.0.113.201", "ada@example.com", PASSWORD, Some(&laptop)).await.status(), 200);
}

#[tokio::test]
async fn past_the_ceiling_a_stranger_is_slowed_not_refused() {
    let app = spawn_app_with(&[
        ("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("TOLLGATE_LOGIN_ACCOUNT_CEILING", "4"),
        ("TOLLGATE_LOGIN_FAILURE_WINDOW", "20s"),
    ])
    .await;
    register(&app, "ada@example.com").await;
    for i in 0..4 {
        assert_eq!(login_from(&app, &format!("198.51.100.{i}"), "ada@example.com", "wrong guess here", None).await.status(), 401);
    }
    // Past the ceiling: one attempt per 20 s / 4 = 5 s. The first takes the free slot, the next
    // waits for the one after it, then is checked.
    assert_eq!(login_from(&app, "198.51.100.50", "ada@example.com", "wrong guess here", None).await.status(), 401);
    let started = Instant::now();
    let r = login_from(&app, "198.51.100.51", "ada@example.com", PASSWORD, None).await;
    let waited = started.elapsed();
    assert_eq!(r.status(), 200, "slowed, then let through: the owner on a new device is not locked out");
    assert!(waited >= Duration::from_secs(3), "it waited its turn ({waited:?})");
}

#[tokio::test]
async fn changing_the_password_has_its_own_limit_and_never_shares_the_login_one() {
    let app = spawn_app_with(&[("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    register(&app, "ada@example.com").await;
    let ada = login(&app, "ada@example.com", PASSWORD).await;
    // An attacker exhausts the logins of Ada's own address.
    for _ in 0..10 {
        login_from(&app, "127.0.0.1", "ada@example.com", "wrong password entirely", None).await;
    }
    // Wrong current passwords are limited on their own key ...
    for _ in 0..10 {
        let r = change_password(&app, &ada, "not my password", "a strong new passphrase 123").await;
        assert_eq!(r.status(), 422);
    }
    assert_problem(change_password(&app, &ada, "not my password", "a strong new passphrase 123").await, 429).await;
    // ... which does not lock Ada out of logging in from another address.
    assert_eq!(login_from(&app, "203.0.113.5", "ada@example.com", PASSWORD, None).await.status(), 200);

    let app = spawn_app_with(&[("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    register(&app, "ada@example.com").await;
    let ada = login(&app, "ada@example.com", PASSWORD).await;
    for _ in 0..10 {
        login_from(&app, "127.0.0.1", "ada@example.com", "wrong password entirely", None).await;
    }
    // Failed logins do not stop the owner changing her password.
    let r = change_password(&app, &ada, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn a_wrong_current_password_is_refused_before_the_new_ones_strength_is_judged() {
    let app = spawn_app().await;
    register(&app, "ada@example.com").await;
    let ada = login(&app, "ada@example.com", PASSWORD).await;
    // The review's look-alike string: costly to judge, and judged for nobody who lacks the password.
    let lookalike: String = "4@8({[</369&#!1/|0$5+7%2/".chars().cycle().take(128).collect();
    let weak = "aaaaaaaaaaaaaaaaaaaa".to_owned();
    for new in [lookalike, weak] {
        let r = change_password(&app, &ada, "not my password", &new).await;
        let body = assert_problem(r, 422).await;
        let fields: Vec<&str> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert_eq!(fields, ["current_password"], "no strength verdict without the current password");
    }
    // With the right current password the weak one is judged and refused.
    let r = change_password(&app, &ada, PASSWORD, "aaaaaaaaaaaaaaaaaaaa").await;
    let body = assert_problem(r, 422).await;
    assert_eq!(body["errors"][0]["field"], "new_password");
    // A long look-alike password registers (judged on its first 64 characters, off the runtime).
    let lookalike: String = "4@8({[</369&#!1/|0$5+7%2/".chars().cycle().take(128).collect();
    let r = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"email": "grace@example.com", "password": lookalike}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn a_full_password_queue_answers_503_at_once() {
    let app = one_place_password_queue().await;
    let mut busy = 0;
    for (status, retry_after, body) in wrong_password_burst(&app, 40).await {
        match status {
            401 => {}
            503 => {
                busy += 1;
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert_eq!(body["status"], 503);
                assert!(body["detail"].as_str().unwrap().contains("password checks are waiting"), "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(busy > 0, "with one place in the queue, a burst of 40 is partly refused at once");
    // Once the burst is over, logins are served again.
    register(&app, "ada@example.com").await;
    assert_eq!(login_from(&app, "203.0.113.5", "ada@example.com", PASSWORD, None).await.status(), 200);
}

/// Logs in with `password` from several tasks until `stop`, keeping every session cookie and
/// token pair that was issued.
async fn keep_logging_in(
    app: &TestApp,
    email: &'static str,
    password: &'static str,
    stop: &std::sync::atomic::AtomicBool,
) -> (Vec<String>, Vec<(String, String)>) {
    let mut sessions = Vec::new();
    let mut pairs = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let r = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            sessions.extend(session_cookie_from(r.headers()));
        }
        let r = app
            .client
            .post(app.url("/api/v1/auth/token"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let body: Value = r.json().await.unwrap();
            pairs.push((body["access_token"].as_str().unwrap().to_owned(), body["refresh_token"].as_str().unwrap().to_owned()));
        }
    }
    (sessions, pairs)
}

/// Eight attackers who know `password` keep logging in to `email` from 300 ms before `event` until
/// 300 ms after it (logins already past the password check when it commits finish after it);
/// every session cookie and token pair they were issued.
async fn logins_around(
    app: &std::sync::Arc<TestApp>,
    email: &'static str,
    password: &'static str,
    event: impl std::future::Future<Output = ()>,
) -> (Vec<String>, Vec<(String, String)>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attackers: Vec<_> = (0..8)
        .map(|_| {
            let (app, stop) = (app.clone(), stop.clone());
            tokio::spawn(async move { keep_logging_in(&app, email, password, &stop).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    event.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut sessions, mut pairs) = (Vec::new(), Vec::new());
    for a in attackers {
        let (s, p) = a.await.unwrap();
        sessions.extend(s);
        pairs.extend(p);
    }
    (sessions, pairs)
}

async fn refresh_status(app: &TestApp, refresh: &str) -> u16 {
    app.client
        .post(app.url("/api/v1/auth/refresh"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_login_racing_a_password_change_outlives_it() {
    let app = std::sync::Arc::new(
        spawn_app_with(&[("TOLLGATE_LOGIN_IP_LIMIT", "100000"), ("TOLLGATE_LOGIN_MAX_FAILURES", "100000")]).await,
    );
    register(&app, "ada@example.com").await;
    let ada = login(&app, "ada@example.com", PASSWORD).await;
    // Eight attackers who know the old password keep logging in while Ada changes it.
    let (sessions, pairs) = logins_around(&app, "ada@example.com", PASSWORD, async {
        let r = change_password(&app, &ada, PASSWORD, NEW_PASSWORD).await;
        assert_eq!(r.status(), 204);
    })
    .await;
    assert!(!sessions.is_empty() && !pairs.is_empty(), "the attackers did get in before the change");
    for cookie in &sessions {
        assert_eq!(me_with_cookie(&app, cookie).await, 401, "a session of the old password is dead");
    }
    for (access, refresh) in &pairs {
        assert_eq!(me_with_bearer(&app, access).await, 401, "an access token of the old password is dead");
        assert_eq!(refresh_status(&app, refresh).await, 401, "a refresh family of the old password is dead");
    }
    assert_eq!(me_with_cookie(&app, &ada.cookie).await, 200, "the session that changed it stays");
    let sessions_listed: Value =
        app.client.get(app.url("/api/v1/me/sessions")).header("cookie", &ada.cookie).send().await.unwrap().json().await.unwrap();
    assert_eq!(sessions_listed["data"].as_array().unwrap().len(), 1, "only Ada's own session is listed: {sessions_listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_made_while_an_account_is_disabled_never_come_back_on_re_enable() {
    let app = std::sync::Arc::new(
        spawn_app_with(&[("TOLLGATE_LOGIN_IP_LIMIT", "100000"), ("TOLLGATE_LOGIN_MAX_FAILURES", "100000")]).await,
    );
    let admin = make_admin(&app, "root@example.com").await;
    let user = register(&app, "ada@example.com").await;
    let id = user["id"].as_str().unwrap().to_owned();
    let patch = |disabled: bool| {
        app.client
            .patch(app.url(&format!("/api/v1/admin/users/{id}")))
            .header("cookie", &admin.cookie)
            .header("x-csrf-token", &admin.csrf)
            .json(&json!({ "disabled": disabled }))
            .send()
    };
    let (sessions, pairs) = logins_around(&app, "ada@example.com", PASSWORD, async {
        assert_eq!(patch(true).await.unwrap().status(), 200);
    })
    .await;
    assert!(!sessions.is_empty());
    assert_eq!(patch(false).await.unwrap().status(), 200);
    for cookie in &sessions {
        assert_eq!(me_with_cookie(&app, cookie).await, 401, "a session from before the disable stays dead");
    }
    for (access, refresh) in &pairs {
        assert_eq!(me_with_bearer(&app, access).await, 401);
        assert_eq!(refresh_status(&app, refresh).await, 401);
    }
    assert!(!login(&app, "ada@example.com", PASSWORD).await.cookie.is_empty(), "a new login works");
}

#[tokio::test]
async fn the_session_list_shows_live_sessions_a_page_at_a_time_and_the_purge_removes_dead_ones() {
    let app = spawn_app_with(&[("TOLLGATE_SESSION_IDLE_TIMEOUT", "5s")]).await;
    register(&app, "ada@example.com").await;
    let stale = login(&app, "ada@example.com", PASSWORD).await;
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let a = login(&app, "ada@example.com", PASSWORD).await;
    let _b = login(&app, "ada@example.com", PASSWORD).await;
    let c = login(&app, "ada@example.com", PASSWORD).await;
    let list = |b: &Browser, query: &'static str| {
        app.client.get(app.url(&format!("/api/v1/me/sessions{query}"))).header("cookie", b.cookie.clone()).send()
    };
    let all: Value = list(&c, "").await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = all["data"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "the idle session is not listed: {all}");
    assert_eq!(all["has_more"], false);
    assert_eq!(all["data"][0]["current"], true, "newest first, and this one is the caller's");
    let page: Value = list(&c, "?limit=2").await.unwrap().json().await.unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["has_more"], true);
    let last = page["data"][1]["id"].as_str().unwrap().to_owned();
    let rest: Value = app
        .client
        .get(app.url(&format!("/api/v1/me/sessions?limit=2&starting_after={last}")))
        .header("cookie", &c.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["id"], ids[2]);
    assert_eq!(rest["has_more"], false);
    assert_problem(list(&c, "?limit=0").await.unwrap(), 422).await;
    assert_problem(list(&c, "?limit=101").await.unwrap(), 422).await;

    // The hourly purge removes the idle session from the database (and nothing live).
    let user = app.store.user_by_email("ada@example.com").await.unwrap().unwrap();
    let stale_hash = tollgate::domain::crypto::token_hash(stale.cookie.split_once('=').unwrap().1);
    assert!(app.store.session_by_token_hash(&stale_hash).await.unwrap().is_some(), "still stored before the purge");
    let purged = app.state.auth.purge_expired().await.unwrap();
    assert_eq!(purged.sessions, 1);
    assert!(app.store.session_by_token_hash(&stale_hash).await.unwrap().is_none());
    assert_eq!(me_with_cookie(&app, &a.cookie).await, 200);
    let now = chrono::Utc::now();
    let live = app
        .store
        .list_live_sessions(&user.id, user.credential_epoch, now, now - chrono::Duration::hours(1), 100, None)
        .await
        .unwrap();
    assert_eq!(live.len(), 3);
}

#[tokio::test]
async fn the_purge_removes_expired_refresh_tokens_and_dead_families() {
    let app = spawn_app().await;
    register(&app, "ada@example.com").await;
    let (_, a) = tokens(&app, "ada@example.com", PASSWORD).await;
    let (b_access, _) = tokens(&app, "ada@example.com", PASSWORD).await;
    let logout = app.client.post(app.url("/api/v1/auth/logout")).bearer_auth(&b_access).send().await.unwrap();
    assert_eq!(logout.status(), 204);
    let (c_access, c) = tokens(&app, "ada@example.com", PASSWORD).await;

    // Now: only the revoked family goes (once its access tokens can no longer be live).
    let now = chrono::Utc::now();
    let purged =
        app.store.purge_expired(now, now - chrono::Duration::minutes(30), now, now - chrono::Duration::days(90)).await.unwrap();
    assert_eq!((purged.refresh_tokens, purged.families), (0, 1), "{purged:?}");
    assert_eq!(me_with_bearer(&app, &c_access).await, 200, "a live family stays");
    assert_eq!(refresh_status(&app, &a).await, 200, "and its refresh token still works");

    // 31 days on, every refresh token has expired and the families go with them.
    let later = now + chrono::Duration::days(31);
    let purged = app
        .store
        .purge_expired(later, later - chrono::Duration::minutes(30), later, later - chrono::Duration::days(90))
        .await
        .unwrap();
    assert_eq!((purged.refresh_tokens, purged.families), (3, 2), "{purged:?}");
    assert_eq!(refresh_status(&app, &c).await, 401);
}

#[tokio::test]
async fn a_refresh_whose_answer_was_lost_can_be_retried_within_the_grace_window() {
    let app = spawn_app().await;
    register(&app, "ada@example.com").await;
    let (_, first) = tokens(&app, "ada@example.com", PASSWORD).await;
    let refresh = |t: String| app.client.post(app.url("/api/v1/auth/refresh")).json(&json!({"refresh_token": t})).send();
    let answer: Value = refresh(first.clone()).await.unwrap().json().await.unwrap(); // ... and the answer is lost
    let retry = refresh(first.clone()).await.unwrap();
    assert_eq!(retry.status(), 200, "a retry within the grace window is not a theft");
    let retried: Value = retry.json().await.unwrap();
    assert_eq!(retried["refresh_token"], answer["refresh_token"], "the same successor, not a second one");
    assert_eq!(me_with_bearer(&app, retried["access_token"].as_str().unwrap()).await, 200);
    assert!(app.store.list_audit(50).await.unwrap().iter().any(|e| e.action == "token.refresh_retry"));

    // Once the successor has been used, the old token presented again is a theft: the family dies.
    let second = retried["refresh_token"].as_str().unwrap().to_owned();
    let third: Value = refresh(second).await.unwrap().json().await.unwrap();
    assert_problem(refresh(first).await.unwrap(), 401).await;
    assert_eq!(refresh_status(&app, third["refresh_token"].as_str().unwrap()).await, 401, "the family was revoked");
    assert!(app.store.list_audit(50).await.unwrap().iter().any(|e| e.action == "token.refresh_reuse"));

    // Past the window a retry is a theft too.
    let app = spawn_app_with(&[("TOLLGATE_REFRESH_GRACE", "1s")]).await;
    register(&app, "ada@example.com").await;
    let (_, first) = tokens(&app, "ada@example.com", PASSWORD).await;
    let answer: Value = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .json(&json!({"refresh_token": first}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(refresh_status(&app, &first).await, 401);
    assert_eq!(refresh_status(&app, answer["refresh_token"].as_str().unwrap()).await, 401, "the family was revoked");
}

#[tokio::test]
async fn two_admins_demoting_each_other_at_once_leave_one_admin() {
    for _ in 0..5 {
        let app = spawn_app().await;
        let alice = make_admin(&app, "alice@example.com").await;
        let bob = make_admin(&app, "bob@example.com").await;
        let id_of = |email: &'static str| {
            let store = app.store.clone();
            async move { store.user_by_email(email).await.unwrap().unwrap().id }
        };
        let (alice_id, bob_id) = (id_of("alice@example.com").await, id_of("bob@example.com").await);
        let demote = |who: &Browser, target: String| {
            app.client
                .patch(app.url(&format!("/api/v1/admin/users/{target}")))
                .header("cookie", who.cookie.clone())
                .header("x-csrf-token", who.csrf.clone())
                .json(&json!({"role": "user"}))
                .send()
        };
        let (a, b) = tokio::join!(demote(&alice, bob_id), demote(&bob, alice_id));
        let statuses = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
        let admins = app
            .store
            .list_users(10, None)
            .await
            .unwrap()
            .into_iter()
            .filter(|u| u.role == tollgate::domain::account::Role::Admin)
            .count();
        assert_eq!(admins, 1, "exactly one admin is left ({statuses:?})");
        assert!(statuses.contains(&200) && (statuses.contains(&409) || statuses.contains(&403)), "{statuses:?}");
    }
}

#[tokio::test]
async fn device_cookies_and_known_addresses_of_an_old_password_stop_counting() {
    let app = spawn_app_with(&[("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32"), ("TOLLGATE_LOGIN_ACCOUNT_CEILING", "3")]).await;
    register(&app, "ada@example.com").await;
    // The password leaked: a thief logs in from their machine and keeps its device cookie.
    let thiefs = device_cookie(&login_from(&app, "198.51.100.66", "ada@example.com", PASSWORD, None).await).unwrap();
    // Ada changes it from her browser, which gets a device cookie for the new password.
    let ada = login(&app, "ada@example.com", PASSWORD).await;
    let r = change_password(&app, &ada, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(r.status(), 204);
    let adas = device_cookie(&r).expect("a device cookie for the new password");
    // Guesses from strangers reach the ceiling.
    for i in 0..3 {
        assert_eq!(login_from(&app, &format!("203.0.113.{i}"), "ada@example.com", "wrong guess here", None).await.status(), 401);
    }
    assert_eq!(
        login_from(&app, "203.0.113.50", "ada@example.com", "wrong guess here", None).await.status(),
        401,
        "the next turn"
    );
    // The thief's device and address knew the old password: strangers now, slowed like any other.
    assert_eq!(login_from(&app, "203.0.113.51", "ada@example.com", "guess", Some(&thiefs)).await.status(), 429);
    assert_eq!(login_from(&app, "198.51.100.66", "ada@example.com", "guess", None).await.status(), 429);
    // Ada's browser is known to the new password.
    assert_eq!(login_from(&app, "203.0.113.52", "ada@example.com", NEW_PASSWORD, Some(&adas)).await.status(), 200);
}

#[tokio::test]
async fn an_attempt_refused_before_the_password_is_checked_uses_up_nothing() {
    let app = spawn_app_with(&[
        ("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("TOLLGATE_PASSWORD_QUEUE", "1"),
        ("TOLLGATE_LOGIN_MAX_FAILURES", "3"),
        ("TOLLGATE_LOGIN_IP_LIMIT", "1000"),
    ])
    .await;
    register(&app, "ada@example.com").await;
    // Twenty at once from Ada's own address: most find the password queue full (503).
    let burst = (0..20).map(|_| ("192.0.2.10".to_owned(), "wrong password entirely".to_owned())).collect();
    let statuses = login_burst(&app, "ada@example.com", burst).await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(checked <= 3, "{statuses:?}");
    // Only checked passwords counted: exactly 3 - checked more wrong guesses are checked, one at a
    // time, before this client is limited.
    for _ in checked..3 {
        assert_eq!(login_from(&app, "192.0.2.10", "ada@example.com", "wrong password entirely", None).await.status(), 401);
    }
    assert_eq!(login_from(&app, "192.0.2.10", "ada@example.com", PASSWORD, None).await.status(), 429);
}

#[tokio::test]
async fn a_stolen_session_cannot_use_up_the_owners_password_changes() {
    let app = spawn_app().await;
    register(&app, "ada@example.com").await;
    let stolen = login(&app, "ada@example.com", PASSWORD).await;
    let ada = login(&app, "ada@example.com", PASSWORD).await;
    for _ in 0..10 {
        assert_eq!(change_password(&app, &stolen, "not the password", NEW_PASSWORD).await.status(), 422);
    }
    assert_eq!(change_password(&app, &stolen, "not the password", NEW_PASSWORD).await.status(), 429);
    // Ada's own session still may, and doing so ends the stolen one.
    assert_eq!(change_password(&app, &ada, PASSWORD, NEW_PASSWORD).await.status(), 204);
    assert_eq!(me_with_cookie(&app, &stolen.cookie).await, 401);
}

#[tokio::test]
async fn the_store_refuses_credentials_of_an_old_epoch_and_changes_on_a_disabled_account() {
    let app = spawn_app().await;
    let ada = register(&app, "ada@example.com").await;
    let id = ada["id"].as_str().unwrap().to_owned();
    let user = app.store.user_by_id(&id).await.unwrap().unwrap();
    let now = chrono::Utc::now();
    let session = |epoch: i64| tollgate::store::SessionRow {
        id: tollgate::domain::account::new_id("ses"),
        token_hash: tollgate::domain::crypto::token_hash(&tollgate::domain::crypto::random_token()),
        user_id: id.clone(),
        created_at: now,
        last_seen_at: now,
        expires_at: now + chrono::Duration::hours(1),
        ip: None,
        user_agent: None,
        credential_epoch: epoch,
    };
    // A login that verified the password at epoch 0 stores its session only while 0 is current.
    assert!(app.store.insert_session(&session(user.credential_epoch)).await.unwrap());
    let changed = app
        .store
        .change_password(&id, &user.password_hash, "$argon2id$new", tollgate::store::Keep::Family("fam_none"), now)
        .await
        .unwrap();
    assert!(matches!(changed, tollgate::store::PasswordChanged::Changed { sessions_ended: 1, .. }), "{changed:?}");
    assert!(!app.store.insert_session(&session(user.credential_epoch)).await.unwrap(), "the old epoch is refused");
    assert!(!app.store.insert_family("fam_late", &id, user.credential_epoch, now).await.unwrap());
    let after = app.store.user_by_id(&id).await.unwrap().unwrap();
    assert_eq!(after.credential_epoch, user.credential_epoch + 1);
    assert!(app.store.insert_session(&session(after.credential_epoch)).await.unwrap());
    // A change racing a disable loses: nothing is written for a disabled account.
    app.store.update_user_flags(None, &id, None, Some(true), now).await.unwrap();
    let stale = app
        .store
        .change_password(&id, &after.password_hash, "$argon2id$other", tollgate::store::Keep::Family("fam_none"), now)
        .await
        .unwrap();
    assert_eq!(stale, tollgate::store::PasswordChanged::Stale);
    assert_eq!(app.store.user_by_id(&id).await.unwrap().unwrap().password_hash, after.password_hash);
}

#[tokio::test]
async fn an_admin_demoted_meanwhile_changes_nothing() {
    let app = spawn_app().await;
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for email in ["a@example.com", "m@example.com", "x@example.com"] {
            make_admin(&app, email).await;
            ids.push(app.store.user_by_email(email).await.unwrap().unwrap().id);
        }
        ids
    };
    let (a, m) = (&ids[0], &ids[1]);
    let now = chrono::Utc::now();
    // A demotes M; M's request, which passed its admin check before that, then tries to disable A.
    let demoted = app.store.update_user_flags(Some(a), m, Some(tollgate::domain::account::Role::User), None, now).await.unwrap();
    assert!(matches!(demoted, tollgate::store::FlagsChanged::Updated { .. }));
    let late = app.store.update_user_flags(Some(m), a, None, Some(true), now).await.unwrap();
    assert!(matches!(late, tollgate::store::FlagsChanged::NotAdmin), "{late:?}");
    assert!(!app.store.user_by_id(a).await.unwrap().unwrap().disabled);
}

#[tokio::test]
async fn the_purge_never_cuts_a_refresh_short_between_spending_and_storing() {
    let app = spawn_app().await;
    register(&app, "ada@example.com").await;
    let (_, refresh) = tokens(&app, "ada@example.com", PASSWORD).await;
    // The family was created before the purge's cutoff; a refresh has spent its token after the
    // cutoff and not stored the next one yet when the purge runs.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let hash = tollgate::domain::crypto::token_hash(&refresh);
    let spent = app.store.spend_refresh(&hash, chrono::Utc::now()).await.unwrap();
    let tollgate::store::SpendOutcome::Fresh { family_id, user_id, .. } = spent else { panic!("{spent:?}") };
    let now = chrono::Utc::now();
    let purged = app
        .store
        .purge_expired(now, now - chrono::Duration::minutes(30), cutoff, now - chrono::Duration::days(90))
        .await
        .unwrap();
    assert_eq!(purged.families, 0, "{purged:?}");
    let later = chrono::Utc::now() + chrono::Duration::days(1);
    app.store.insert_refresh("next", &family_id, &user_id, chrono::Utc::now(), later).await.unwrap();
    assert!(app.store.family(&family_id).await.unwrap().is_some());
}

#[tokio::test]
async fn a_full_password_queue_still_lets_the_owners_browser_in() {
    let app = spawn_app_with(&[
        ("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("TOLLGATE_PASSWORD_QUEUE", "1"),
        ("TOLLGATE_LOGIN_IP_LIMIT", "1000"),
    ])
    .await;
    register(&app, "ada@example.com").await;
    let laptop = device_cookie(&login_from(&app, "192.0.2.10", "ada@example.com", PASSWORD, None).await).unwrap();
    // Strangers keep the queue full while Ada logs in from her laptop, five times.
    let flood = {
        let strangers = (0..60).map(|i| (format!("198.51.100.{i}"), "wrong password entirely".to_owned())).collect();
        login_burst(&app, "nobody@example.com", strangers)
    };
    let ada = async {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(login_from(&app, "203.0.113.9", "ada@example.com", PASSWORD, Some(&laptop)).await.status().as_u16());
        }
        statuses
    };
    let (strangers, ada) = tokio::join!(flood, ada);
    assert!(strangers.contains(&503), "the queue was full: {strangers:?}");
    assert_eq!(ada, [200; 5], "the account's own device is never refused by a full queue");
}

#[tokio::test]
async fn a_login_racing_a_password_change_leaves_its_address_unknown() {
    let app = spawn_app().await;
    let ada = register(&app, "ada@example.com").await;
    let id = ada["id"].as_str().unwrap().to_owned();
    let before = app.store.user_by_id(&id).await.unwrap().unwrap();
    let now = chrono::Utc::now();
    // The password changed after this login verified the old one, before it remembered its address.
    let changed = app
        .store
        .change_password(&id, &before.password_hash, "$argon2id$new", tollgate::store::Keep::Family("fam_none"), now)
        .await
        .unwrap();
    assert!(matches!(changed, tollgate::store::PasswordChanged::Changed { .. }));
    app.store.remember_client(&id, "198.51.100.66", before.credential_epoch, now).await.unwrap();
    let long_ago = now - chrono::Duration::days(1);
    assert!(!app.store.known_client(&id, "198.51.100.66", long_ago).await.unwrap(), "not known to the new password");
    app.store.remember_client(&id, "203.0.113.1", before.credential_epoch + 1, now).await.unwrap();
    assert!(app.store.known_client(&id, "203.0.113.1", long_ago).await.unwrap());
}
