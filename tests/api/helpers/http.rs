//! Talking HTTP to a server under test: the client every test uses, and the problem+json check.

use std::time::Duration;

pub fn client() -> reqwest::Client {
    // reqwest is built without a bundled crypto provider: ring, as in the server.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Asserts a problem+json response and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let header_id = response.headers().get("x-request-id").expect("x-request-id").to_str().unwrap().to_owned();
    let body: serde_json::Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status);
    assert_eq!(body["request_id"], header_id.as_str(), "body and header carry the same request id");
    assert!(body["type"].as_str().is_some_and(|t| t.starts_with("urn:tollgate:problem:")));
    assert!(body["title"].is_string());
    body
}
