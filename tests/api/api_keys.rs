//! API keys for the merchant's servers: shown once and stored only hashed, scoped (deny by
//! default), refused on user and admin routes and in query strings, revoked and expired at once,
//! of the server's mode only, limited per key, audited; the `/users` routes they open and token
//! introspection.

use chrono::Utc;
use serde_json::{json, Value};
use tollgate::domain::account::Role;
use tollgate::domain::apikeys::{generate_key, reveal, KeyMode};
use tollgate::store::ApiKeyRow;

use crate::helpers::accounts::{bearer_for, register, tokens, PASSWORD};
use crate::helpers::database::idempotency_rows;
use crate::helpers::keys::{api_key, create_api_key};
use crate::helpers::shop::shop;
use crate::helpers::{assert_problem, spawn_app, spawn_app_with, TestApp};

/// `GET path` with `Authorization: Bearer key`.
async fn get_with(app: &TestApp, key: &str, path: &str) -> reqwest::Response {
    app.client.get(app.url(path)).bearer_auth(key).send().await.unwrap()
}

/// Every text the database holds about API keys and in the audit log, in one string.
async fn stored_text(app: &TestApp) -> String {
    let keys = app.store.list_api_keys(100, None).await.unwrap();
    let audit = app.store.list_audit(1000).await.unwrap();
    format!("{keys:?} {}", serde_json::to_string(&audit).unwrap())
}

/// The audit entries with `action`, newest first.
async fn audited(app: &TestApp, action: &str) -> Vec<tollgate::store::AuditEntry> {
    app.store.list_audit(1000).await.unwrap().into_iter().filter(|e| e.action == action).collect()
}

#[tokio::test]
async fn a_key_is_shown_once_and_only_its_hash_is_stored() {
    let app = spawn_app().await;
    let (admin, admin_id) = bearer_for(&app, "admin@example.com", Role::Admin).await;
    let created = create_api_key(&app, &admin, &["entitlements:read", "users:read"]).await;
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("tg_test_"), "the sandbox is test mode: {}", &key[..8]);
    assert_eq!(key.len(), "tg_test_".len() + 43);
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("key_"));
    assert_eq!(created["prefix"], &key[..16]);
    assert_eq!(created["mode"], "test");
    assert_eq!(created["scopes"], json!(["entitlements:read", "users:read"]));
    assert_eq!(created["expires_at"], Value::Null);

    // Listed without the key; nothing stored holds it.
    let r = app.client.get(app.url("/api/v1/admin/api-keys")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(key), "the list never shows the key");
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["has_more"], false);
    let listed = &list["data"][0];
    assert_eq!((listed["id"].as_str(), listed["prefix"].as_str()), (Some(id), Some(&key[..16])));
    assert_eq!(listed["created_by"], admin_id.as_str());
    assert_eq!(listed["last_used_at"], Value::Null);
    assert!(listed.get("key").is_none() && listed.get("secret_hash").is_none());

    // The key works, and the database holds no plaintext of it (nor its random part).
    let user = register(&app, "buyer@example.com").await;
    let r = get_with(&app, key, &format!("/api/v1/users/{}/entitlements", user["id"].as_str().unwrap())).await;
    assert_eq!(r.status(), 200);
    let stored = stored_text(&app).await;
    assert!(!stored.contains(&key[8..]), "no plaintext key in api_keys or the audit log");
    assert!(stored.contains(&tollgate::domain::crypto::token_hash(key)), "the hash is what is stored");
    let create = audited(&app, "api_key.create").await;
    assert_eq!(create.len(), 1);
    assert_eq!((create[0].actor.as_deref(), create[0].resource.as_deref()), (Some(admin_id.as_str()), Some(id)));
}

