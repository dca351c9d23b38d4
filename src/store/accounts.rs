//! The accounts repository, written once for both engines: the SQL below runs unchanged on SQLite
//! and PostgreSQL (`$N` parameters in order, `RETURNING`, portable types), and the macro stamps
//! it onto each store's pool.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::account::{Role, User};

/// No `Debug`: it holds the password hash.
#[derive(Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub password_hash: String,
    pub role: String,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub password_changed_at: DateTime<Utc>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> User {
        User {
            id: r.id,
            email: r.email,
            name: r.name,
            password_hash: r.password_hash,
            // The CHECK constraint allows nothing else; fail closed if it ever did.
            role: Role::parse(&r.role).unwrap_or(Role::User),
            disabled: r.disabled,
            created_at: r.created_at,
            password_changed_at: r.password_changed_at,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub token_hash: String,
    pub user_id: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpendOutcome {
    /// Unused until now, and now spent.
    Fresh {
        family_id: String,
        user_id: String,
        expires_at: DateTime<Utc>,
    },
    /// Spent before: someone is replaying it.
    Reused {
        family_id: String,
        user_id: String,
    },
    Unknown,
}

#[async_trait]
pub trait AccountStore: Send + Sync {
    /// `StoreError::Conflict` when the email is taken.
    async fn insert_user(&self, user: &User) -> Result<(), StoreError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError>;
    /// A new hash; `changed` marks a password change (not a parameter upgrade).
    async fn set_password_hash(&self, id: &str, hash: &str, changed: bool, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Replaces `old` by `new` (same password, today's parameters) only if `old` is still stored.
    async fn upgrade_password_hash(&self, id: &str, old: &str, new: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Newest first; `starting_after` is the last id of the previous page.
    async fn list_users(&self, limit: i64, starting_after: Option<&str>) -> Result<Vec<User>, StoreError>;
    async fn update_user_flags(
        &self,
        id: &str,
        role: Option<Role>,
        disabled: Option<bool>,
        now: DateTime<Utc>,
    ) -> Result<Option<User>, StoreError>;

    async fn insert_session(&self, session: &SessionRow) -> Result<(), StoreError>;
    async fn session_by_token_hash(&self, token_hash: &str) -> Result<Option<SessionRow>, StoreError>;
    async fn touch_session(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError>;
    async fn delete_session(&self, id: &str) -> Result<bool, StoreError>;
    async fn delete_user_session(&self, user_id: &str, id: &str) -> Result<bool, StoreError>;
    async fn delete_sessions_of(&self, user_id: &str, except_id: Option<&str>) -> Result<u64, StoreError>;
    async fn list_sessions_of(&self, user_id: &str) -> Result<Vec<SessionRow>, StoreError>;

    async fn insert_family(&self, id: &str, user_id: &str, now: DateTime<Utc>) -> Result<(), StoreError>;
    async fn insert_refresh(
        &self,
        token_hash: &str,
        family_id: &str,
        user_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Marks the token used, atomically: of two concurrent presentations one is `Fresh`, the other `Reused`.
    async fn spend_refresh(&self, token_hash: &str, now: DateTime<Utc>) -> Result<SpendOutcome, StoreError>;
    async fn revoke_family(&self, id: &str, reason: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
    async fn revoke_families_of(
        &self,
        user_id: &str,
        except_id: Option<&str>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
    async fn family_active(&self, id: &str) -> Result<bool, StoreError>;
}

pub(crate) fn conflict(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Database(e),
    }
}

const USER_COLUMNS: &str = "id, email, name, password_hash, role, disabled, created_at, password_changed_at";
const SESSION_COLUMNS: &str = "id, token_hash, user_id, created_at, last_seen_at, expires_at, ip, user_agent";

pub(crate) fn user_query(tail: &str) -> String {
    format!("SELECT {USER_COLUMNS} FROM users {tail}")
}

pub(crate) fn session_query(tail: &str) -> String {
    format!("SELECT {SESSION_COLUMNS} FROM sessions {tail}")
}

macro_rules! impl_account_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::accounts::AccountStore for $store {
            async fn insert_user(&self, u: &$crate::domain::account::User) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO users (id, email, email_key, name, password_hash, role, disabled, created_at, updated_at, password_changed_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&u.id)
                .bind(&u.email)
                .bind($crate::domain::account::email_key(&u.email))
                .bind(&u.name)
                .bind(&u.password_hash)
                .bind(u.role.as_str())
                .bind(u.disabled)
                .bind(u.created_at)
                .bind(u.created_at)
                .bind(u.password_changed_at)
                .execute(&mut *self.conn().await?)
                .await
                .map_err($crate::store::accounts::conflict)?;
                Ok(())
            }

            async fn user_by_email(&self, email: &str) -> Result<Option<$crate::domain::account::User>, $crate::store::StoreError> {
                let row: Option<$crate::store::accounts::UserRow> =
                    sqlx::query_as(&$crate::store::accounts::user_query("WHERE email_key = $1")).bind($crate::domain::account::email_key(email)).fetch_optional(&mut *self.conn().await?).await?;
                Ok(row.map(Into::into))
            }

            async fn user_by_id(&self, id: &str) -> Result<Option<$crate::domain::account::User>, $crate::store::StoreError> {
                let row: Option<$crate::store::accounts::UserRow> =
                    sqlx::query_as(&$crate::store::accounts::user_query("WHERE id = $1")).bind(id).fetch_optional(&mut *self.conn().await?).await?;
                Ok(row.map(Into::into))
            }

            async fn set_password_hash(&self, id: &str, hash: &str, changed: bool, now: chrono::DateTime<chrono::Utc>) -> Result<(), $crate::store::StoreError> {
                let sql = if changed {
                    "UPDATE users SET password_hash = $1, updated_at = $2, password_changed_at = $2 WHERE id = $3"
                } else {
                    "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3"
                };
                sqlx::query(sql).bind(hash).bind(now).bind(id).execute(&mut *self.conn().await?).await?;
                Ok(())
            }

            async fn upgrade_password_hash(&self, id: &str, old: &str, new: &str, now: chrono::DateTime<chrono::Utc>) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3 AND password_hash = $4")
                    .bind(new)
                    .bind(now)
                    .bind(id)
                    .bind(old)
                    .execute(&mut *self.conn().await?)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn list_users(&self, limit: i64, starting_after: Option<&str>) -> Result<Vec<$crate::domain::account::User>, $crate::store::StoreError> {
                let rows: Vec<$crate::store::accounts::UserRow> = match starting_after {
                    Some(after) => sqlx::query_as(&$crate::store::accounts::user_query("WHERE id < $1 ORDER BY id DESC LIMIT $2"))
                        .bind(after)
                        .bind(limit)
                        .fetch_all(&mut *self.conn().await?)
                        .await?,
                    None => sqlx::query_as(&$crate::store::accounts::user_query("ORDER BY id DESC LIMIT $1")).bind(limit).fetch_all(&mut *self.conn().await?).await?,
                };
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn update_user_flags(
                &self,
                id: &str,
                role: Option<$crate::domain::account::Role>,
                disabled: Option<bool>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<$crate::domain::account::User>, $crate::store::StoreError> {
                let row: Option<$crate::store::accounts::UserRow> = sqlx::query_as(
                    "UPDATE users SET role = COALESCE($1, role), disabled = COALESCE($2, disabled), updated_at = $3 WHERE id = $4
                     RETURNING id, email, name, password_hash, role, disabled, created_at, password_changed_at",
                )
                .bind(role.map(|r| r.as_str()))
                .bind(disabled)
                .bind(now)
                .bind(id)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
                Ok(row.map(Into::into))
            }

            async fn insert_session(&self, s: &$crate::store::accounts::SessionRow) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO sessions (id, token_hash, user_id, created_at, last_seen_at, expires_at, ip, user_agent)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&s.id)
                .bind(&s.token_hash)
                .bind(&s.user_id)
                .bind(s.created_at)
                .bind(s.last_seen_at)
                .bind(s.expires_at)
                .bind(&s.ip)
                .bind(&s.user_agent)
                .execute(&mut *self.conn().await?)
                .await?;
                Ok(())
            }

            async fn session_by_token_hash(&self, token_hash: &str) -> Result<Option<$crate::store::accounts::SessionRow>, $crate::store::StoreError> {
                Ok(sqlx::query_as(&$crate::store::accounts::session_query("WHERE token_hash = $1")).bind(token_hash).fetch_optional(&mut *self.conn().await?).await?)
            }

            async fn touch_session(&self, id: &str, now: chrono::DateTime<chrono::Utc>) -> Result<(), $crate::store::StoreError> {
                sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2").bind(now).bind(id).execute(&mut *self.conn().await?).await?;
                Ok(())
            }

            async fn delete_session(&self, id: &str) -> Result<bool, $crate::store::StoreError> {
                Ok(sqlx::query("DELETE FROM sessions WHERE id = $1").bind(id).execute(&mut *self.conn().await?).await?.rows_affected() > 0)
            }

            async fn delete_user_session(&self, user_id: &str, id: &str) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id = $2").bind(user_id).bind(id).execute(&mut *self.conn().await?).await?;
                Ok(done.rows_affected() > 0)
            }

            async fn delete_sessions_of(&self, user_id: &str, except_id: Option<&str>) -> Result<u64, $crate::store::StoreError> {
                let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> COALESCE($2, '')")
                    .bind(user_id)
                    .bind(except_id)
                    .execute(&mut *self.conn().await?)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn list_sessions_of(&self, user_id: &str) -> Result<Vec<$crate::store::accounts::SessionRow>, $crate::store::StoreError> {
                Ok(sqlx::query_as(&$crate::store::accounts::session_query("WHERE user_id = $1 ORDER BY created_at DESC, id DESC"))
                    .bind(user_id)
                    .fetch_all(&mut *self.conn().await?)
                    .await?)
            }

            async fn insert_family(&self, id: &str, user_id: &str, now: chrono::DateTime<chrono::Utc>) -> Result<(), $crate::store::StoreError> {
                sqlx::query("INSERT INTO token_families (id, user_id, created_at) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(user_id)
                    .bind(now)
                    .execute(&mut *self.conn().await?)
                    .await?;
                Ok(())
            }

            async fn insert_refresh(
                &self,
                token_hash: &str,
                family_id: &str,
                user_id: &str,
                now: chrono::DateTime<chrono::Utc>,
                expires_at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query("INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(token_hash)
                    .bind(family_id)
                    .bind(user_id)
                    .bind(now)
                    .bind(expires_at)
                    .execute(&mut *self.conn().await?)
                    .await?;
                Ok(())
            }

            async fn spend_refresh(&self, token_hash: &str, now: chrono::DateTime<chrono::Utc>) -> Result<$crate::store::accounts::SpendOutcome, $crate::store::StoreError> {
                use sqlx::Row;
                let spent = sqlx::query(
                    "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL RETURNING family_id, user_id, expires_at",
                )
                .bind(now)
                .bind(token_hash)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
                if let Some(r) = spent {
                    return Ok($crate::store::accounts::SpendOutcome::Fresh {
                        family_id: r.try_get("family_id")?,
                        user_id: r.try_get("user_id")?,
                        expires_at: r.try_get("expires_at")?,
                    });
                }
                let known = sqlx::query("SELECT family_id, user_id FROM refresh_tokens WHERE token_hash = $1").bind(token_hash).fetch_optional(&mut *self.conn().await?).await?;
                Ok(match known {
                    Some(r) => $crate::store::accounts::SpendOutcome::Reused { family_id: r.try_get("family_id")?, user_id: r.try_get("user_id")? },
                    None => $crate::store::accounts::SpendOutcome::Unknown,
                })
            }

            async fn revoke_family(&self, id: &str, reason: &str, now: chrono::DateTime<chrono::Utc>) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query("UPDATE token_families SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL")
                    .bind(now)
                    .bind(reason)
                    .bind(id)
                    .execute(&mut *self.conn().await?)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn revoke_families_of(
                &self,
                user_id: &str,
                except_id: Option<&str>,
                reason: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::store::StoreError> {
                let done = sqlx::query(
                    "UPDATE token_families SET revoked_at = $1, revoked_reason = $2
                     WHERE user_id = $3 AND id <> COALESCE($4, '') AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(reason)
                .bind(user_id)
                .bind(except_id)
                .execute(&mut *self.conn().await?)
                .await?;
                Ok(done.rows_affected())
            }

            async fn family_active(&self, id: &str) -> Result<bool, $crate::store::StoreError> {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM token_families WHERE id = $1 AND revoked_at IS NULL")
                    .bind(id)
                    .fetch_one(&mut *self.conn().await?)
                    .await?;
                Ok(n > 0)
            }
        }
    };
}

pub(crate) use impl_account_store;
