//! Accounts and authentication, attacked: every test asserts the status a user sees and that
//! nothing changed that should not have.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use sha2::Sha256;
use tollgate::domain::account::Role;

use crate::helpers::accounts::{
    login, make_admin, me_with_bearer, me_with_cookie, password_still, register, tokens, NEW_PASSWORD, PASSWORD,
};
use crate::helpers::{assert_problem, spawn_app, spawn_app_with, TestApp};

const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";

async fn app_with_secret() -> TestApp {
    spawn_app_with(&[("TOLLGATE_JWT_SECRET", JWT_SECRET)]).await
}

fn sign(header: Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn decode_part(token: &str, i: usize) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(i).unwrap()).unwrap()).unwrap()
}

#[tokio::test]
async fn registration_normalises_validates_and_hashes_with_argon2id() {
    let app = spawn_app().await;
    let user = register(&app, "  Ada@Example.COM ").await;
    assert_eq!(user["email"], "Ada@example.com");
    assert_eq!(user["role"], "user");
    assert!(user["id"].as_str().unwrap().starts_with("usr_"));
    assert!(user.get("password_hash").is_none() && !user.to_string().contains(PASSWORD));

    let stored = app.store.user_by_email("Ada@example.com").await.unwrap().unwrap();
    assert!(stored.password_hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", stored.password_hash);

    let r = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"email": "ada@EXAMPLE.com ", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 409).await;

    for (input, field) in [
        (json!({"email": "not-an-email", "password": PASSWORD}), "email"),
        (json!({"email": "b@example.com", "password": "short"}), "password"),
        (json!({"email": "b@example.com", "password": "password1234"}), "password"),
        (json!({"email": "b@example.com", "password": "aaaaaaaaaaaaaaaa"}), "password"),
        (json!({"email": "b@example.com", "password": PASSWORD, "name": ""}), "name"),
    ] {
        let r = app.client.post(app.url("/api/v1/auth/register")).json(&input).send().await.unwrap();
        let body = assert_problem(r, 422).await;
        assert!(body["errors"].as_array().unwrap().iter().any(|e| e["field"] == field), "{input}: {body}");
    }
    assert_eq!(app.store.list_users(100, None).await.unwrap().len(), 1, "nothing else was created");
}

