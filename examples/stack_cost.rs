//! The stack's cost per request, in process (no sockets, one thread): a bare axum hello-world, the
//! API routes without the stack, and the whole stack (`http/gate.rs`), on `/healthz`, `/api/v1/me`
//! and `/api/v1/me/entitlements` with a bearer token. Prints ns per request; asserts nothing.
//!
//!     cargo build --release --example stack_cost && N=100000 target/release/examples/stack_cost

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn call(r: &Router, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> (u16, axum::body::Bytes) {
    let mut b = Request::builder().method(method).uri(path).header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let mut req = b.body(body.map(|s| Body::from(s.to_owned())).unwrap_or_else(Body::empty)).unwrap();
    req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 5555))));
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = HashMap::new();
    for (k, v) in [
        ("DATABASE_URL", format!("sqlite://{}/t.db", dir.path().display())),
        ("TOLLGATE_BIND", "127.0.0.1:0".to_owned()),
        ("STRIPE_WEBHOOK_SECRET", "whsec_bench_0123456789abcdef0123456789abcdef".to_owned()),
        ("TOLLGATE_API_HOURLY_LIMIT", "1000000000".to_owned()),
        ("TOLLGATE_API_DAILY_LIMIT", "1000000000".to_owned()),
    ] {
        env.insert(k.to_owned(), v);
    }
    let config = tollgate::config::Config::load(&tollgate::config::Sources { env, ..Default::default() }).unwrap();
    let app = tollgate::app::App::build(config).await.unwrap();
    let state = app.state().clone();
    let (routes, _) = tollgate::http::api();
    let full = tollgate::http::router(state.clone(), routes.clone(), false);
    let bare: Router = routes.with_state(state.clone());
    let hello: Router = Router::new().route("/", axum::routing::get(|| async { "Hello, world!" }));
    let pw = r#"{"email":"b@example.com","password":"a long bench passphrase 4711"}"#;
    assert_eq!(call(&full, "POST", "/api/v1/auth/register", Some(pw), None).await.0, 201);
    let (s, body) = call(&full, "POST", "/api/v1/auth/token", Some(pw), None).await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let token = v["access_token"].as_str().unwrap().to_owned();
    let n: u32 = std::env::var("N").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    for round in 0..3 {
        for (name, router, path, tok) in [
            ("hello", &hello, "/", None),
            ("bare healthz", &bare, "/healthz", None),
            ("full healthz", &full, "/healthz", None),
            ("bare me", &bare, "/api/v1/me", Some(token.as_str())),
            ("full me", &full, "/api/v1/me", Some(token.as_str())),
            ("bare ent", &bare, "/api/v1/me/entitlements", Some(token.as_str())),
            ("full ent", &full, "/api/v1/me/entitlements", Some(token.as_str())),
        ] {
            let started = Instant::now();
            for _ in 0..n {
                let (s, _) = call(router, "GET", path, None, tok).await;
                debug_assert_eq!(s, 200);
            }
            let ns = started.elapsed().as_nanos() as f64 / n as f64;
            println!("round {round} {name:14} {ns:8.0} ns/req");
        }
    }
}
