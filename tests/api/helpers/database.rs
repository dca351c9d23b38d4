//! The shared PostgreSQL server: a fresh database per test, and the lock that keeps test databases
//! and a full disk apart.

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

/// What `idempotency_keys` holds, read straight from `app`'s database: (stored key, sealed answer).
pub async fn idempotency_rows(app: &super::app::TestApp) -> Vec<(String, Vec<u8>)> {
    use sqlx::Connection;
    const SQL: &str = "SELECT key, response FROM idempotency_keys";
    match app.store.engine() {
        tollgate::store::Engine::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&app.database_url).await.unwrap();
            sqlx::query_as(SQL).fetch_all(&mut c).await.unwrap()
        }
        tollgate::store::Engine::Postgres => {
            let mut c = sqlx::PgConnection::connect(&app.database_url).await.unwrap();
            sqlx::query_as(SQL).fetch_all(&mut c).await.unwrap()
        }
    }
}

/// Moves grant `grant_id` to the period `starts_at`..`expires_at` in `app`'s database, as if it
/// had been bought that long ago.
pub async fn set_grant_period(
    app: &super::app::TestApp,
    grant_id: &str,
    starts_at: chrono::DateTime<chrono::Utc>,
    expires_at: chrono::DateTime<chrono::Utc>,
) {
    use sqlx::Connection;
    const SQL: &str = "UPDATE grants SET starts_at = $2, expires_at = $3 WHERE id = $1";
    let done = match app.store.engine() {
        tollgate::store::Engine::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&app.database_url).await.unwrap();
            sqlx::query(SQL).bind(grant_id).bind(starts_at).bind(expires_at).execute(&mut c).await.unwrap()
        }
        .rows_affected(),
        tollgate::store::Engine::Postgres => {
            let mut c = sqlx::PgConnection::connect(&app.database_url).await.unwrap();
            sqlx::query(SQL).bind(grant_id).bind(starts_at).bind(expires_at).execute(&mut c).await.unwrap()
        }
        .rows_affected(),
    };
    assert_eq!(done, 1, "grant {grant_id} moved");
}

/// Every row `sql` (a query without parameters) reads from `app`'s database, on either engine: for
/// assertions on what was written (one column reads as a one-element tuple).
pub async fn rows<T>(app: &super::app::TestApp, sql: &str) -> Vec<T>
where
    T: Send + Unpin + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    use sqlx::Connection;
    match app.store.engine() {
        tollgate::store::Engine::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&app.database_url).await.unwrap();
            sqlx::query_as(sql).fetch_all(&mut c).await.unwrap()
        }
        tollgate::store::Engine::Postgres => {
            let mut c = sqlx::PgConnection::connect(&app.database_url).await.unwrap();
            sqlx::query_as(sql).fetch_all(&mut c).await.unwrap()
        }
    }
}

/// Runs `sql` (one or more statements) on the database at `database_url`, from outside the
/// application (a trigger a test installs, say), on a connection of its own.
pub async fn execute(database_url: &str, sql: &str) {
    use sqlx::Connection;
    if database_url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
    }
}
