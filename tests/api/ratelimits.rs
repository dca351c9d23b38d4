//! Rate limits on Redis (issue 12): the Redis limiter decides as the in-memory one does, a budget
//! is shared by every instance on one Redis, and a Redis outage falls back to each instance's
//! memory (never fail-open) and recovers by itself.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tollgate::ratelimit::{Decision, MemoryRateLimiter, Quota, RateLimiter, RedisRateLimiter, SharedRateLimiter};

use crate::helpers::accounts::PASSWORD;
use crate::helpers::{assert_problem, in_ci, skip, spawn_app_with, TestApp};

/// The shared Redis, or `None` (skipped; CI sets it).
fn redis_url(test: &str) -> Option<String> {
    let url = std::env::var("TEST_REDIS_URL").ok().filter(|u| !u.is_empty());
    if url.is_none() {
        assert!(!in_ci(), "TEST_REDIS_URL must be set in CI");
        skip(test, "TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379)");
    }
    url
}

/// A key prefix no other test (or earlier run) uses.
fn namespace() -> String {
    format!("tollgate-test:{}:", uuid::Uuid::new_v4())
}

/// A comparable form of a decision: durations in whole seconds rounded up, as `Retry-After`
/// and `RateLimit-Reset` say them (Redis counts microseconds, memory nanoseconds).
fn seen(d: Decision) -> (bool, u32, u64) {
    let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    match d {
        Decision::Allowed { limit, reset, remaining } => (true, limit * 1000 + remaining, secs(reset)),
        Decision::Limited { limit, retry_after } => (false, limit * 1000, secs(retry_after)),
    }
}

async fn run_sequence(l: &dyn RateLimiter) -> Vec<(bool, u32, u64)> {
    let q = Quota { limit: 3, period: Duration::from_secs(30) };
    let w = Quota { limit: 2, period: Duration::from_secs(60) };
    let mut out = vec![seen(l.peek("g", q).await)];
    for _ in 0..4 {
        out.push(seen(l.hit("g", q).await));
    }
    out.push(seen(l.peek("g", q).await));
    l.refund("g", q).await;
    out.push(seen(l.hit("g", q).await));
    out.push(seen(l.hit("g", q).await));
    out.push(seen(l.hit("other", q).await));
    for _ in 0..3 {
        out.push(seen(l.hit_window("w", w).await));
    }
    l.refund_window("w").await;
    out.push(seen(l.hit_window("w", w).await));
    out.push(seen(l.hit_window("w", w).await));
    out
}

#[tokio::test]
async fn redis_and_memory_decide_alike_on_one_sequence() {
    let Some(url) = redis_url("redis_and_memory_decide_alike_on_one_sequence") else { return };
    let redis = RedisRateLimiter::new(&url, &namespace()).unwrap();
    let on_redis = SharedRateLimiter::new(redis);
    let in_memory = run_sequence(&MemoryRateLimiter::new()).await;
    assert_eq!(run_sequence(&on_redis).await, in_memory);
    assert!(!on_redis.is_degraded(), "every decision was Redis's");
    // The sequence exercised burst, refusal, refund and the window.
    assert_eq!(in_memory[0], (true, 3002, 10));
    assert_eq!(in_memory[4], (false, 3000, 10), "the fourth of a burst of three waits one interval");
}

#[tokio::test]
async fn gcra_on_redis_bursts_refuses_with_the_exact_wait_and_refills() {
    let Some(url) = redis_url("gcra_on_redis_bursts_refuses_with_the_exact_wait_and_refills") else { return };
    let l = RedisRateLimiter::new(&url, &namespace()).unwrap();
    let q = Quota { limit: 3, period: Duration::from_millis(600) };
    for remaining in [2, 1, 0] {
        let Decision::Allowed { remaining: r, .. } = l.hit("k", q).await.unwrap() else { panic!("the burst is allowed") };
        assert_eq!(r, remaining);
    }
    let Decision::Limited { retry_after, limit } = l.hit("k", q).await.unwrap() else { panic!("the fourth is refused") };
    assert_eq!(limit, 3);
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(200), "at most one interval: {retry_after:?}");
    assert!(!l.peek("k", q).await.unwrap().is_allowed(), "a refused hit counted nothing, still refused");
    tokio::time::sleep(retry_after + Duration::from_millis(5)).await;
    assert!(l.hit("k", q).await.unwrap().is_allowed(), "one more once the wait is over");
    assert!(!l.hit("k", q).await.unwrap().is_allowed(), "and only one");
}

