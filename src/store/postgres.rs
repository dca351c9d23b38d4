//! The PostgreSQL store: a pool of connections, writers side by side (row locks, not a database
//! lock), and fast refusals while the server cannot be reached.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool, Postgres, Row};

use super::health::Health;
use super::{status_of, AuditEntry, Engine, MigrationStatus, NewAuditEntry, Store, StoreError};
use crate::config::DatabaseConfig;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

super::accounts::impl_account_store!(PgStore);
super::ledger::impl_ledger_store!(PgStore, sqlx::Postgres);
super::payments::impl_payment_store!(PgStore, sqlx::Postgres);

pub struct PgStore {
    pool: PgPool,
    health: Arc<Health>,
    max_connections: u32,
}

impl PgStore {
    /// PostgreSQL writers run side by side, locking rows, not the database.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        None
    }
}

impl PgStore {
    /// `sslmode` and the other libpq parameters in the URL are honoured by sqlx.
    pub async fn connect(url: &str, config: &DatabaseConfig) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("tollgate");
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            // Never hand out a connection with a transaction left open.
            .after_release(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .connect_with(options)
            .await?;
        Ok(PgStore { pool, health: Arc::new(Health::new()), max_connections: config.max_connections })
    }

    /// A connection, unless the database is known to be unreachable (see `store::acquire`).
    pub(crate) async fn conn(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        super::acquire(&self.pool, &self.health, self.max_connections).await
    }

    pub(crate) fn settle<T>(&self, conn: PoolConnection<Postgres>, result: Result<T, StoreError>) -> Result<T, StoreError> {
        super::settle(&self.health, conn, result)
    }
}

#[async_trait]
impl Store for PgStore {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let before = self.migration_status().await?;
        MIGRATOR.run(&self.pool).await?;
        Ok(before.pending)
    }

    async fn migration_status(&self) -> Result<MigrationStatus, StoreError> {
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&mut *self.conn().await?).await?;
        let applied = if exists {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(&mut *self.conn().await?)
                .await?
        } else {
            Vec::new()
        };
        Ok(status_of(&MIGRATOR, applied))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&mut *self.conn().await?).await?;
        Ok(())
    }

    async fn check_writable(&self) -> Result<(), String> {
        let probe = super::transaction!(self, tx => {
            sqlx::query(
                "INSERT INTO health_probe (id, checked_at, filler) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at, filler = excluded.filler",
            )
            .bind(Utc::now())
            .bind(super::probe_filler())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        });
        super::writable_verdict(&self.health, probe)
    }

    async fn append_audit(&self, e: NewAuditEntry) -> Result<i64, StoreError> {
        let id = sqlx::query_scalar(
            "INSERT INTO audit_log (actor, action, resource, ip, user_agent, request_id, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) RETURNING id",
        )
        .bind(e.actor)
        .bind(e.action)
        .bind(e.resource)
        .bind(e.ip)
        .bind(e.user_agent)
        .bind(e.request_id)
        .bind(e.detail.to_string())
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(id)
    }

    async fn list_audit_page(&self, limit: i64, before_id: Option<i64>) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, occurred_at, actor, action, resource, ip, user_agent, request_id, detail::text AS detail
             FROM audit_log WHERE id < COALESCE($1::bigint, 9223372036854775807) ORDER BY id DESC LIMIT $2",
        )
        .bind(before_id)
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.into_iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    occurred_at: r.try_get("occurred_at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    resource: r.try_get("resource")?,
                    ip: r.try_get("ip")?,
                    user_agent: r.try_get("user_agent")?,
                    request_id: r.try_get("request_id")?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
