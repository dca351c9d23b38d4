//! `spawn_app()`: the real application on port 0 with its own database (a fresh SQLite file, or a
//! fresh PostgreSQL database when `TEST_DATABASE_URL` is set), plus a few probe routes mounted
//! behind the same middleware stack to exercise it (panics, slow handlers, large bodies, JSON bodies
//! that store).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tollgate::app::ShutdownHandle;
use tollgate::config::{Config, Sources};
use tollgate::domain::FieldError;
use tollgate::http::error::ApiResult;
use tollgate::http::extract::{ClientInfo, Json, RequestId};
use tollgate::store::{NewAuditEntry, Store};
use tollgate::{App, AppState};

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub store: Arc<dyn Store>,
    /// The running application's state (its services), for what a test cannot reach over HTTP.
    pub state: AppState,
    pub database_url: String,
    pub shutdown: ShutdownHandle,
    /// How many times the storing probe handler ran.
    pub echo_calls: Arc<AtomicUsize>,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
    _pg: Option<PgTestDb>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request failed")
    }

    pub async fn audit_count(&self) -> usize {
        self.store.list_audit(1000).await.expect("list audit").len()
    }

    pub fn echo_calls(&self) -> usize {
        self.echo_calls.load(Ordering::SeqCst)
    }
}

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

/// True when running under CI, where a missing service is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// Says that a test was skipped and why, on the real stderr (libtest captures `eprintln!` of
/// passing tests, and a skip that nobody sees is a silent pass).
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Using the shared PostgreSQL server, versus filling a tablespace's disk. While a test keeps that
/// disk full, the server cannot write out the full database's dirty pages, and any backend that
/// needs buffers (`CREATE DATABASE` needs many) may have to, failing with "No space left on device"
/// in whichever test it serves. The filling test holds this exclusively; every test database holds
/// it shared for as long as it is used.
pub fn postgres_disk_lock() -> &'static std::sync::Arc<tokio::sync::RwLock<()>> {
    static LOCK: std::sync::OnceLock<std::sync::Arc<tokio::sync::RwLock<()>>> = std::sync::OnceLock::new();
    LOCK.get_or_init(Default::default)
}

/// A test's own PostgreSQL database, with its share of [`postgres_disk_lock`].
pub struct PgTestDb {
    pub url: String,
    _no_full_disk: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// A fresh PostgreSQL database on the `TEST_DATABASE_URL` server, or None when that is unset.
pub async fn fresh_postgres_database() -> Option<PgTestDb> {
    let admin_url = std::env::var("TEST_DATABASE_URL").ok().filter(|u| !u.is_empty())?;
    let no_full_disk = postgres_disk_lock().clone().read_owned().await;
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("TEST_DATABASE_URL is set but PostgreSQL is unreachable: {e}"));
    let name = format!("tollgate_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    conn.close().await.ok();
    let mut url = url::Url::parse(&admin_url).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&name);
    Some(PgTestDb { url: url.to_string(), _no_full_disk: no_full_disk })
}

/// The environment every test app starts from; `overrides` win.
pub async fn test_env(dir: &std::path::Path, overrides: &[(&str, &str)]) -> (HashMap<String, String>, Option<PgTestDb>) {
    let pg = fresh_postgres_database().await;
    let database_url = match &pg {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", dir.join("tollgate.db").display()),
    };
    let mut env: HashMap<String, String> = [
        ("TOLLGATE_BIND", "127.0.0.1:0".to_owned()),
        ("DATABASE_URL", database_url),
        ("TOLLGATE_DATABASE_MAX_CONNECTIONS", "5".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    (env, pg)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let (env, pg) = test_env(dir.path(), overrides).await;
    let database_url = env["DATABASE_URL"].clone();
    let config = Config::load(&Sources { env, ..Default::default() }).expect("test configuration is valid");
    let echo_calls = Arc::new(AtomicUsize::new(0));
    let app = App::build_with(config, probe_routes(echo_calls.clone())).await.expect("app builds");
    let addr = app.local_addr();
    let scheme = if app.state().config.tls.is_some() { "https" } else { "http" };
    let store = app.state().store.clone();
    let state = app.state().clone();
    let shutdown = app.shutdown_handle();
    let server = tokio::spawn(app.run_until(std::future::pending()));
    TestApp {
        addr,
        base: format!("{scheme}://localhost:{}", addr.port()),
        client: client(),
        store,
        state,
        database_url,
        shutdown,
        echo_calls,
        server,
        _dir: dir,
        _pg: pg,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoIn {
    pub name: String,
    pub note: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SlowQuery {
    ms: u64,
}

#[derive(Debug, Deserialize)]
struct BigQuery {
    bytes: usize,
}

/// A response body of `bytes` bytes, streamed in 64 KiB chunks.
fn big_body(bytes: usize) -> axum::body::Body {
    const CHUNK: usize = 64 * 1024;
    let chunks = (0..bytes.div_ceil(CHUNK))
        .map(move |i| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; CHUNK.min(bytes - i * CHUNK)])));
    axum::body::Body::from_stream(futures_util::stream::iter(chunks))
}

/// Probe routes: they exist only in tests and go through exactly the production stack.
fn probe_routes(echo_calls: Arc<AtomicUsize>) -> Router<AppState> {
    Router::new()
        .route(
            "/__test/echo",
            post(move |State(state): State<AppState>, RequestId(rid): RequestId, Json(input): Json<EchoIn>| {
                let echo_calls = echo_calls.clone();
                async move {
                    echo_calls.fetch_add(1, Ordering::SeqCst);
                    let mut errors = Vec::new();
                    if input.name.trim().is_empty() || input.name.chars().count() > 20 {
                        errors.push(FieldError::new("name", "must be 1 to 20 characters"));
                    }
                    if input.note.as_deref().is_some_and(|n| n.len() > 50) {
                        errors.push(FieldError::new("note", "must be at most 50 bytes"));
                    }
                    if !errors.is_empty() {
                        return ApiResult::Err(errors.into());
                    }
                    let entry = NewAuditEntry {
                        action: "test.echo".to_owned(),
                        request_id: Some(rid),
                        detail: serde_json::json!({ "name": input.name }),
                        ..Default::default()
                    };
                    state.store.append_audit(entry).await.map_err(anyhow::Error::from)?;
                    Ok((StatusCode::CREATED, axum::Json(serde_json::json!({ "stored": true }))))
                }
            }),
        )
        .route("/__test/panic", get(|| async { panic!("probe panic") as &'static str }))
        .route(
            "/__test/slow",
            get(|Query(q): Query<SlowQuery>| async move {
                tokio::time::sleep(Duration::from_millis(q.ms)).await;
                "done"
            }),
        )
        .route("/__test/client", get(|client: ClientInfo| async move { axum::Json(client) }))
        .route("/__test/big", get(|Query(q): Query<BigQuery>| async move { big_body(q.bytes) }))
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