#[tokio::test]
async fn redis_keys_are_namespaced_and_expire_by_themselves() {
    let Some(url) = redis_url("redis_keys_are_namespaced_and_expire_by_themselves") else { return };
    let ns = namespace();
    let l = RedisRateLimiter::new(&url, &ns).unwrap();
    l.hit("k", Quota { limit: 10, period: Duration::from_secs(100) }).await.unwrap();
    l.hit_window("w", Quota { limit: 10, period: Duration::from_secs(100) }).await.unwrap();
    let port = url::Url::parse(&url).unwrap().port().unwrap_or(6379).to_string();
    let pttl = |key: String| {
        let out = Command::new("redis-cli").args(["-p", &port, "PTTL", &key]).output().expect("redis-cli runs");
        String::from_utf8(out.stdout).unwrap().trim().parse::<i64>().unwrap()
    };
    // GCRA: until the bucket has refilled (one interval of 10 s); window: one period.
    let gcra = pttl(format!("{ns}rl:k"));
    assert!(gcra > 0 && gcra <= 10_001, "{gcra}");
    let window = pttl(format!("{ns}rl:w"));
    assert!(window > 10_001 && window <= 100_001, "{window}");
}

async fn login(app: &TestApp, email: &str) -> reqwest::Response {
    app.client.post(app.url("/api/v1/auth/login")).json(&json!({"email": email, "password": PASSWORD})).send().await.unwrap()
}

#[tokio::test]
async fn the_login_limit_on_redis_answers_429_with_the_exact_retry_after() {
    let Some(url) = redis_url("the_login_limit_on_redis_answers_429_with_the_exact_retry_after") else { return };
    let ns = namespace();
    let app = spawn_app_with(&[("REDIS_URL", &url), ("TOLLGATE_REDIS_KEY_PREFIX", &ns), ("TOLLGATE_LOGIN_IP_LIMIT", "3")]).await;
    for i in 0..3 {
        assert_eq!(login(&app, &format!("u{i}@example.com")).await.status(), 401);
    }
    let r = login(&app, "u9@example.com").await;
    // Three a minute: the fourth waits one interval, 20 s.
    assert_eq!(r.headers()["retry-after"], "20");
    assert_eq!(r.headers()["ratelimit-limit"], "3");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    assert_eq!(r.headers()["ratelimit-reset"], "20");
    assert_problem(r, 429).await;
}

#[tokio::test]
async fn two_instances_on_one_redis_share_a_budget() {
    let Some(url) = redis_url("two_instances_on_one_redis_share_a_budget") else { return };
    let ns = namespace();
    let env = [("REDIS_URL", url.as_str()), ("TOLLGATE_REDIS_KEY_PREFIX", ns.as_str()), ("TOLLGATE_LOGIN_IP_LIMIT", "4")];
    let (a, b) = (spawn_app_with(&env).await, spawn_app_with(&env).await);
    for (i, app) in [&a, &b, &a, &b].into_iter().enumerate() {
        assert_eq!(login(app, &format!("u{i}@example.com")).await.status(), 401, "attempt {}", i + 1);
    }
    assert_problem(login(&a, "u8@example.com").await, 429).await;
    assert_problem(login(&b, "u9@example.com").await, 429).await;
}

