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

use super::database::{fresh_postgres_database, PgTestDb};
use super::http::client;

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
    /// Shared by every instance [`spawn_apps`] started on one database.
    _pg: Option<Arc<PgTestDb>>,
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

/// The environment every test app starts from; `overrides` win.
pub async fn test_env(dir: &std::path::Path, overrides: &[(&str, &str)]) -> (HashMap<String, String>, Option<PgTestDb>) {
    let pg = fresh_postgres_database().await;
    let database_url = match &pg {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", dir.join("tollgate.db").display()),
    };
    (env_on(database_url, overrides), pg)
}

/// The environment of a test app on `database_url`; `overrides` win.
fn env_on(database_url: String, overrides: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("TOLLGATE_BIND", "127.0.0.1:0".to_owned()),
        ("DATABASE_URL", database_url),
        ("TOLLGATE_DATABASE_MAX_CONNECTIONS", "5".to_owned()),
        // The tests make many requests from 127.0.0.1; tests/api/ratelimits.rs checks the
        // default budget (50 an hour, 200 a day) with these set to "" (unset).
        ("TOLLGATE_API_HOURLY_LIMIT", "1000000".to_owned()),
        ("TOLLGATE_API_DAILY_LIMIT", "1000000".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let (env, pg) = test_env(dir.path(), overrides).await;
    start(env, dir, pg.map(Arc::new)).await
}

/// `n` instances of the application on ONE fresh PostgreSQL database and ONE Redis (both
/// `TEST_DATABASE_URL` and `TEST_REDIS_URL` must be set; callers skip otherwise), started at once
/// as a rolling deploy would: the same secrets (a random `TOLLGATE_JWT_SECRET` shared by all),
/// `REDIS_URL`, and a `TOLLGATE_REDIS_KEY_PREFIX` of their own so that no other test shares their
/// limiter keys. `overrides` win. Each is a separate `App`: its own pool, limiter, password queue,
/// meters and caches (tests/api/instances.rs says why in-process is faithful).
pub async fn spawn_apps(n: usize, overrides: &[(&str, &str)]) -> Vec<TestApp> {
    spawn_apps_via(n, overrides, |_, url| url.to_owned()).await
}

/// [`spawn_apps`], with instance `i` connecting to `via(i, url)` instead of the fresh database's
/// `url` (a proxy in front of it, say).
pub async fn spawn_apps_via(n: usize, overrides: &[(&str, &str)], via: impl Fn(usize, &str) -> String) -> Vec<TestApp> {
    let redis_url = std::env::var("TEST_REDIS_URL").expect("spawn_apps needs TEST_REDIS_URL");
    let pg = Arc::new(fresh_postgres_database().await.expect("spawn_apps needs TEST_DATABASE_URL"));
    let jwt_secret = tollgate::domain::crypto::random_token();
    let prefix = format!("tollgate-test:{}:", uuid::Uuid::new_v4().simple());
    let mut shared: Vec<(&str, &str)> =
        vec![("TOLLGATE_JWT_SECRET", &jwt_secret), ("REDIS_URL", &redis_url), ("TOLLGATE_REDIS_KEY_PREFIX", &prefix)];
    shared.extend_from_slice(overrides);
    let starts = (0..n).map(|i| {
        let (pg, shared) = (pg.clone(), &shared);
        let url = via(i, &pg.url);
        async move {
            let env = env_on(url, shared);
            start(env, tempfile::tempdir().expect("tempdir"), Some(pg)).await
        }
    });
    futures_util::future::join_all(starts).await
}

/// Builds and starts the application with `env`.
async fn start(env: HashMap<String, String>, dir: tempfile::TempDir, pg: Option<Arc<PgTestDb>>) -> TestApp {
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
        // Which of the request's headers reach a handler marked sensitive (hidden from `Debug`).
        .route(
            "/__test/sensitive",
            get(|headers: axum::http::HeaderMap| async move {
                let marked: std::collections::BTreeMap<String, bool> =
                    headers.iter().map(|(name, value)| (name.as_str().to_owned(), value.is_sensitive())).collect();
                axum::Json(marked)
            }),
        )
}
