//! API keys for the merchant's servers, made through the admin API as an operator would.

use serde_json::{json, Value};

use super::app::TestApp;

/// A new API key with `scopes`, made by the admin whose access token is `admin`: the whole
/// creation answer (`id`, `key`, `prefix`, …).
pub async fn create_api_key(app: &TestApp, admin: &str, scopes: &[&str]) -> Value {
    let response = app
        .client
        .post(app.url("/api/v1/admin/api-keys"))
        .bearer_auth(admin)
        .json(&json!({"name": "merchant backend", "scopes": scopes}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "creating an API key");
    response.json().await.unwrap()
}

/// Just the secret of a new key with `scopes`.
pub async fn api_key(app: &TestApp, admin: &str, scopes: &[&str]) -> String {
    create_api_key(app, admin, scopes).await["key"].as_str().unwrap().to_owned()
}