#[tokio::test]
async fn a_dead_redis_still_limits_in_memory() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let l = SharedRateLimiter::new(RedisRateLimiter::new(&format!("redis://127.0.0.1:{port}"), "t:").unwrap());
    let q = Quota { limit: 2, period: Duration::from_secs(60) };
    assert!(l.hit("k", q).await.is_allowed());
    assert!(l.is_degraded());
    assert!(l.hit("k", q).await.is_allowed());
    assert!(!l.hit("k", q).await.is_allowed(), "fail-safe: the limit holds without Redis");
    let w = Quota { limit: 1, period: Duration::from_secs(60) };
    assert!(l.hit_window("w", w).await.is_allowed());
    assert!(!l.hit_window("w", w).await.is_allowed());
}

/// A redis-server of the test's own on a free port, killed when dropped.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start(port: u16) -> Option<OwnRedis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(OwnRedis { port, child })
    }

    async fn wait_up(&self) {
        for _ in 0..200 {
            if tollgate::redis::ping(&format!("redis://127.0.0.1:{}", self.port), Duration::from_secs(1)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not come up");
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_redis_outage_keeps_serving_with_local_limits_and_recovers_without_restart() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let Some(redis) = OwnRedis::start(port) else {
        assert!(!in_ci(), "redis-server must be installed in CI");
        skip("a_redis_outage_keeps_serving_with_local_limits_and_recovers_without_restart", "no redis-server");
        return;
    };
    redis.wait_up().await;
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app_with(&[("REDIS_URL", &url), ("TOLLGATE_LOGIN_IP_LIMIT", "2")]).await;
    assert_eq!(login(&app, "a@example.com").await.status(), 401);
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["checks"]["redis"], "ok");

    redis.stop();
    // Served, and limited by this instance's memory: two attempts, then 429 (the one counted on
    // Redis before the outage is not known here).
    assert_eq!(login(&app, "b@example.com").await.status(), 401);
    assert_eq!(login(&app, "c@example.com").await.status(), 401);
    let r = login(&app, "d@example.com").await;
    assert_eq!(r.headers()["ratelimit-limit"], "2");
    assert_problem(r, 429).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 200, "a Redis outage does not take the instance out");
    let ready: serde_json::Value = r.json().await.unwrap();
    assert_eq!(ready["checks"]["redis"], "degraded", "{ready}");
    assert_eq!(ready["checks"]["database"], "ok", "{ready}");

    // Redis comes back (empty): without a restart the limiter goes back to it, where this client
    // has attempts left, while memory would still refuse for half a minute.
    let redis = OwnRedis::start(port).expect("redis-server restarts");
    redis.wait_up().await;
    let mut status = 429;
    for _ in 0..100 {
        status = login(&app, "e@example.com").await.status().as_u16();
        if status != 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 401, "the Redis limiter resumed by itself");
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["checks"]["redis"], "ok");
    redis.stop();
}

/// An app with the default global budget (50 an hour, 200 a day), on Redis when there is one.
async fn default_budget_app(extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![("TOLLGATE_API_HOURLY_LIMIT", ""), ("TOLLGATE_API_DAILY_LIMIT", "")];
    env.extend_from_slice(extra);
    spawn_app_with(&env).await
}

async fn the_default_budget_is_50_an_hour(app: &TestApp) {
    for i in 0..50u32 {
        let r = app.get("/api/v1/products").await;
        assert_eq!(r.status(), 200, "request {}", i + 1);
        // The hourly budget is the tighter one: its figures are the ones shown.
        assert_eq!(r.headers()["ratelimit-limit"], "50");
        assert_eq!(r.headers()["ratelimit-remaining"], (49 - i).to_string().as_str());
        assert!(r.headers()["ratelimit-reset"].to_str().unwrap().parse::<u64>().unwrap() <= 3600);
    }
    let r = app.get("/api/v1/products").await;
    // 50 an hour: the 51st waits one interval, 3600 / 50 = 72 s.
    assert_eq!(r.headers()["retry-after"], "72");
    assert_eq!(r.headers()["ratelimit-limit"], "50");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    assert_problem(r, 429).await;
    // Health, readiness, the OpenAPI document and the docs are never limited.
    for path in ["/healthz", "/readyz", "/openapi.json", "/docs", "/.well-known/jwks.json"] {
        for _ in 0..3 {
            let r = app.get(path).await;
            assert_eq!(r.status(), 200, "{path}");
            assert!(r.headers().get("ratelimit-limit").is_none(), "{path} carries no budget");
        }
    }
}