#[tokio::test]
async fn login_sets_an_httponly_lax_cookie_and_a_fresh_token_every_time() {
    let app = spawn_app().await;
    register(&app, "ada@example.com").await;
    // An attacker plants a session id before the victim logs in (fixation).
    let planted = "tollgate_session=attacker-chosen-value";
    let r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("cookie", planted)
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set_cookie = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    for part in ["tollgate_session=", "HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(part), "{part} in {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain http in development: no Secure");
    let issued = set_cookie.split(';').next().unwrap().to_owned();
    assert_ne!(issued, planted, "the session token is new at login");
    assert_eq!(me_with_cookie(&app, planted).await, 401, "the planted value is nobody's session");
    assert_eq!(me_with_cookie(&app, &issued).await, 200);

    let again = login(&app, "ada@example.com", PASSWORD).await;
    assert_ne!(again.cookie, issued, "every login gets a new token");
    let user = app.store.user_by_email("ada@example.com").await.unwrap().unwrap();
    let now = chrono::Utc::now();
    let session = app
        .store
        .list_live_sessions(&user.id, user.credential_epoch, now, now - chrono::Duration::hours(1), 100, None)
        .await
        .unwrap();
    assert_eq!(session.len(), 2);
    let token = issued.split_once('=').unwrap().1;
    assert!(session.iter().all(|s| s.token_hash != token && s.token_hash.len() == 64), "stored hashed, never as sent");
}

#[tokio::test]
async fn over_https_the_cookie_is_host_prefixed_and_secure() {
    let app = spawn_app_with(&[("TOLLGATE_PUBLIC_URL", "https://pay.example.org")]).await;
    register(&app, "ada@example.com").await;
    let r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let c = r.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        c.starts_with("__Host-tollgate_session=") && c.contains("; Secure") && c.contains("Path=/") && !c.contains("Domain"),
        "{c}"
    );
}

#[tokio::test]
async fn state_changing_cookie_requests_need_the_csrf_token_and_a_same_site_origin() {
    let app = spawn_app().await;
    register(&app, "ada@example.com").await;
    let b = login(&app, "ada@example.com", PASSWORD).await;
    let change = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    let post = || app.client.post(app.url("/api/v1/me/password")).header("cookie", &b.cookie).json(&change);

    assert_problem(post().send().await.unwrap(), 403).await;
    assert_problem(post().header("x-csrf-token", "wrong").send().await.unwrap(), 403).await;
    let other = login(&app, "ada@example.com", PASSWORD).await;
    assert_problem(post().header("x-csrf-token", &other.csrf).send().await.unwrap(), 403).await;
    assert_problem(post().header("x-csrf-token", &b.csrf).header("origin", "https://evil.example").send().await.unwrap(), 403)
        .await;
    assert_problem(post().header("x-csrf-token", &b.csrf).header("sec-fetch-site", "cross-site").send().await.unwrap(), 403)
        .await;
    assert!(password_still(&app, "ada@example.com", PASSWORD).await, "nothing changed");

    let r = app.client.get(app.url("/api/v1/auth/csrf")).header("cookie", &b.cookie).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["csrf_token"], b.csrf.as_str(), "the same token is readable later");

    let r = post()
        .header("x-csrf-token", &b.csrf)
        .header("origin", "http://localhost:8080")
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(password_still(&app, "ada@example.com", NEW_PASSWORD).await);
}

