use std::time::Duration;

use crate::helpers::{spawn_app, spawn_app_with};

async fn client_seen(app: &crate::helpers::TestApp, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut req = app.client.get(app.url("/__test/client"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    // 127.0.0.1 is the peer here; it is not a trusted proxy.
    let app = spawn_app_with(&[("TOLLGATE_TRUSTED_PROXIES", "10.0.0.0/8")]).await;
    let seen = client_seen(&app, &[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-proto", "https")]).await;
    assert_eq!(seen["ip"], "127.0.0.1");
    assert_eq!(seen["https"], false);

    let app = spawn_app().await;
    let seen = client_seen(&app, &[("x-forwarded-for", "6.6.6.6")]).await;
    assert_eq!(seen["ip"], "127.0.0.1", "no trusted proxies: forwarding headers are never believed");
}

#[tokio::test]
async fn a_trusted_proxy_gives_the_rightmost_untrusted_hop() {
    let app = spawn_app_with(&[("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32, 10.0.0.0/8")]).await;
    let seen = client_seen(&app, &[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.2.3"), ("x-forwarded-proto", "https")]).await;
    assert_eq!(seen["ip"], "198.51.100.7", "the client-written left-most hop is not believed");
    assert_eq!(seen["https"], true);
    let seen = client_seen(&app, &[]).await;
    assert_eq!(seen["ip"], "127.0.0.1", "no header: the proxy itself");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_refuses_new_ones() {
    let app = spawn_app_with(&[("TOLLGATE_SHUTDOWN_TIMEOUT", "10s")]).await;
    let slow = {
        let client = app.client.clone();
        let url = app.url("/__test/slow?ms=800");
        tokio::spawn(async move { client.get(url).send().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.shutdown.shutdown();

    let response = slow.await.unwrap().expect("the in-flight request completes");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "done");

    let stopped = tokio::time::timeout(Duration::from_secs(5), app.server).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "the server stops cleanly: {stopped:?}");
    let fresh = crate::helpers::client().get(format!("http://{}/healthz", app.addr)).send().await;
    assert!(fresh.is_err(), "no new connections after shutdown");
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_timeout() {
    let app = spawn_app_with(&[("TOLLGATE_SHUTDOWN_TIMEOUT", "300ms"), ("TOLLGATE_REQUEST_TIMEOUT", "60s")]).await;
    let slow = {
        let client = app.client.clone();
        let url = app.url("/__test/slow?ms=30000");
        tokio::spawn(async move { client.get(url).send().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.shutdown.shutdown();
    let stopped = tokio::time::timeout(Duration::from_secs(5), app.server).await;
    assert!(stopped.is_ok(), "a request that would take 30 s does not hold the shutdown");
    assert!(slow.await.unwrap().is_err(), "the over-long request was cut off");
}