#[tokio::test]
async fn the_default_global_budget_answers_the_51st_request_of_an_hour_with_429() {
    let app = default_budget_app(&[]).await;
    the_default_budget_is_50_an_hour(&app).await;
}

#[tokio::test]
async fn the_default_global_budget_holds_on_redis() {
    let Some(url) = redis_url("the_default_global_budget_holds_on_redis") else { return };
    let ns = namespace();
    let app = default_budget_app(&[("REDIS_URL", &url), ("TOLLGATE_REDIS_KEY_PREFIX", &ns)]).await;
    the_default_budget_is_50_an_hour(&app).await;
}

#[tokio::test]
async fn an_authenticated_user_has_a_budget_of_their_own() {
    use crate::helpers::accounts::{login as browser_login, register, tokens};
    let app = spawn_app_with(&[("TOLLGATE_API_HOURLY_LIMIT", "3")]).await;
    register(&app, "ada@example.com").await;
    let (access, _) = tokens(&app, "ada@example.com", PASSWORD).await;
    // The address spends its budget...
    for _ in 0..3 {
        assert_eq!(app.get("/api/v1/products").await.status(), 200);
    }
    assert_problem(app.get("/api/v1/products").await, 429).await;
    // ...and the user, from the same address, still has theirs, by token or session alike.
    let me = |auth: Option<&str>, cookie: Option<&str>| {
        let mut req = app.client.get(app.url("/api/v1/me"));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    let r = me(Some(&access), None).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-remaining"], "2");
    let browser = browser_login(&app, "ada@example.com", PASSWORD).await;
    let r = me(None, Some(&browser.cookie)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-remaining"], "1", "one budget per user, whichever credential");
    // A made-up token or cookie buys nothing: the address's budget, spent.
    assert_problem(me(Some("not-a-token"), None).await.unwrap(), 429).await;
    assert_problem(me(None, Some("__Host-tollgate_session=forged; tollgate_session=forged")).await.unwrap(), 429).await;
    // Nor does something that only looks like an API key, away from the key routes.
    let fake = app.client.get(app.url("/api/v1/products")).bearer_auth("tg_live_madeup").send().await.unwrap();
    assert_problem(fake, 429).await;
    // Ending access is never refused for want of budget: the user spent theirs, and logs out.
    for _ in 0..5 {
        me(Some(&access), None).await.unwrap();
    }
    assert_problem(me(Some(&access), None).await.unwrap(), 429).await;
    let out = app.client.post(app.url("/api/v1/auth/logout")).bearer_auth(&access).send().await.unwrap();
    assert_eq!(out.status(), 204, "logout is never budgeted");
    assert_eq!(app.get("/api/v1/licences/revoked").await.status(), 200, "nor is the revocation list");
}

#[tokio::test]
async fn guessing_api_keys_is_limited_per_address() {
    let app = spawn_app_with(&[("TOLLGATE_API_KEY_LIMIT", "3")]).await;
    let guess = |i: usize| {
        let key = format!("tg_test_{}", "A".repeat(40) + &i.to_string());
        app.client.get(app.url("/api/v1/users?email=a@example.com")).bearer_auth(key).send()
    };
    for i in 0..3 {
        assert_problem(guess(i).await.unwrap(), 401).await;
    }
    let r = guess(3).await.unwrap();
    assert!(r.headers().contains_key("retry-after"));
    assert_problem(r, 429).await;
}

#[tokio::test]
async fn webhooks_limit_failed_verifications_only_and_never_refuse_a_verified_delivery() {
    use crate::helpers::stripe::{deliver, event, WHSEC};
    use tollgate::stripe::webhook::sign;
    let app = spawn_app_with(&[("STRIPE_WEBHOOK_SECRET", WHSEC), ("TOLLGATE_WEBHOOK_LIMIT", "3")]).await;
    let now = chrono::Utc::now().timestamp();
    let (_, body) = event("plan.created", "plan").build();
    let forged = sign(&body, "whsec_not_the_secret", now);
    for _ in 0..3 {
        assert_problem(deliver(&app, &body, &forged).await, 400).await;
    }
    let r = deliver(&app, &body, &forged).await;
    // Three a minute: the fourth failure waits one interval, 20 s.
    assert_eq!(r.headers()["retry-after"], "20");
    assert_eq!(r.headers()["ratelimit-limit"], "3");
    assert_problem(r, 429).await;
    // A retry storm of verified deliveries from the same address: every one is taken.
    for _ in 0..10 {
        let (_, body) = event("plan.created", "plan").build();
        let r = deliver(&app, &body, &sign(&body, WHSEC, now)).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("ratelimit-limit").is_none(), "not counted");
    }
}

#[tokio::test]
async fn an_outage_is_reported_once_and_its_end_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let Some(redis) = OwnRedis::start(port) else {
        assert!(!in_ci(), "redis-server must be installed in CI");
        skip("an_outage_is_reported_once_and_its_end_once", "no redis-server");
        return;
    };
    redis.wait_up().await;
    // A password this server (which has none) refuses: Redis unusable, the limits kept in memory.
    let url = format!("redis://:no-password-needed@127.0.0.1:{port}");
    let l = SharedRateLimiter::new(RedisRateLimiter::new(&url, &namespace()).unwrap());
    let q = Quota { limit: 100, period: Duration::from_secs(60) };
    assert!(l.hit("k", q).await.is_allowed());
    assert!(l.is_degraded(), "AUTH refused is an outage too");
    assert_eq!(l.outages(), (1, 0));
    drop(l);
    // The outage warning and the resumed line are logged exactly where these counts move.
    let l = SharedRateLimiter::new(RedisRateLimiter::new(&format!("redis://127.0.0.1:{port}"), &namespace()).unwrap());
    assert!(l.hit("k", q).await.is_allowed());
    assert!(!l.is_degraded());

    redis.stop();
    for _ in 0..5 {
        assert!(l.hit("k", q).await.is_allowed());
    }
    // Tried again after the pause, still down: no second warning.
    tokio::time::sleep(tollgate::ratelimit::RETRY_AFTER + Duration::from_millis(100)).await;
    assert!(l.hit("k", q).await.is_allowed());
    assert!(l.is_degraded());
    assert_eq!(l.outages(), (1, 0), "one warning per outage");

    let redis = OwnRedis::start(port).expect("redis-server restarts");
    redis.wait_up().await;
    tokio::time::sleep(tollgate::ratelimit::RETRY_AFTER + Duration::from_millis(100)).await;
    for _ in 0..3 {
        assert!(l.hit("k", q).await.is_allowed());
    }
    assert!(!l.is_degraded(), "back on Redis without a restart");
    assert_eq!(l.outages(), (1, 1), "and its end said once");
    redis.stop();
}