#[tokio::test]
async fn a_retried_create_with_the_same_idempotency_key_is_one_key() {
    let app = spawn_app().await;
    let (admin, admin_id) = bearer_for(&app, "admin@example.com", Role::Admin).await;
    let post = |body: Value| {
        app.client
            .post(app.url("/api/v1/admin/api-keys"))
            .bearer_auth(&admin)
            .header("idempotency-key", "create-billing-key")
            .json(&body)
            .send()
    };
    let body = json!({"name": "billing", "scopes": ["credits:write"]});
    let first = post(body.clone()).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = post(body).await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let mut again: Value = again.json().await.unwrap();
    assert_eq!(again.as_object_mut().unwrap().remove("key"), None, "the key is shown once, never replayed");
    let mut without_key = first.clone();
    without_key.as_object_mut().unwrap().remove("key");
    assert_eq!(again, without_key, "the same key's id and details");
    // Nothing stored opens to the key, whatever the Idempotency-Key (a guessable one included).
    let secret = first["key"].as_str().unwrap();
    let stored = idempotency_rows(&app).await;
    assert_eq!(stored.len(), 1);
    for (_, sealed) in stored {
        let opened = tollgate::domain::crypto::open_bytes(b"create-billing-key", &admin_id, &sealed).expect("opens with its key");
        assert!(!String::from_utf8_lossy(&opened).contains(secret), "the replay holds no key");
    }
    assert_eq!(app.store.list_api_keys(10, None).await.unwrap().len(), 1);
    assert_problem(post(json!({"name": "other", "scopes": ["credits:write"]})).await.unwrap(), 422).await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_nothing_made() {
    let app = spawn_app().await;
    let (admin, _) = bearer_for(&app, "admin@example.com", Role::Admin).await;
    let post = |body: Value| app.client.post(app.url("/api/v1/admin/api-keys")).bearer_auth(&admin).json(&body).send();
    let p = assert_problem(post(json!({"name": "x", "scopes": ["users:read", "root:all"]})).await.unwrap(), 422).await;
    assert_eq!(p["errors"][0]["field"], "scopes[1]");
    assert!(p["errors"][0]["message"].as_str().unwrap().contains("root:all"));
    let p = assert_problem(post(json!({"name": "x", "scopes": []})).await.unwrap(), 422).await;
    assert_eq!(p["errors"][0]["field"], "scopes");
    let p = assert_problem(post(json!({"name": " ", "scopes": ["users:read"]})).await.unwrap(), 422).await;
    assert_eq!(p["errors"][0]["field"], "name");
    let p = assert_problem(post(json!({"name": "x".repeat(101), "scopes": ["users:read"]})).await.unwrap(), 422).await;
    assert_eq!(p["errors"][0]["field"], "name");
    let past = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let p = assert_problem(post(json!({"name": "x", "scopes": ["users:read"], "expires_at": past})).await.unwrap(), 422).await;
    assert_eq!(p["errors"][0]["field"], "expires_at");
    let p = assert_problem(post(json!({"name": "x"})).await.unwrap(), 422).await;
    assert_eq!(p["errors"][0]["field"], "scopes");
    assert!(app.store.list_api_keys(10, None).await.unwrap().is_empty(), "nothing made");

    // Only admins, and a user's token never makes one.
    let (user, _) = bearer_for(&app, "user@example.com", Role::User).await;
    let r = app
        .client
        .post(app.url("/api/v1/admin/api-keys"))
        .bearer_auth(&user)
        .json(&json!({"name": "x", "scopes": ["users:read"]}));
    assert_problem(r.send().await.unwrap(), 403).await;
}

#[tokio::test]
async fn a_key_opens_only_the_routes_its_scopes_name_and_never_user_or_admin_routes() {
    let app = spawn_app().await;
    let (admin, _) = bearer_for(&app, "admin@example.com", Role::Admin).await;
    let user = register(&app, "buyer@example.com").await;
    let user_id = user["id"].as_str().unwrap();
    let key = create_api_key(&app, &admin, &["users:read"]).await;
    let (key, key_id) = (key["key"].as_str().unwrap(), key["id"].as_str().unwrap());

    let p = assert_problem(get_with(&app, key, &format!("/api/v1/users/{user_id}/entitlements")).await, 403).await;
    assert!(p["detail"].as_str().unwrap().contains("entitlements:read"));
    assert_problem(get_with(&app, key, &format!("/api/v1/users/{user_id}/orders")).await, 403).await;
    assert_eq!(get_with(&app, key, "/api/v1/users?email=buyer@example.com").await.status(), 200);

    // A key is not a user: user and admin routes refuse it explicitly.
    for path in ["/api/v1/me", "/api/v1/me/entitlements", "/api/v1/admin/users", "/api/v1/admin/api-keys"] {
        let p = assert_problem(get_with(&app, key, path).await, 401).await;
        assert!(p["detail"].as_str().unwrap().contains("API keys are not accepted"), "{path}: {p}");
    }
    let r =
        app.client.post(app.url("/api/v1/admin/api-keys")).bearer_auth(key).json(&json!({"name": "x", "scopes": ["users:read"]}));
    assert_problem(r.send().await.unwrap(), 401).await;
    // ... and a user's token is not a key.
    let (user_token, _) = tokens(&app, "buyer@example.com", PASSWORD).await;
    assert_problem(get_with(&app, &user_token, "/api/v1/users?email=buyer@example.com").await, 401).await;
    assert_problem(app.get("/api/v1/users?email=buyer@example.com").await, 401).await;

    // The scope refusals were audited, naming the key, not holding it.
    let mut refused = Vec::new();
    for _ in 0..50 {
        refused = audited(&app, "api_key.refused").await;
        if refused.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|e| e.resource.as_deref() == Some(key_id)));
    let reasons: Vec<&str> = refused.iter().filter_map(|e| e.detail["reason"].as_str()).collect();
    assert!(
        reasons.contains(&"missing_scope:entitlements:read") && reasons.contains(&"missing_scope:orders:read"),
        "{reasons:?}"
    );
    assert!(!stored_text(&app).await.contains(&key[8..]));

    // The scope is checked before the query: a key without it learns nothing from a bad one.
    let p = assert_problem(get_with(&app, key, &format!("/api/v1/users/{user_id}/orders?limit=0")).await, 403).await;
    assert!(p["detail"].as_str().unwrap().contains("orders:read"));
}