#[tokio::test]
async fn logout_ends_the_session_and_clears_the_cookie() {
    let app = spawn_app().await;
    register(&app, "ada@example.com").await;
    let b = login(&app, "ada@example.com", PASSWORD).await;
    let r = app.client.post(app.url("/api/v1/auth/logout")).header("cookie", &b.cookie).send().await.unwrap();
    assert_eq!(r.status(), 403, "logout with the cookie needs CSRF too");
    let r = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .header("cookie", &b.cookie)
        .header("x-csrf-token", &b.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers().get("set-cookie").unwrap().to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(me_with_cookie(&app, &b.cookie).await, 401);
}

#[tokio::test]
async fn sessions_end_when_idle_and_at_their_absolute_lifetime() {
    let app = spawn_app_with(&[("TOLLGATE_SESSION_IDLE_TIMEOUT", "1s")]).await;
    register(&app, "ada@example.com").await;
    let b = login(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(me_with_cookie(&app, &b.cookie).await, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    assert_eq!(me_with_cookie(&app, &b.cookie).await, 401, "idle too long");

    let app = spawn_app_with(&[("TOLLGATE_SESSION_LIFETIME", "2s")]).await;
    register(&app, "ada@example.com").await;
    let b = login(&app, "ada@example.com", PASSWORD).await;
    for _ in 0..3 {
        assert_eq!(me_with_cookie(&app, &b.cookie).await, 200, "in use, within its lifetime");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(me_with_cookie(&app, &b.cookie).await, 401, "past the absolute lifetime, however active");
}

#[tokio::test]
async fn forged_and_invalid_access_tokens_are_refused_and_change_nothing() {
    let app = app_with_secret().await;
    register(&app, "ada@example.com").await;
    let (access, _) = tokens(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(me_with_bearer(&app, &access).await, 200);
    let header = decode_part(&access, 0);
    let claims = decode_part(&access, 1);
    assert_eq!(header["alg"], "HS256");
    for claim in ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"] {
        assert!(claims.get(claim).is_some(), "{claim} present");
    }
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 900);

    let mut forged = Vec::new();
    // alg: none, with and without a signature.
    let body = access.split('.').nth(1).unwrap();
    let none = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": header["kid"]}).to_string());
    forged.push(("alg none", format!("{none}.{body}.")));
    forged.push(("alg none with the original signature", format!("{none}.{body}.{}", access.split('.').nth(2).unwrap())));
    // Another key, another algorithm.
    forged.push(("another key", sign(header.clone(), &claims, b"some-other-secret-of-plenty-of-bytes")));
    forged.push(("HS512 header", sign(json!({"alg": "HS512", "kid": header["kid"]}), &claims, JWT_SECRET.as_bytes())));
    // The right key, wrong claims.
    let mut c = claims.clone();
    c["aud"] = json!("another-service");
    forged.push(("wrong aud", sign(header.clone(), &c, JWT_SECRET.as_bytes())));
    let mut c = claims.clone();
    c["iss"] = json!("https://evil.example");
    forged.push(("wrong iss", sign(header.clone(), &c, JWT_SECRET.as_bytes())));
    let mut c = claims.clone();
    c["exp"] = json!(chrono::Utc::now().timestamp() - 1);
    forged.push(("expired", sign(header.clone(), &c, JWT_SECRET.as_bytes())));
    let mut c = claims.clone();
    c["nbf"] = json!(chrono::Utc::now().timestamp() + 600);
    forged.push(("not yet valid", sign(header.clone(), &c, JWT_SECRET.as_bytes())));
    let mut c = claims.clone();
    c["sub"] = json!("usr_someone_else");
    forged.push((
        "tampered sub, old signature",
        format!(
            "{}.{}.{}",
            access.split('.').next().unwrap(),
            URL_SAFE_NO_PAD.encode(c.to_string()),
            access.split('.').nth(2).unwrap()
        ),
    ));
    forged.push(("garbage", "not.a.jwt".to_owned()));

    for (what, token) in &forged {
        assert_eq!(me_with_bearer(&app, token).await, 401, "{what}");
        let r = app
            .client
            .post(app.url("/api/v1/me/password"))
            .bearer_auth(token)
            .json(&json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_problem(r, 401).await;
    }
    assert!(password_still(&app, "ada@example.com", PASSWORD).await, "nothing changed");
}

#[tokio::test]
async fn an_access_token_expires() {
    // Whole seconds: 3 s leaves the first use at least 2 s even on a busy machine.
    let app = spawn_app_with(&[("TOLLGATE_ACCESS_TOKEN_TTL", "3s")]).await;
    register(&app, "ada@example.com").await;
    let r = app
        .client
        .post(app.url("/api/v1/auth/token"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let access = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(me_with_bearer(&app, &access).await, 200);
    tokio::time::sleep(std::time::Duration::from_millis(4100)).await;
    assert_eq!(me_with_bearer(&app, &access).await, 401);
}

#[tokio::test]
async fn a_rotated_signing_secret_still_verifies_by_kid() {
    let old = app_with_secret().await;
    register(&old, "ada@example.com").await;
    let (access, _) = tokens(&old, "ada@example.com", PASSWORD).await;
    let db = old.database_url.clone();
    let rotated = spawn_app_with(&[
        ("DATABASE_URL", &db),
        ("TOLLGATE_JWT_SECRET", "the-new-secret-0123456789abcdef0123456789"),
        ("TOLLGATE_JWT_PREVIOUS_SECRET", JWT_SECRET),
    ])
    .await;
    assert_eq!(me_with_bearer(&rotated, &access).await, 200, "signed with the previous secret");
    let (fresh, _) = tokens(&rotated, "ada@example.com", PASSWORD).await;
    assert_ne!(decode_part(&fresh, 0)["kid"], decode_part(&access, 0)["kid"]);
    let retired =
        spawn_app_with(&[("DATABASE_URL", &db), ("TOLLGATE_JWT_SECRET", "the-new-secret-0123456789abcdef0123456789")]).await;
    assert_eq!(me_with_bearer(&retired, &access).await, 401, "once the previous secret is removed");
    assert_eq!(me_with_bearer(&retired, &fresh).await, 200);
}

#[tokio::test]
async fn refresh_rotates_and_a_replayed_refresh_token_kills_the_family() {
    // No grace window: a spent token presented again is a theft at once (see hardening.rs for the window).
    let app = spawn_app_with(&[("TOLLGATE_REFRESH_GRACE", "0s")]).await;
    register(&app, "ada@example.com").await;
    let (access1, refresh1) = tokens(&app, "ada@example.com", PASSWORD).await;
    let refresh = |t: &str| app.client.post(app.url("/api/v1/auth/refresh")).json(&json!({"refresh_token": t})).send();

    let r = refresh(&refresh1).await.unwrap();
    assert_eq!(r.status(), 200);
    let pair: Value = r.json().await.unwrap();
    let (access2, refresh2) =
        (pair["access_token"].as_str().unwrap().to_owned(), pair["refresh_token"].as_str().unwrap().to_owned());
    assert_ne!(refresh2, refresh1);
    assert_eq!(me_with_bearer(&app, &access2).await, 200);

    // The thief replays the spent token: refused, and the whole family dies with it.
    assert_problem(refresh(&refresh1).await.unwrap(), 401).await;
    assert_problem(refresh(&refresh2).await.unwrap(), 401).await;
    assert_eq!(me_with_bearer(&app, &access2).await, 401, "access tokens of the family die too");
    assert_eq!(me_with_bearer(&app, &access1).await, 401);
    let audit = app.store.list_audit(50).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "token.refresh_reuse"), "the reuse is audited");

    assert_problem(refresh("never-issued").await.unwrap(), 401).await;
    let (other_access, _) = tokens(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(me_with_bearer(&app, &other_access).await, 200, "other families are unaffected");
}

#[tokio::test]
async fn bearer_logout_revokes_the_family() {
    let app = spawn_app().await;
    register(&app, "ada@example.com").await;
    let (access, refresh) = tokens(&app, "ada@example.com", PASSWORD).await;
    let r = app.client.post(app.url("/api/v1/auth/logout")).bearer_auth(&access).send().await.unwrap();
    assert_eq!(r.status(), 204, "bearer requests need no CSRF token");
    assert_eq!(me_with_bearer(&app, &access).await, 401);
    let r = app.client.post(app.url("/api/v1/auth/refresh")).json(&json!({"refresh_token": refresh})).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

fn comparable_headers(h: &HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = h
        .iter()
        .filter(|(k, _)| !["x-request-id", "date"].contains(&k.as_str()))
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn login_failures_do_not_reveal_whether_the_account_exists() {
    let app = spawn_app().await;
    register(&app, "ada@example.com").await;
    let disabled = register(&app, "gone@example.com").await;
    app.store.update_user_flags(None, disabled["id"].as_str().unwrap(), None, Some(true), chrono::Utc::now()).await.unwrap();

    let mut answers = Vec::new();
    for (email, password) in
        [("nobody@example.com", PASSWORD), ("ada@example.com", "wrong password entirely"), ("gone@example.com", PASSWORD)]
    {
        for path in ["/api/v1/auth/login", "/api/v1/auth/token"] {
            let r = app.client.post(app.url(path)).json(&json!({"email": email, "password": password})).send().await.unwrap();
            let status = r.status();
            let headers = comparable_headers(r.headers());
            let mut body: Value = r.json().await.unwrap();
            body.as_object_mut().unwrap().remove("request_id");
            answers.push((path, status, headers, body));
        }
    }
    for path in ["/api/v1/auth/login", "/api/v1/auth/token"] {
        let same: Vec<_> = answers.iter().filter(|a| a.0 == path).collect();
        assert_eq!(same[0].1, 401);
        for a in &same[1..] {
            assert_eq!((a.1, &a.2, &a.3), (same[0].1, &same[0].2, &same[0].3), "{path}: identical status, headers and body");
        }
    }
}

#[tokio::test]
async fn one_ip_is_limited_across_accounts() {
    let app = spawn_app_with(&[("TOLLGATE_LOGIN_IP_LIMIT", "5")]).await;
    for i in 0..5 {
        let r = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({"email": format!("u{i}@example.com"), "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "u9@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 429).await;
    // A spoofed X-Forwarded-For from this untrusted peer changes nothing.
    let r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", "192.0.2.200")
        .json(&json!({"email": "u9@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn admin_routes_deny_by_default_and_disabling_ends_access_at_once() {
    let app = app_with_secret().await;
    let admin = make_admin(&app, "root@example.com").await;
    let user = register(&app, "ada@example.com").await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let ub = login(&app, "ada@example.com", PASSWORD).await;
    let (access, refresh) = tokens(&app, "ada@example.com", PASSWORD).await;

    // Not an admin: 403, whatever the credential.
    let r = app.client.get(app.url("/api/v1/admin/users")).header("cookie", &ub.cookie).send().await.unwrap();
    assert_problem(r, 403).await;
    let r = app
        .client
        .patch(app.url(&format!("/api/v1/admin/users/{user_id}")))
        .bearer_auth(&access)
        .json(&json!({"role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 403).await;
    assert_problem(app.get("/api/v1/admin/users").await, 401).await;
    assert_eq!(app.store.user_by_id(&user_id).await.unwrap().unwrap().role, Role::User, "nothing changed");

    let r = app.client.get(app.url("/api/v1/admin/users?limit=1")).header("cookie", &admin.cookie).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["data"][0]["email"], "ada@example.com", "newest first");
    let r = app.client.get(app.url("/api/v1/admin/users?limit=0")).header("cookie", &admin.cookie).send().await.unwrap();
    assert_problem(r, 422).await;

    let patch = |body: Value, id: &str| {
        app.client
            .patch(app.url(&format!("/api/v1/admin/users/{id}")))
            .header("cookie", &admin.cookie)
            .header("x-csrf-token", &admin.csrf)
            .json(&body)
            .send()
    };
    let r = patch(json!({"disabled": true}), &user_id).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["disabled"], true);
    assert_eq!(me_with_cookie(&app, &ub.cookie).await, 401, "session ended");
    assert_eq!(me_with_bearer(&app, &access).await, 401, "a still-unexpired access token stops working");
    let r = app.client.post(app.url("/api/v1/auth/refresh")).json(&json!({"refresh_token": refresh})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        app.client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    assert_problem(patch(json!({"role": "admin"}), "usr_doesnotexist").await.unwrap(), 404).await;
    let root_id = app.store.user_by_email("root@example.com").await.unwrap().unwrap().id;
    assert_problem(patch(json!({"disabled": true}), &root_id).await.unwrap(), 409).await;
    assert_problem(patch(json!({"role": "superuser"}), &user_id).await.unwrap(), 422).await;

    assert_eq!(patch(json!({"role": "admin", "disabled": false}), &user_id).await.unwrap().status(), 200);
    let audit: Value = app
        .client
        .get(app.url("/api/v1/admin/audit"))
        .header("cookie", &admin.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["user.disable", "user.enable", "user.role_change", "login.success", "login.failure"] {
        assert!(actions.contains(&a), "{a} audited: {actions:?}");
    }
}

#[tokio::test]
async fn another_users_session_is_404_and_untouched() {
    let app = spawn_app().await;
    register(&app, "ada@example.com").await;
    register(&app, "eve@example.com").await;
    let ada = login(&app, "ada@example.com", PASSWORD).await;
    let eve = login(&app, "eve@example.com", PASSWORD).await;
    let sessions: Value =
        app.client.get(app.url("/api/v1/me/sessions")).header("cookie", &ada.cookie).send().await.unwrap().json().await.unwrap();
    let ada_session = sessions["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(sessions["data"][0]["current"], true);

    let r = app
        .client
        .delete(app.url(&format!("/api/v1/me/sessions/{ada_session}")))
        .header("cookie", &eve.cookie)
        .header("x-csrf-token", &eve.csrf)
        .send()
        .await
        .unwrap();
    let body = assert_problem(r, 404).await;
    assert_eq!(body["detail"], "no such resource", "indistinguishable from an id that never existed");
    assert_eq!(me_with_cookie(&app, &ada.cookie).await, 200, "Ada's session lives on");

    let r = app
        .client
        .delete(app.url(&format!("/api/v1/me/sessions/{ada_session}")))
        .header("cookie", &ada.cookie)
        .header("x-csrf-token", &ada.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(me_with_cookie(&app, &ada.cookie).await, 401);
}

#[tokio::test]
async fn changing_the_password_ends_every_other_session_and_family() {
    let app = spawn_app().await;
    register(&app, "ada@example.com").await;
    let here = login(&app, "ada@example.com", PASSWORD).await;
    let elsewhere = login(&app, "ada@example.com", PASSWORD).await;
    let (access, refresh) = tokens(&app, "ada@example.com", PASSWORD).await;

    let wrong = app
        .client
        .post(app.url("/api/v1/me/password"))
        .header("cookie", &here.cookie)
        .header("x-csrf-token", &here.csrf)
        .json(&json!({"current_password": "not my password at all", "new_password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    let body = assert_problem(wrong, 422).await;
    assert_eq!(body["errors"][0]["field"], "current_password");
    assert_eq!(me_with_cookie(&app, &elsewhere.cookie).await, 200, "a failed change ends nothing");

    let r = app
        .client
        .post(app.url("/api/v1/me/password"))
        .header("cookie", &here.cookie)
        .header("x-csrf-token", &here.csrf)
        .json(&json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(me_with_cookie(&app, &here.cookie).await, 200, "the session that changed it stays");
    assert_eq!(me_with_cookie(&app, &elsewhere.cookie).await, 401);
    assert_eq!(me_with_bearer(&app, &access).await, 401);
    assert_eq!(
        app.client.post(app.url("/api/v1/auth/refresh")).json(&json!({"refresh_token": refresh})).send().await.unwrap().status(),
        401
    );
    assert!(!password_still(&app, "ada@example.com", PASSWORD).await);
    assert!(password_still(&app, "ada@example.com", NEW_PASSWORD).await);
}

#[tokio::test]
async fn an_old_hash_is_upgraded_at_the_next_login() {
    let app = spawn_app().await;
    let user = register(&app, "ada@example.com").await;
    let weak = tollgate::domain::password::PasswordHasherPool::with_params(1, (4096, 1, 1));
    let old = weak.hash(&secrecy::SecretString::from(PASSWORD.to_owned())).await.unwrap();
    let id = user["id"].as_str().unwrap();
    app.store.set_password_hash(id, &old, false, chrono::Utc::now()).await.unwrap();
    assert!(app.store.user_by_id(id).await.unwrap().unwrap().password_hash.contains("m=4096,t=1,p=1"));
    login(&app, "ada@example.com", PASSWORD).await;
    let now = app.store.user_by_id(id).await.unwrap().unwrap().password_hash;
    assert!(now.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{now}");
}

#[tokio::test]
async fn the_audit_log_records_who_what_where_and_never_a_secret() {
    let app = spawn_app().await;
    register(&app, "ada@example.com").await;
    let _ = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("user-agent", "audit-test/1")
        .header("x-request-id", "audit-req-1")
        .json(&json!({"email": "ada@example.com", "password": "wrong password entirely"}))
        .send()
        .await
        .unwrap();
    let b = login(&app, "ada@example.com", PASSWORD).await;
    let entries = app.store.list_audit(50).await.unwrap();
    let failure = entries.iter().find(|e| e.action == "login.failure").expect("failure audited");
    assert_eq!(failure.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(failure.user_agent.as_deref(), Some("audit-test/1"));
    assert_eq!(failure.request_id.as_deref(), Some("audit-req-1"));
    assert!(failure.actor.as_deref().is_some_and(|a| a.starts_with("usr_")));
    assert!(entries.iter().any(|e| e.action == "login.success"));
    let all = format!("{entries:?}");
    let token = b.cookie.split_once('=').unwrap().1;
    assert!(
        !all.contains(PASSWORD) && !all.contains("wrong password entirely") && !all.contains(token) && !all.contains(&b.csrf)
    );
}

#[tokio::test]
async fn activity_keeps_a_session_alive_past_its_idle_timeout() {
    let app = spawn_app_with(&[("TOLLGATE_SESSION_IDLE_TIMEOUT", "2s")]).await;
    register(&app, "ada@example.com").await;
    let b = login(&app, "ada@example.com", PASSWORD).await;
    for _ in 0..5 {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        assert_eq!(me_with_cookie(&app, &b.cookie).await, 200, "used every 0.8 s, never idle for 2 s");
    }
}

#[tokio::test]
async fn the_host_prefixed_cookie_authenticates_and_a_duplicated_cookie_does_not() {
    let app = spawn_app_with(&[("TOLLGATE_PUBLIC_URL", "https://pay.example.org")]).await;
    register(&app, "ada@example.com").await;
    let b = login(&app, "ada@example.com", PASSWORD).await;
    assert!(b.cookie.starts_with("__Host-tollgate_session="));
    assert_eq!(me_with_cookie(&app, &b.cookie).await, 200);
    assert_eq!(
        me_with_cookie(&app, &format!("{}; {}", b.cookie, "__Host-tollgate_session=planted")).await,
        401,
        "ambiguous: refused"
    );
    assert_eq!(me_with_cookie(&app, &b.cookie.replace("__Host-", "")).await, 401, "over https only the __Host- name counts");
}

#[tokio::test]
async fn every_state_changing_cookie_route_needs_csrf() {
    let app = spawn_app().await;
    let admin = make_admin(&app, "root@example.com").await;
    let user = register(&app, "ada@example.com").await;
    let id = user["id"].as_str().unwrap();
    let r = app
        .client
        .patch(app.url(&format!("/api/v1/admin/users/{id}")))
        .header("cookie", &admin.cookie)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 403).await;
    assert!(!app.store.user_by_id(id).await.unwrap().unwrap().disabled, "nothing changed");

    let ada = login(&app, "ada@example.com", PASSWORD).await;
    let sessions: Value =
        app.client.get(app.url("/api/v1/me/sessions")).header("cookie", &ada.cookie).send().await.unwrap().json().await.unwrap();
    let sid = sessions["data"][0]["id"].as_str().unwrap();
    let r = app.client.delete(app.url(&format!("/api/v1/me/sessions/{sid}"))).header("cookie", &ada.cookie).send().await.unwrap();
    assert_problem(r, 403).await;
    assert_eq!(me_with_cookie(&app, &ada.cookie).await, 200, "nothing changed");
}

#[tokio::test]
async fn registration_is_rate_limited_per_ip_and_emails_compare_case_insensitively() {
    let app = spawn_app_with(&[("TOLLGATE_LOGIN_IP_LIMIT", "3")]).await;
    register(&app, "Émile@Example.com").await;
    let r = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"email": "émile@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 409).await;
    let r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "ÉMILE@EXAMPLE.COM", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "one mailbox, whatever the case, on either engine");
    register(&app, "zoe@example.com").await;
    let r = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"email": "yves@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 429).await;
    assert!(app.store.user_by_email("yves@example.com").await.unwrap().is_none());
}