#[tokio::test]
async fn allowed_answers_on_limited_routes_carry_ratelimit_headers() {
    use crate::helpers::keys::api_key;
    use crate::helpers::shop::shop;
    let s = shop(&[("TOLLGATE_API_KEY_LIMIT", "5"), ("TOLLGATE_CHECKOUT_LIMIT", "4")]).await;
    // An API key's own budget (the global one does not apply to keys).
    let key = api_key(&s.app, &s.admin, &["entitlements:read"]).await;
    for remaining in ["4", "3"] {
        let r = s.get(&key, &format!("/api/v1/users/{}/entitlements", s.user_id)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-limit"], "5");
        assert_eq!(r.headers()["ratelimit-remaining"], remaining);
        // Five a minute: the next one is a full minute from now at most.
        assert!(r.headers()["ratelimit-reset"].to_str().unwrap().parse::<u64>().unwrap() <= 60);
    }
    // Checkout's per-user limit, tighter than the user's global budget (opened wide in tests).
    let product = s.product(json!({"name": "Pro", "amount": 900, "currency": "usd", "grant": {"kind": "access", "feature": "pro", "duration_days": 30}})).await;
    let r = s.post(&s.user, "/api/v1/checkout/sessions", json!({"product_id": product})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["ratelimit-limit"], "4");
    assert_eq!(r.headers()["ratelimit-remaining"], "3");
    // Login answers carry none: they must look alike whether or not the account exists.
    let r = login(&s.app, "nobody@example.com").await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("ratelimit-limit").is_none());
}

