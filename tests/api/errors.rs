use crate::helpers::{assert_problem, spawn_app, spawn_app_with};

const TWO_MIB: usize = 2 * 1024 * 1024;

#[tokio::test]
async fn unknown_paths_are_404_problems() {
    let app = spawn_app().await;
    let body = assert_problem(app.get("/api/v1/does-not-exist").await, 404).await;
    assert_eq!(body["title"], "Not found");
}

#[tokio::test]
async fn wrong_methods_are_405_problems_with_allow() {
    let app = spawn_app().await;
    let r = app.client.post(app.url("/healthz")).send().await.unwrap();
    let allow = r.headers().get("allow").expect("Allow header").to_str().unwrap().to_owned();
    assert!(allow.contains("GET"), "{allow}");
    assert_problem(r, 405).await;
}

#[tokio::test]
async fn head_is_answered_like_get_without_a_body() {
    let app = spawn_app().await;
    let r = app.client.head(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-request-id").is_some());
    assert_eq!(r.headers().get("x-frame-options").unwrap(), "DENY");
    let r = app.client.head(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_2_mib_body_is_413_and_nothing_is_stored() {
    let app = spawn_app().await;
    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(TWO_MIB));
    let r = app
        .client
        .post(app.url("/__test/echo"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_problem(r, 413).await;

    // Without Content-Length (chunked), the limit is enforced while reading.
    let stream = futures_util::stream::iter(
        big.into_bytes().chunks(64 * 1024).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>(),
    );
    let r = app
        .client
        .post(app.url("/__test/echo"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_problem(r, 413).await;

    // Even a route that takes no body refuses to read one that large.
    let r = app.client.get(app.url("/healthz")).body(vec![b'x'; TWO_MIB]).send().await.unwrap();
    assert_problem(r, 413).await;

    assert_eq!(app.echo_calls(), 0, "the handler never ran");
    assert_eq!(app.audit_count().await, 0, "nothing was stored");
}

#[tokio::test]
async fn the_body_limit_is_configurable() {
    let app = spawn_app_with(&[("TOLLGATE_BODY_LIMIT", "64")]).await;
    let ok = serde_json::json!({"name": "small"});
    let r = app.client.post(app.url("/__test/echo")).json(&ok).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = app.client.post(app.url("/__test/echo")).json(&serde_json::json!({"name": "x".repeat(100)})).send().await.unwrap();
    assert_problem(r, 413).await;
    assert_eq!(app.audit_count().await, 1);
}

#[tokio::test]
async fn a_wrong_content_type_is_415_and_nothing_is_stored() {
    let app = spawn_app().await;
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut req = app.client.post(app.url("/__test/echo")).body(r#"{"name":"ok"}"#);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let body = assert_problem(req.send().await.unwrap(), 415).await;
        assert!(body["detail"].as_str().unwrap().contains("application/json"));
    }
    assert_eq!(app.audit_count().await, 0);
}

#[tokio::test]
async fn malformed_json_is_400_and_nothing_is_stored() {
    let app = spawn_app().await;
    for bad in [r#"{"name": "#, "not json", r#"{"name":"a"} {"name":"b"}"#, ""] {
        let r =
            app.client.post(app.url("/__test/echo")).header("content-type", "application/json").body(bad).send().await.unwrap();
        let body = assert_problem(r, 400).await;
        assert!(body["detail"].is_string(), "{bad:?}: {body}");
    }
    assert_eq!(app.echo_calls(), 0);
    assert_eq!(app.audit_count().await, 0);
}

#[tokio::test]
async fn failed_validation_is_422_with_field_errors_and_nothing_is_stored() {
    let app = spawn_app().await;
    let cases = [
        (serde_json::json!({}), "name", "is required"),
        (serde_json::json!({"name": 5}), "name", "invalid type"),
        (serde_json::json!({"name": "ok", "surprise": true}), "surprise", "unknown field `surprise`"),
        (serde_json::json!({"name": ""}), "name", "1 to 20 characters"),
    ];
    for (input, field, message) in cases {
        let r = app.client.post(app.url("/__test/echo")).json(&input).send().await.unwrap();
        let body = assert_problem(r, 422).await;
        let errors = body["errors"].as_array().expect("errors");
        assert!(
            errors.iter().any(|e| e["field"] == field && e["message"].as_str().unwrap().contains(message)),
            "{input}: {body}"
        );
    }
    // Every invalid field is reported, not only the first.
    let r = app
        .client
        .post(app.url("/__test/echo"))
        .json(&serde_json::json!({"name": "", "note": "n".repeat(60)}))
        .send()
        .await
        .unwrap();
    let body = assert_problem(r, 422).await;
    assert_eq!(body["errors"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(app.audit_count().await, 0);

    let r = app.client.post(app.url("/__test/echo")).json(&serde_json::json!({"name": "valid"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let stored = app.store.list_audit(10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].detail["name"], "valid");
}

#[tokio::test]
async fn a_handler_panic_is_a_generic_500_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/__test/panic")).header("x-request-id", "panic-req-1").send().await.unwrap();
    let body = assert_problem(r, 500).await;
    assert_eq!(body["request_id"], "panic-req-1");
    let text = body.to_string();
    assert!(!text.contains("probe panic") && !text.contains(".rs"), "nothing internal leaks: {text}");
    assert_eq!(body.as_object().unwrap().keys().len(), 5, "type, title, status, detail, request_id only: {text}");

    for _ in 0..3 {
        assert_eq!(app.get("/healthz").await.status(), 200, "the process keeps serving");
    }
}

#[tokio::test]
async fn a_slow_request_times_out_with_a_408_problem() {
    let app = spawn_app_with(&[("TOLLGATE_REQUEST_TIMEOUT", "300ms")]).await;
    let body = assert_problem(app.get("/__test/slow?ms=5000").await, 408).await;
    assert!(body["detail"].as_str().unwrap().contains("longer"));
    assert_eq!(app.get("/__test/slow?ms=10").await.status(), 200);
}