#[tokio::test]
async fn entitlements_by_key_are_what_the_user_sees_at_me_entitlements() {
    let s = shop(&[]).await;
    let product = s.credits_product(1999, 500).await;
    let access = s
        .product(json!({"name": "Pro", "amount": 900, "currency": "usd", "grant": {"kind": "access", "feature": "pro", "duration_days": 30}}))
        .await;
    for p in [&product, &access] {
        let checkout = s.checkout(p).await;
        assert_eq!(s.sandbox(&checkout, "pay").await, 200);
    }
    let mine = s.entitlements().await;
    assert_eq!(mine["credit_balance"], 500);
    assert_eq!(mine["access"].as_array().unwrap().len(), 1);
    let key = api_key(&s.app, &s.admin, &["entitlements:read", "orders:read", "users:read"]).await;
    let r = get_with(&s.app, &key, &format!("/api/v1/users/{}/entitlements", s.user_id)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), mine, "the same answer as the user's own");

    // Orders by key: the same JSON as the user's own list.
    let theirs: Value = s.get(&s.user, "/api/v1/orders").await.json().await.unwrap();
    let r = get_with(&s.app, &key, &format!("/api/v1/users/{}/orders", s.user_id)).await;
    assert_eq!(r.status(), 200);
    let by_key: Value = r.json().await.unwrap();
    assert_eq!(by_key, theirs);
    assert_eq!(by_key["data"].as_array().unwrap().len(), 2);
    let r = get_with(&s.app, &key, &format!("/api/v1/users/{}/orders?limit=1", s.user_id)).await;
    let page: Value = r.json().await.unwrap();
    assert_eq!((page["data"].as_array().unwrap().len(), &page["has_more"]), (1, &json!(true)));
    assert_problem(get_with(&s.app, &key, &format!("/api/v1/users/{}/orders?limit=0", s.user_id)).await, 422).await;

    // A user that does not exist: 404, whatever route.
    for path in ["/api/v1/users/usr_nobody/entitlements", "/api/v1/users/usr_nobody/orders"] {
        assert_problem(get_with(&s.app, &key, path).await, 404).await;
    }
    let other = api_key(&s.app, &s.admin, &["entitlements:read"]).await;
    let a = assert_problem(get_with(&s.app, &other, "/api/v1/users/usr_nobody/entitlements").await, 404).await;
    assert_eq!(a["detail"], "no such resource", "the same answer for any key");
}