/// `redis-cli` against the test server, for what the tests set up around it (ACL users).
fn redis_cli(url: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-u").arg(url).args(args).output().expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn readyz_is_degraded_when_redis_answers_but_refuses_the_limiter() {
    let test = "readyz_is_degraded_when_redis_answers_but_refuses_the_limiter";
    let Some(url) = redis_url(test) else { return };
    // A Redis user that may PING but not run scripts: Redis answers, the limiter cannot use it.
    let user = format!("tg_noscript_{}", uuid::Uuid::new_v4().simple());
    assert_eq!(redis_cli(&url, &["ACL", "SETUSER", &user, "on", ">noscript-pass", "~*", "+@all", "-@scripting"]), "OK");
    let mut limited = url::Url::parse(&url).unwrap();
    limited.set_username(&user).unwrap();
    limited.set_password(Some("noscript-pass")).unwrap();
    let app = spawn_app_with(&[("REDIS_URL", limited.as_str())]).await;
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["checks"]["redis"], "ok", "PING works for this user: {ready}");
    // A limited request: the script is refused, the check is made in memory, and served.
    assert_eq!(app.get("/api/v1/products").await.status(), 200);
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 200);
    let ready: serde_json::Value = r.json().await.unwrap();
    assert_eq!(ready["checks"]["redis"], "degraded", "{ready}");
    redis_cli(&url, &["ACL", "DELUSER", &user]);
}

#[tokio::test]
async fn a_flood_of_checks_holds_a_bounded_number_of_redis_connections_and_is_no_outage() {
    let Some(url) = redis_url("a_flood_of_checks_holds_a_bounded_number_of_redis_connections_and_is_no_outage") else {
        return;
    };
    let l = std::sync::Arc::new(SharedRateLimiter::new(RedisRateLimiter::new(&url, &namespace()).unwrap()));
    let q = Quota { limit: 100, period: Duration::from_secs(600) };
    let checks: Vec<_> = (0..400)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move { l.hit("flood", q).await.is_allowed() })
        })
        .collect();
    let mut allowed = 0;
    for c in checks {
        allowed += usize::from(c.await.unwrap());
    }
    let (busy, opened) = l.busy_checks();
    assert!(opened <= tollgate::ratelimit::MAX_REDIS_CONNECTIONS as u64, "{opened} connections opened");
    assert!(!l.is_degraded(), "a flood in this process is not a Redis outage");
    assert_eq!(l.outages(), (0, 0));
    // Redis let exactly 100 through; a check decided in memory (all connections busy) may add one.
    assert!(allowed >= 100 && allowed as u64 <= 100 + busy, "{allowed} allowed, {busy} decided in memory");
}

/// A CA, and a certificate for localhost and 127.0.0.1 signed by it, made with the openssl CLI in
/// `dir` (ca.pem, server.pem, server.key); `false` when openssl is not installed.
fn private_ca(dir: &std::path::Path) -> bool {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=tollgate test CA", "-days", "2"]]
        .concat())
        && run(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat())
        && run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ])
}

