//! `GET /api/v1/admin/email-messages[/{id}]`: where an admin sees failed mail (issue 11). A
//! `new_sign_in` notice sent through SendGrid (played by wiremock) that answers 400 fails
//! permanently, and the admin list filtered by `status=failed` and the detail show it with the
//! provider's answer and its one attempt. Admins only; a bad filter is a 422 field error; a
//! webhook message's id is no email (404).

use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::accounts::{login, make_admin, register, Browser, PASSWORD};
use crate::helpers::{assert_problem, spawn_app_with, TestApp};

async fn get(app: &TestApp, who: Option<&Browser>, path: &str) -> reqwest::Response {
    let mut r = app.client.get(app.url(path));
    if let Some(b) = who {
        r = r.header("cookie", &b.cookie);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn a_permanently_failed_email_is_listed_for_admins_with_its_error_and_attempt() {
    let sendgrid = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string(r#"{"errors":[{"message":"bad recipient"}]}"#))
        .mount(&sendgrid)
        .await;
    let base = sendgrid.uri();
    let app = spawn_app_with(&[
        ("TOLLGATE_MAIL_NEW_SIGN_IN", "true"),
        ("TOLLGATE_MAIL_TRANSPORT", "sendgrid"),
        ("SENDGRID_API_KEY", "SG.test-key"),
        ("SENDGRID_API_BASE", &base),
        ("TOLLGATE_MAIL_FROM", "shop@shop.example"),
    ])
    .await;
    let admin = make_admin(&app, "boss@example.com").await;
    register(&app, "customer@example.com").await;
    // A sign-in from a new client: a `new_sign_in` email that SendGrid refuses for good.
    let customer = login(&app, "customer@example.com", PASSWORD).await;

    let mut failed = Value::Null;
    for _ in 0..100 {
        let r = get(&app, Some(&admin), "/api/v1/admin/email-messages?status=failed").await;
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        if let Some(m) = page["data"].as_array().unwrap().iter().find(|m| m["recipient"] == "customer@example.com") {
            failed = m.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failed["type"], "new_sign_in", "{failed}");
    assert_eq!(failed["status"], "failed");
    assert!(failed["last_error"].as_str().is_some_and(|e| e.contains("permanent") && e.contains("400")), "{failed}");
    assert_eq!(failed["next_attempt_at"], Value::Null, "a failed email is not tried again");
    assert_eq!(failed["delivered_at"], Value::Null);
    assert!(failed["id"].as_str().unwrap().starts_with("msg_"));
    // Only failed ones under `status=failed`; none of them is delivered or pending.
    let page: Value = get(&app, Some(&admin), "/api/v1/admin/email-messages?status=failed").await.json().await.unwrap();
    assert!(page["data"].as_array().unwrap().iter().all(|m| m["status"] == "failed"), "{page}");
    assert_eq!(page["has_more"], false);
    let delivered: Value = get(&app, Some(&admin), "/api/v1/admin/email-messages?status=delivered").await.json().await.unwrap();
    assert!(delivered["data"].as_array().unwrap().iter().all(|m| m["id"] != failed["id"]), "{delivered}");
    // Unfiltered, it is there too.
    let all: Value = get(&app, Some(&admin), "/api/v1/admin/email-messages?limit=100").await.json().await.unwrap();
    assert!(all["data"].as_array().unwrap().iter().any(|m| m["id"] == failed["id"]), "{all}");

    // The detail: the same message, with its one attempt and SendGrid's refusal.
    let id = failed["id"].as_str().unwrap();
    let r = get(&app, Some(&admin), &format!("/api/v1/admin/email-messages/{id}")).await;
    assert_eq!(r.status(), 200);
    let detail: Value = r.json().await.unwrap();
    assert_eq!(detail["id"], id);
    assert_eq!(detail["status"], "failed");
    assert_eq!(detail["recipient"], "customer@example.com");
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "a permanent refusal is not retried: {detail}");
    assert_eq!(attempts[0]["attempt"], 1);
    assert!(attempts[0]["error"].as_str().is_some_and(|e| e.contains("permanent")), "{detail}");
    // The provider's API key is nowhere in what the admin sees.
    assert!(!detail.to_string().contains("SG.test-key"));

    // A customer is refused (403), nobody signed in is asked to (401); nothing is disclosed.
    assert_problem(get(&app, Some(&customer), "/api/v1/admin/email-messages").await, 403).await;
    assert_problem(get(&app, Some(&customer), &format!("/api/v1/admin/email-messages/{id}")).await, 403).await;
    assert_problem(get(&app, None, "/api/v1/admin/email-messages").await, 401).await;
    assert_problem(get(&app, None, &format!("/api/v1/admin/email-messages/{id}")).await, 401).await;
}

#[tokio::test]
async fn a_bad_filter_is_a_field_error_and_unknown_or_webhook_ids_are_not_found() {
    let app = spawn_app_with(&[]).await;
    let admin = make_admin(&app, "boss@example.com").await;
    for bad in ["bogus", "held", "FAILED"] {
        let p = assert_problem(get(&app, Some(&admin), &format!("/api/v1/admin/email-messages?status={bad}")).await, 422).await;
        assert_eq!(p["errors"][0]["field"], "status", "{bad}: {p}");
    }
    let p = assert_problem(get(&app, Some(&admin), "/api/v1/admin/email-messages?limit=0").await, 422).await;
    assert_eq!(p["errors"][0]["field"], "limit", "{p}");
    assert_problem(get(&app, Some(&admin), "/api/v1/admin/email-messages/msg_nope").await, 404).await;
    // A webhook message (a ping) is in the same outbox, but it is no email.
    let r = app
        .client
        .post(app.url("/api/v1/admin/webhook-endpoints"))
        .header("cookie", &admin.cookie)
        .header("x-csrf-token", &admin.csrf)
        .json(&json!({"url": "http://127.0.0.1:9/hook", "events": ["ping"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ep: Value = r.json().await.unwrap();
    let r = app
        .client
        .post(app.url(&format!("/api/v1/admin/webhook-endpoints/{}/ping", ep["id"].as_str().unwrap())))
        .header("cookie", &admin.cookie)
        .header("x-csrf-token", &admin.csrf)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let ping: Value = r.json().await.unwrap();
    let msg = ping["message_id"].as_str().unwrap();
    assert_problem(get(&app, Some(&admin), &format!("/api/v1/admin/email-messages/{msg}")).await, 404).await;
    let all: Value = get(&app, Some(&admin), "/api/v1/admin/email-messages").await.json().await.unwrap();
    assert!(all["data"].as_array().unwrap().iter().all(|m| m["id"] != msg), "{all}");
}

#[tokio::test]
async fn the_list_is_paged_newest_first() {
    let app = spawn_app_with(&[("TOLLGATE_MAIL_NEW_SIGN_IN", "true")]).await;
    let admin = make_admin(&app, "boss@example.com").await;
    for i in 0..3 {
        register(&app, &format!("reader{i}@example.com")).await;
        login(&app, &format!("reader{i}@example.com"), PASSWORD).await;
    }
    let all: Value = get(&app, Some(&admin), "/api/v1/admin/email-messages?limit=100").await.json().await.unwrap();
    let ids: Vec<String> = all["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    assert!(ids.len() >= 3, "{all}");
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    // Two at a time, each page after the last id of the one before, gives the same list.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/admin/email-messages?limit=2&starting_after={a}"),
            None => "/api/v1/admin/email-messages?limit=2".to_owned(),
        };
        let page: Value = get(&app, Some(&admin), &path).await.json().await.unwrap();
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        paged.extend(data.iter().map(|m| m["id"].as_str().unwrap().to_owned()));
        if page["has_more"] == false {
            break;
        }
        after = paged.last().cloned();
    }
    assert_eq!(paged, ids);
}