#[tokio::test]
async fn users_are_found_by_email_as_registration_folds_it() {
    let app = spawn_app().await;
    let (admin, _) = bearer_for(&app, "admin@example.com", Role::Admin).await;
    let user = register(&app, "Buyer.Name@Example.com").await;
    let key = api_key(&app, &admin, &["users:read"]).await;
    let (token, _) = tokens(&app, "Buyer.Name@Example.com", PASSWORD).await;
    let me: Value = get_with(&app, &token, "/api/v1/me").await.json().await.unwrap();
    for query in ["email=buyer.name@example.com", "email=%20BUYER.NAME%40EXAMPLE.COM%20", "email=Buyer.Name@Example.com"] {
        let r = get_with(&app, &key, &format!("/api/v1/users?{query}")).await;
        assert_eq!(r.status(), 200, "{query}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["has_more"], false);
        let found = &body["data"][0];
        assert_eq!(found["id"], user["id"], "{query}");
        assert_eq!(found["email"], user["email"]);
        assert!(found.get("password_hash").is_none());
        assert_eq!(found, &me, "the user as /me shows it");
    }
    let r = get_with(&app, &key, "/api/v1/users?email=nobody@example.com").await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"data": [], "has_more": false}));
    for missing in ["/api/v1/users", "/api/v1/users?email=", "/api/v1/users?email=%20"] {
        let p = assert_problem(get_with(&app, &key, missing).await, 422).await;
        assert_eq!(p["errors"][0]["field"], "email", "{missing}");
    }
}