#[tokio::test]
async fn rediss_with_a_private_ca_shares_limits_and_an_untrusted_certificate_is_refused() {
    let test = "rediss_with_a_private_ca_shares_limits_and_an_untrusted_certificate_is_refused";
    let dir = tempfile::tempdir().unwrap();
    if !private_ca(dir.path()) {
        assert!(!in_ci(), "openssl must be installed in CI");
        return skip(test, "no openssl CLI to make a CA");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let Ok(child) = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--tls-cert-file", &path("server.pem"), "--tls-key-file", &path("server.key")])
        .args(["--tls-ca-cert-file", &path("ca.pem"), "--tls-auth-clients", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        assert!(!in_ci(), "redis-server must be installed in CI");
        return skip(test, "no redis-server");
    };
    let redis = OwnRedis { port, child };
    let url = format!("rediss://127.0.0.1:{port}");
    let ca = dir.path().join("ca.pem");
    let mut up = false;
    for _ in 0..200 {
        if tollgate::redis::ping_with_ca(&url, Some(&ca), Duration::from_secs(1)).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "redis-server with TLS did not come up (built without TLS?)");

    // Trusting the private CA: the checks are made on Redis, over TLS.
    let ns = namespace();
    let q = Quota { limit: 2, period: Duration::from_secs(60) };
    let one = SharedRateLimiter::new(RedisRateLimiter::with_ca(&url, &ns, Some(&ca)).unwrap());
    let two = SharedRateLimiter::new(RedisRateLimiter::with_ca(&url, &ns, Some(&ca)).unwrap());
    assert!(one.hit("k", q).await.is_allowed());
    assert!(two.hit("k", q).await.is_allowed());
    assert!(!one.hit("k", q).await.is_allowed(), "the second instance's hit counted: one budget on Redis");
    assert!(!one.is_degraded() && !two.is_degraded());
    assert_eq!((one.outages(), two.outages()), ((0, 0), (0, 0)));

    // The same server with only the public web roots: its certificate is refused, nothing is sent
    // to it, and the limits are kept in memory (fail-safe), never skipped.
    let untrusting = SharedRateLimiter::new(RedisRateLimiter::new(&url, &ns).unwrap());
    assert!(untrusting.hit("k", q).await.is_allowed(), "memory has its own budget");
    assert!(untrusting.is_degraded(), "an untrusted certificate is an outage, not a connection");
    assert_eq!(tollgate::redis::ping(&url, Duration::from_secs(2)).await, Err(tollgate::redis::PingError::Tls));

    // The server: TOLLGATE_REDIS_CA_FILE makes /readyz's check and the limiter trust the CA.
    let app = spawn_app_with(&[("REDIS_URL", &url), ("TOLLGATE_REDIS_CA_FILE", &ca.to_string_lossy())]).await;
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["checks"]["redis"], "ok", "{ready}");
    redis.stop();
}

#[test]
fn a_redis_ca_file_is_checked_with_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let errors = |vars: &[(&str, &str)]| {
        let sources = tollgate::config::Sources {
            env: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        tollgate::config::Config::parse_all(&sources).1.into_iter().filter(|e| e.contains("REDIS_CA_FILE")).collect::<Vec<_>>()
    };
    let ca = not_pem.to_string_lossy();
    assert_eq!(errors(&[("REDIS_URL", "rediss://cache.internal:6380"), ("TOLLGATE_REDIS_CA_FILE", &ca)]).len(), 1, "not PEM");
    let missing = dir.path().join("missing.pem");
    assert_eq!(
        errors(&[("REDIS_URL", "rediss://cache.internal:6380"), ("TOLLGATE_REDIS_CA_FILE", &missing.to_string_lossy())]).len(),
        1,
        "missing file"
    );
    let plain = errors(&[("REDIS_URL", "redis://cache.internal:6379"), ("TOLLGATE_REDIS_CA_FILE", &ca)]);
    assert!(plain.iter().any(|e| e.contains("rediss://")), "{plain:?}");
}
