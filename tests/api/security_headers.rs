use reqwest::header::HeaderMap;

use crate::helpers::{spawn_app, spawn_app_with};

fn assert_security_headers(h: &HeaderMap, what: &str) {
    let expect = [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
    ];
    for (name, value) in expect {
        assert_eq!(h.get(name).and_then(|v| v.to_str().ok()), Some(value), "{name} on {what}");
    }
    let pp = h.get("permissions-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
    for feature in ["camera=()", "geolocation=()", "microphone=()", "payment=()", "usb=()"] {
        assert!(pp.contains(feature), "permissions-policy denies {feature} on {what}");
    }
    assert!(h.get("server").is_none(), "no Server banner on {what}");
    assert!(h.get("x-request-id").is_some(), "x-request-id on {what}");
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = spawn_app_with(&[("TOLLGATE_REQUEST_TIMEOUT", "200ms"), ("TOLLGATE_BODY_LIMIT", "1024")]).await;
    let c = &app.client;
    let responses = vec![
        ("200", c.get(app.url("/healthz")).send().await.unwrap()),
        ("404", c.get(app.url("/nowhere")).send().await.unwrap()),
        ("405", c.delete(app.url("/healthz")).send().await.unwrap()),
        ("408", c.get(app.url("/__test/slow?ms=2000")).send().await.unwrap()),
        (
            "413",
            c.post(app.url("/__test/echo"))
                .header("content-type", "application/json")
                .body(vec![b' '; 4096])
                .send()
                .await
                .unwrap(),
        ),
        ("415", c.post(app.url("/__test/echo")).body("x").send().await.unwrap()),
        ("500", c.get(app.url("/__test/panic")).send().await.unwrap()),
    ];
    for (what, r) in responses {
        assert_eq!(r.status().as_str(), what);
        let h = r.headers();
        assert_security_headers(h, what);
        assert_eq!(h.get("content-security-policy").unwrap(), "default-src 'none'; frame-ancestors 'none'", "{what}");
        assert_eq!(h.get("cache-control").unwrap(), "no-store", "{what}");
        assert!(h.get("strict-transport-security").is_none(), "no HSTS over plain http ({what})");
    }
}

#[tokio::test]
async fn hsts_only_behind_a_trusted_https_proxy() {
    let app = spawn_app_with(&[("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let r = app.client.get(app.url("/healthz")).header("x-forwarded-proto", "https").send().await.unwrap();
    assert_eq!(r.headers().get("strict-transport-security").unwrap(), "max-age=63072000; includeSubDomains");
    let r = app.client.get(app.url("/healthz")).header("x-forwarded-proto", "http").send().await.unwrap();
    assert!(r.headers().get("strict-transport-security").is_none());

    // The same header from a peer that is not a trusted proxy changes nothing.
    let untrusted = spawn_app_with(&[("TOLLGATE_TRUSTED_PROXIES", "10.0.0.0/8")]).await;
    let r = untrusted.client.get(untrusted.url("/healthz")).header("x-forwarded-proto", "https").send().await.unwrap();
    assert!(r.headers().get("strict-transport-security").is_none());
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_and_replaced_otherwise() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/healthz")).header("x-request-id", "client-id_1.2:3").send().await.unwrap();
    assert_eq!(r.headers().get("x-request-id").unwrap(), "client-id_1.2:3");

    for insane in ["has spaces", "<script>", &"x".repeat(200)] {
        let r = app.client.get(app.url("/healthz")).header("x-request-id", insane).send().await.unwrap();
        let id = r.headers().get("x-request-id").unwrap().to_str().unwrap();
        assert_ne!(id, insane);
        assert!(uuid::Uuid::parse_str(id).is_ok(), "generated ids are UUIDs: {id}");
    }
    let a = app.get("/healthz").await.headers().get("x-request-id").unwrap().clone();
    let b = app.get("/healthz").await.headers().get("x-request-id").unwrap().clone();
    assert_ne!(a, b, "each request gets its own id");
}

#[tokio::test]
async fn docs_page_has_a_csp_allowing_exactly_its_own_assets() {
    let app = spawn_app().await;
    let r = app.get("/docs").await;
    assert_eq!(r.status(), 200);
    assert_security_headers(r.headers(), "/docs");
    let csp = r.headers().get("content-security-policy").unwrap().to_str().unwrap().to_owned();
    assert!(r.headers().get("content-type").unwrap().to_str().unwrap().starts_with("text/html"));
    let html = r.text().await.unwrap();
    for directive in
        ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]
    {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("http"), "no inline code and no other host: {csp}");
    assert!(
        !html.contains("<script>") && !html.contains("<style") && !html.contains(" style="),
        "no inline code the CSP would block"
    );
    assert!(!html.contains("//cdn") && !html.contains("https://"), "no CDN");

    for (asset, kind) in [("/docs/docs.js", "text/javascript"), ("/docs/docs.css", "text/css")] {
        assert!(html.contains(asset), "the page loads {asset}");
        let r = app.get(asset).await;
        assert_eq!(r.status(), 200, "{asset} is served from the binary");
        assert!(r.headers().get("content-type").unwrap().to_str().unwrap().starts_with(kind));
        assert_eq!(r.headers().get("x-content-type-options").unwrap(), "nosniff");
        assert!(!r.text().await.unwrap().contains("https://"), "{asset} fetches nothing from elsewhere");
    }
}

/// Credentials in request headers are marked sensitive before any handler (or `Debug` of the
/// request, in a log or a panic) sees them: `Authorization`, `Cookie`, `Stripe-Signature`,
/// `X-CSRF-Token`, each value of a repeated one; other headers are not.
#[tokio::test]
async fn credential_headers_reach_handlers_marked_sensitive() {
    let app = spawn_app().await;
    let marked: std::collections::BTreeMap<String, bool> = app
        .client
        .get(app.url("/__test/sensitive"))
        .header("authorization", "Bearer not-a-real-token")
        .header("cookie", "tollgate_session=abc")
        .header("stripe-signature", "t=1,v1=00")
        .header("x-csrf-token", "csrf")
        .header("x-request-id", "probe-1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for name in ["authorization", "cookie", "stripe-signature", "x-csrf-token"] {
        assert_eq!(marked.get(name), Some(&true), "{name}: {marked:?}");
    }
    assert_eq!(marked.get("x-request-id"), Some(&false), "{marked:?}");
}
