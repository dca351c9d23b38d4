use crate::helpers::spawn_app_with;

const LISTED: &str = "https://app.example.com";

fn cors_headers(h: &reqwest::header::HeaderMap) -> Vec<String> {
    h.keys().map(|k| k.as_str().to_owned()).filter(|k| k.starts_with("access-control-")).collect()
}

#[tokio::test]
async fn a_listed_origin_gets_credentials() {
    let app = spawn_app_with(&[("TOLLGATE_CORS_ORIGINS", "https://app.example.com, https://admin.example.com")]).await;
    let r = app.client.get(app.url("/healthz")).header("origin", LISTED).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h.get("access-control-allow-origin").unwrap(), LISTED);
    assert_eq!(h.get("access-control-allow-credentials").unwrap(), "true");
    assert!(h.get("access-control-expose-headers").unwrap().to_str().unwrap().contains("x-request-id"));
    assert!(h.get_all("vary").iter().any(|v| v == "Origin"));
}

#[tokio::test]
async fn an_unlisted_origin_gets_no_cors_headers() {
    let app = spawn_app_with(&[("TOLLGATE_CORS_ORIGINS", LISTED)]).await;
    for origin in ["https://evil.example.com", "https://app.example.com.evil.example", "http://app.example.com", "null"] {
        let r = app.client.get(app.url("/healthz")).header("origin", origin).send().await.unwrap();
        assert_eq!(r.status(), 200, "the request itself is served; the browser withholds it");
        assert!(cors_headers(r.headers()).is_empty(), "{origin}: {:?}", cors_headers(r.headers()));

        let preflight = app
            .client
            .request(reqwest::Method::OPTIONS, app.url("/healthz"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert!(cors_headers(preflight.headers()).is_empty(), "preflight from {origin}: {:?}", cors_headers(preflight.headers()));
    }
    let r = app.get("/healthz").await;
    assert!(cors_headers(r.headers()).is_empty(), "no Origin, no CORS headers");
}

#[tokio::test]
async fn a_preflight_from_a_listed_origin_is_answered() {
    let app = spawn_app_with(&[("TOLLGATE_CORS_ORIGINS", LISTED)]).await;
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/anything"))
        .header("origin", LISTED)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, x-csrf-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h.get("access-control-allow-origin").unwrap(), LISTED);
    assert_eq!(h.get("access-control-allow-credentials").unwrap(), "true");
    assert!(h.get("access-control-allow-methods").unwrap().to_str().unwrap().contains("POST"));
    let allowed_headers = h.get("access-control-allow-headers").unwrap().to_str().unwrap();
    assert!(allowed_headers.contains("x-csrf-token") && allowed_headers.contains("content-type"));
    assert!(h.get("access-control-max-age").is_some());
    assert_eq!(h.get("x-frame-options").unwrap(), "DENY", "preflights get the security headers too");
}

#[tokio::test]
async fn a_development_wildcard_allows_any_origin_without_credentials() {
    let app = spawn_app_with(&[("TOLLGATE_CORS_ORIGINS", "*")]).await;
    let r = app.client.get(app.url("/healthz")).header("origin", "https://anywhere.example").send().await.unwrap();
    assert_eq!(r.headers().get("access-control-allow-origin").unwrap(), "*");
    assert!(r.headers().get("access-control-allow-credentials").is_none(), "never credentials with *");
}

#[tokio::test]
async fn no_configured_origins_means_no_cors_at_all() {
    let app = spawn_app_with(&[]).await;
    let r = app.client.get(app.url("/healthz")).header("origin", LISTED).send().await.unwrap();
    assert!(cors_headers(r.headers()).is_empty());
}
