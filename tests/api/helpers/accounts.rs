//! Accounts as tests need them: register, log in with a browser (cookie and CSRF token) or as an
//! API client (bearer tokens), make an admin; the password every test account uses.

use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tollgate::domain::account::Role;

use super::app::TestApp;

/// Every test account's password (strong enough for the policy).
pub const PASSWORD: &str = "correct horse battery staple 42";
/// What a password change changes it to.
pub const NEW_PASSWORD: &str = "a different long passphrase 77";

/// A logged-in browser: the session cookie and its CSRF token.
pub struct Browser {
    pub cookie: String,
    pub csrf: String,
}

/// Registers `email` with [`PASSWORD`]; returns the new user.
pub async fn register(app: &TestApp, email: &str) -> Value {
    let r = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD, "name": "Test User"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "register {email}");
    r.json().await.unwrap()
}

/// The session cookie (`name=value`) a response set, if it set one.
pub fn session_cookie_from(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.contains("tollgate_session="))
        .map(|c| c.split(';').next().unwrap().to_owned())
}

/// Logs in with a browser: the session cookie and the CSRF token.
pub async fn login(app: &TestApp, email: &str, password: &str) -> Browser {
    let r =
        app.client.post(app.url("/api/v1/auth/login")).json(&json!({"email": email, "password": password})).send().await.unwrap();
    assert_eq!(r.status(), 200, "login {email}");
    let cookie = session_cookie_from(r.headers()).expect("session cookie");
    let body: Value = r.json().await.unwrap();
    Browser { cookie, csrf: body["csrf_token"].as_str().unwrap().to_owned() }
}

/// Logs in as an API client: the access and refresh tokens.
pub async fn tokens(app: &TestApp, email: &str, password: &str) -> (String, String) {
    let r =
        app.client.post(app.url("/api/v1/auth/token")).json(&json!({"email": email, "password": password})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    (body["access_token"].as_str().unwrap().to_owned(), body["refresh_token"].as_str().unwrap().to_owned())
}

/// The status `GET /api/v1/me` answers with this session cookie.
pub async fn me_with_cookie(app: &TestApp, cookie: &str) -> reqwest::StatusCode {
    app.client.get(app.url("/api/v1/me")).header("cookie", cookie).send().await.unwrap().status()
}

/// The status `GET /api/v1/me` answers with this access token.
pub async fn me_with_bearer(app: &TestApp, token: &str) -> reqwest::StatusCode {
    app.client.get(app.url("/api/v1/me")).bearer_auth(token).send().await.unwrap().status()
}

/// `POST /api/v1/me/password` from the browser `b`, with its CSRF token.
pub async fn change_password(app: &TestApp, b: &Browser, current: &str, new: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/me/password"))
        .header("cookie", &b.cookie)
        .header("x-csrf-token", &b.csrf)
        .json(&json!({"current_password": current, "new_password": new}))
        .send()
        .await
        .unwrap()
}

/// Whether `password` still logs `email` in.
pub async fn password_still(app: &TestApp, email: &str, password: &str) -> bool {
    let r =
        app.client.post(app.url("/api/v1/auth/token")).json(&json!({"email": email, "password": password})).send().await.unwrap();
    r.status() == 200
}

/// Makes the user `id` an admin, straight in the store.
async fn promote(app: &TestApp, id: &str) {
    app.store.update_user_flags(None, id, Some(Role::Admin), None, chrono::Utc::now()).await.unwrap();
}

/// A new admin, logged in with a browser.
pub async fn make_admin(app: &TestApp, email: &str) -> Browser {
    let user = register(app, email).await;
    promote(app, user["id"].as_str().unwrap()).await;
    login(app, email, PASSWORD).await
}

/// A new user with `role`, as an API client: its access token and its id.
pub async fn bearer_for(app: &TestApp, email: &str, role: Role) -> (String, String) {
    let user = register(app, email).await;
    let id = user["id"].as_str().unwrap().to_owned();
    if role == Role::Admin {
        promote(app, &id).await;
    }
    (tokens(app, email, PASSWORD).await.0, id)
}

/// An app whose password queue has one place (and a login limit out of reach), behind a trusted
/// proxy on loopback so that each request may say its own client address.
pub async fn one_place_password_queue() -> TestApp {
    super::app::spawn_app_with(&[
        ("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("TOLLGATE_PASSWORD_QUEUE", "1"),
        ("TOLLGATE_LOGIN_IP_LIMIT", "1000"),
    ])
    .await
}

/// `n` concurrent logins with a wrong password, each from its own address: every answer's status,
/// `Retry-After` and body.
pub async fn wrong_password_burst(app: &TestApp, n: usize) -> Vec<(u16, Option<String>, Value)> {
    let burst: Vec<_> = (0..n)
        .map(|i| {
            let (client, url) = (app.client.clone(), app.url("/api/v1/auth/login"));
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .header("x-forwarded-for", format!("198.51.100.{i}"))
                    .json(&json!({"email": format!("user{i}@example.com"), "password": "wrong password entirely"}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                (status, retry_after, r.json().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for b in burst {
        answers.push(b.await.unwrap());
    }
    answers
}