#[tokio::test]
async fn a_revoked_key_answers_401_at_once_and_revoking_is_audited() {
    let app = spawn_app().await;
    let (admin, admin_id) = bearer_for(&app, "admin@example.com", Role::Admin).await;
    let created = create_api_key(&app, &admin, &["users:read"]).await;
    let (key, id) = (created["key"].as_str().unwrap(), created["id"].as_str().unwrap());
    assert_eq!(get_with(&app, key, "/api/v1/users?email=a@example.com").await.status(), 200);

    let revoke = || app.client.delete(app.url(&format!("/api/v1/admin/api-keys/{id}"))).bearer_auth(&admin).send();
    assert_eq!(revoke().await.unwrap().status(), 204);
    let p = assert_problem(get_with(&app, key, "/api/v1/users?email=a@example.com").await, 401).await;
    let unknown = reveal(&generate_key(KeyMode::Test)).to_owned();
    let q = assert_problem(get_with(&app, &unknown, "/api/v1/users?email=a@example.com").await, 401).await;
    assert_eq!(p["detail"], q["detail"], "revoked and unknown keys get the same answer");
    assert_eq!(revoke().await.unwrap().status(), 204, "a second revoke is a no-op");
    let r = app.client.delete(app.url("/api/v1/admin/api-keys/key_nope")).bearer_auth(&admin).send().await.unwrap();
    assert_problem(r, 404).await;

    // The use before the revocation was recorded (in the background, within moments; a loaded
    // machine may take seconds).
    let mut listed = Value::Null;
    for _ in 0..400 {
        listed =
            app.client.get(app.url("/api/v1/admin/api-keys")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
        if listed["data"][0]["last_used_at"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(listed["data"][0]["revoked_at"].is_string());
    assert!(listed["data"][0]["last_used_at"].is_string(), "the use before was recorded");
    let revoked = audited(&app, "api_key.revoke").await;
    assert_eq!(revoked.len(), 1, "revoking twice is one revocation");
    assert_eq!((revoked[0].actor.as_deref(), revoked[0].resource.as_deref()), (Some(admin_id.as_str()), Some(id)));
    let refused = audited(&app, "api_key.refused").await;
    assert_eq!(refused.len(), 1, "the refused use of the revoked key; the unknown key is not audited");
    assert_eq!((refused[0].resource.as_deref(), refused[0].detail["reason"].as_str()), (Some(id), Some("revoked")));
    assert!(!stored_text(&app).await.contains(&key[8..]) && !stored_text(&app).await.contains(&unknown[8..]));
}

/// A key written straight to the store (another mode, or already expired).
async fn insert_key(app: &TestApp, mode: KeyMode, expires_at: Option<chrono::DateTime<Utc>>) -> String {
    let k = generate_key(mode);
    let row = ApiKeyRow {
        id: tollgate::domain::account::new_id("key"),
        name: "planted".to_owned(),
        prefix: k.prefix.clone(),
        secret_hash: k.hash.clone(),
        mode: mode.as_str().to_owned(),
        scopes: "users:read".to_owned(),
        created_by: "cli".to_owned(),
        created_at: Utc::now() - chrono::Duration::hours(1),
        expires_at,
        revoked_at: None,
        last_used_at: None,
    };
    app.store.insert_api_key(&row).await.unwrap();
    reveal(&k).to_owned()
}

#[tokio::test]
async fn expired_and_other_mode_keys_are_refused_and_audited() {
    let app = spawn_app().await;
    let expired = insert_key(&app, KeyMode::Test, Some(Utc::now() - chrono::Duration::seconds(1))).await;
    let live = insert_key(&app, KeyMode::Live, None).await;
    let fine = insert_key(&app, KeyMode::Test, Some(Utc::now() + chrono::Duration::hours(1))).await;
    assert_eq!(get_with(&app, &fine, "/api/v1/users?email=a@example.com").await.status(), 200);
    for key in [&expired, &live] {
        let p = assert_problem(get_with(&app, key, "/api/v1/users?email=a@example.com").await, 401).await;
        assert_eq!(p["detail"], "a valid API key is required (Authorization: Bearer tg_…)");
    }
    let reasons: Vec<String> =
        audited(&app, "api_key.refused").await.iter().filter_map(|e| e.detail["reason"].as_str().map(str::to_owned)).collect();
    assert!(reasons.contains(&"expired".to_owned()) && reasons.contains(&"other_mode".to_owned()), "{reasons:?}");

    // A live server refuses the test keys the same way (same database, Stripe live key).
    let live_app = spawn_app_with(&[
        ("DATABASE_URL", app.database_url.as_str()),
        ("STRIPE_SECRET_KEY", "sk_live_51LiveModeKeyForTheApiKeyTest0123456789abcdef"),
        ("STRIPE_WEBHOOK_SECRET", "whsec_LiveModeWebhookSecretForTheTest0123456789"),
    ])
    .await;
    assert_problem(get_with(&live_app, &fine, "/api/v1/users?email=a@example.com").await, 401).await;
    assert_eq!(get_with(&live_app, &live, "/api/v1/users?email=a@example.com").await.status(), 200);
}

#[tokio::test]
async fn a_key_in_a_query_string_is_refused_on_every_route() {
    let app = spawn_app().await;
    let (admin, _) = bearer_for(&app, "admin@example.com", Role::Admin).await;
    let key = api_key(&app, &admin, &["users:read"]).await;
    let encoded: String = key.chars().map(|c| format!("%{:02X}", c as u32)).collect();
    for path in [
        format!("/api/v1/users?email=a@example.com&api_key={key}"),
        format!("/api/v1/users?email=a@example.com&key={encoded}"),
        format!("/healthz?k={key}"),
        format!("/api/v1/products?token={key}"),
        "/api/v1/products?note=tg_live_".to_owned(),
    ] {
        let r = app.client.get(app.url(&path)).bearer_auth(&key).send().await.unwrap();
        let p = assert_problem(r, 401).await;
        assert!(p["detail"].as_str().unwrap().contains("Authorization header"), "{path}: {p}");
    }
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn each_key_has_its_own_rate_limit() {
    let app = spawn_app_with(&[("TOLLGATE_API_KEY_LIMIT", "3")]).await;
    let (admin, _) = bearer_for(&app, "admin@example.com", Role::Admin).await;
    let (a, b) = (api_key(&app, &admin, &["users:read"]).await, api_key(&app, &admin, &["users:read"]).await);
    for _ in 0..3 {
        assert_eq!(get_with(&app, &a, "/api/v1/users?email=x@example.com").await.status(), 200);
    }
    let r = get_with(&app, &a, "/api/v1/users?email=x@example.com").await;
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert_eq!(r.headers()["ratelimit-limit"], "3");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    assert!(r.headers().contains_key("ratelimit-reset"));
    assert_problem(r, 429).await;
    assert_eq!(get_with(&app, &b, "/api/v1/users?email=x@example.com").await.status(), 200, "another key is not limited");
}

/// `POST /api/v1/auth/introspect` with `key` and the form `body`.
async fn introspect(app: &TestApp, key: &str, body: &str) -> reqwest::Response {
    let r = app.client.post(app.url("/api/v1/auth/introspect")).bearer_auth(key);
    r.header("content-type", "application/x-www-form-urlencoded").body(body.to_owned()).send().await.unwrap()
}

/// The introspection answer for `token`, checked to be a no-store 200.
async fn introspected(app: &TestApp, key: &str, token: &str) -> Value {
    let r = introspect(app, key, &format!("token={token}&token_type_hint=access_token")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json().await.unwrap()
}

#[tokio::test]
async fn introspection_is_revocation_aware() {
    let app = spawn_app().await;
    let (admin, _) = bearer_for(&app, "admin@example.com", Role::Admin).await;
    let key = api_key(&app, &admin, &["tokens:introspect"]).await;
    let user = register(&app, "buyer@example.com").await;
    let user_id = user["id"].as_str().unwrap();
    let (access, refresh) = tokens(&app, "buyer@example.com", PASSWORD).await;

    let active = introspected(&app, &key, &access).await;
    assert_eq!(active["active"], true);
    assert_eq!(active["sub"], user_id);
    assert_eq!(active["username"], user["email"]);
    assert_eq!(active["token_type"], "access_token");
    assert_eq!(active["role"], "user");
    let (exp, iat) = (active["exp"].as_i64().unwrap(), active["iat"].as_i64().unwrap());
    assert!(exp > Utc::now().timestamp() && iat <= Utc::now().timestamp() && exp - iat == 900);

    // Anything but an active access token: exactly {"active": false}.
    let inactive = json!({"active": false});
    let mut tampered = access.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let other_key = api_key(&app, &admin, &["tokens:introspect"]).await;
    for token in [tampered.as_str(), refresh.as_str(), "garbage", "a.b.c", other_key.as_str()] {
        assert_eq!(introspected(&app, &key, token).await, inactive, "{token}");
    }

    // A logout ends the token at once ...
    let r = app.client.post(app.url("/api/v1/auth/logout")).bearer_auth(&access).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(introspected(&app, &key, &access).await, inactive, "after logout");
    // ... and so does disabling the user.
    let (access, _) = tokens(&app, "buyer@example.com", PASSWORD).await;
    assert_eq!(introspected(&app, &key, &access).await["active"], true);
    let r =
        app.client.patch(app.url(&format!("/api/v1/admin/users/{user_id}"))).bearer_auth(&admin).json(&json!({"disabled": true}));
    assert_eq!(r.send().await.unwrap().status(), 200);
    assert_eq!(introspected(&app, &key, &access).await, inactive, "after the user is disabled");
}

#[tokio::test]
async fn introspection_needs_its_scope_a_form_and_a_token() {
    let app = spawn_app().await;
    let (admin, _) = bearer_for(&app, "admin@example.com", Role::Admin).await;
    let (access, _) = tokens(&app, "admin@example.com", PASSWORD).await;
    let key = api_key(&app, &admin, &["tokens:introspect"]).await;
    let wrong = api_key(&app, &admin, &["users:read"]).await;
    assert_problem(introspect(&app, &wrong, &format!("token={access}")).await, 403).await;
    assert_problem(introspect(&app, &access, &format!("token={access}")).await, 401).await;
    let r = app.client.post(app.url("/api/v1/auth/introspect")).bearer_auth(&key).json(&json!({"token": access}));
    let p = assert_problem(r.send().await.unwrap(), 415).await;
    assert!(p["detail"].as_str().unwrap().contains("x-www-form-urlencoded"));
    for body in ["", "token=", "token_type_hint=access_token", "token=a&token=b"] {
        assert_problem(introspect(&app, &key, body).await, 400).await;
    }
}

#[tokio::test]
async fn the_cli_creates_lists_and_revokes_keys_and_the_logs_never_hold_one() {
    use crate::helpers::binary::{drain, output_text, serve, tollgate};
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("DATABASE_URL", app.database_url.as_str())];
    let cli = |args: &[&str]| tollgate(dir.path(), &env).args(["api-key"]).args(args).output().unwrap();

    let out = cli(&["create", "--name", "nightly sync", "--scope", "users:read", "--scope", "entitlements:read"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let key = String::from_utf8(out.stdout.clone()).unwrap().trim().to_owned();
    assert!(key.starts_with("tg_test_") && key.len() == 51, "stdout is the key alone: {key:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("created key_") && stderr.contains("shown once") && !stderr.contains(&key[8..]), "{stderr}");
    assert_eq!(get_with(&app, &key, "/api/v1/users?email=a@example.com").await.status(), 200, "the server takes it");

    let out = cli(&["create", "--name", "x", "--scope", "admin:everything"]);
    assert!(!out.status.success());
    assert!(output_text(&out).contains("unknown scope \"admin:everything\""), "{}", output_text(&out));
    let out = cli(&["create", "--name", "x", "--scope", "users:read", "--expires-at", "2001-01-01T00:00:00Z"]);
    assert!(!out.status.success() && output_text(&out).contains("expires_at: must be in the future"), "{}", output_text(&out));
    assert!(!cli(&["create", "--name", "x"]).status.success(), "--scope is required");

    let out = cli(&["list"]);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success() && listed.lines().count() == 1, "{listed}");
    let id = listed.split('\t').next().unwrap().to_owned();
    assert!(
        id.starts_with("key_") && listed.contains(&key[..16]) && listed.contains("nightly sync") && listed.contains("active")
    );
    assert!(!listed.contains(&key[16..]), "the list never shows the key");

    // A server on the same database: a key in a URL, or one it does not know, never reaches its logs.
    let server = serve(dir.path(), &env);
    let client = crate::helpers::client();
    let base = format!("http://{}", server.addr);
    let r = client.get(format!("{base}/api/v1/users?email=a@example.com&api_key={key}")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let unknown = reveal(&generate_key(KeyMode::Test)).to_owned();
    let r = client.get(format!("{base}/api/v1/users?email=a@example.com")).bearer_auth(&unknown).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let logs = drain(&server.lines, std::time::Duration::from_millis(500)).join("\n");
    assert!(logs.contains("API key in a query string refused") && logs.contains("unknown API key refused"), "{logs}");
    assert!(!logs.contains(&key[8..]) && !logs.contains(&unknown[8..]), "no key in the logs:\n{logs}");

    let out = cli(&["revoke", &id]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_problem(get_with(&app, &key, "/api/v1/users?email=a@example.com").await, 401).await;
    assert!(String::from_utf8(cli(&["list"]).stdout).unwrap().contains("revoked"));
    let out = cli(&["revoke", "key_nothing"]);
    assert!(!out.status.success() && output_text(&out).contains("no such API key"));

    for action in ["api_key.create", "api_key.revoke"] {
        let entries = audited(&app, action).await;
        assert_eq!(entries.len(), 1, "{action}");
        assert_eq!((entries[0].actor.as_deref(), entries[0].resource.as_deref()), (Some("cli"), Some(id.as_str())));
    }
    assert!(!stored_text(&app).await.contains(&key[8..]));
}
