use crate::helpers::{assert_problem, in_ci, spawn_app, spawn_app_with};

#[tokio::test]
async fn healthz_answers_ok() {
    let app = spawn_app().await;
    let r = app.get("/healthz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_checks_the_database() {
    let app = spawn_app().await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"], "ok");
    assert!(body["checks"].get("redis").is_none(), "redis is not configured");
}

#[tokio::test]
async fn readyz_is_503_naming_the_database_when_migrations_are_pending() {
    let app = spawn_app_with(&[("TOLLGATE_MIGRATE_ON_START", "false")]).await;
    let body = assert_problem(app.get("/readyz").await, 503).await;
    assert!(body["checks"]["database"].as_str().unwrap().contains("migration(s) pending"), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("database"), "{body}");

    app.store.migrate().await.unwrap();
    assert_eq!(app.get("/readyz").await.status(), 200, "ready once migrated");
}

#[tokio::test]
async fn readyz_is_503_naming_the_database_when_it_is_gone() {
    let app = spawn_app().await;
    app.store.close().await;
    let body = assert_problem(app.get("/readyz").await, 503).await;
    assert_eq!(body["checks"]["database"], "unavailable", "{body}");
    let text = body.to_string();
    assert!(!text.contains("sqlite") && !text.contains("postgres"), "no internals: {text}");
    assert_eq!(app.get("/healthz").await.status(), 200, "liveness does not depend on the database");
}

#[tokio::test]
async fn readyz_is_200_with_redis_degraded_when_configured_and_unreachable() {
    // A port that was just free: nothing listens there. The rate limits fall back to memory and
    // requests are served, so the instance stays in the load balancer; the check says degraded.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app_with(&[("REDIS_URL", &url)]).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["checks"]["redis"], "degraded", "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
}

#[tokio::test]
async fn readyz_checks_a_reachable_redis() {
    let Some(url) = std::env::var("TEST_REDIS_URL").ok().filter(|u| !u.is_empty()) else {
        assert!(!in_ci(), "TEST_REDIS_URL must be set in CI");
        crate::helpers::skip("readyz_checks_a_reachable_redis", "TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379)");
        return;
    };
    let app = spawn_app_with(&[("REDIS_URL", &url)]).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["redis"], "ok");
}
