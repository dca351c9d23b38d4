//! The accounts repository, written once for both engines: the SQL below runs unchanged on SQLite
//! and PostgreSQL (`$N` parameters in order, `RETURNING`, portable types), and the macro stamps
//! it onto each store's pool.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::error::StoreError;
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
    pub credential_epoch: i64,
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
            credential_epoch: r.credential_epoch,
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
    /// The user's credential epoch its login verified; the session works only while it is current.
    pub credential_epoch: i64,
}

/// A refresh-token family as the access and refresh checks need it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FamilyRow {
    pub user_id: String,
    pub credential_epoch: i64,
    pub revoked: bool,
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
    /// Spent before, at `used_at`; `successor` is the hash of the token issued for it and its
    /// sealed value, when they were recorded.
    Reused {
        family_id: String,
        user_id: String,
        used_at: Option<DateTime<Utc>>,
        successor: Option<(String, String)>,
    },
    Unknown,
}

/// Which of the user's credentials survive a password change: the one that made it.
#[derive(Debug, Clone, Copy)]
pub enum Keep<'a> {
    Session(&'a str),
    Family(&'a str),
}

/// What a password change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordChanged {
    Changed {
        sessions_ended: u64,
        families_revoked: u64,
    },
    /// The stored hash is no longer the one verified (a concurrent change won), or the user was
    /// disabled meanwhile: nothing done.
    Stale,
}

/// What an admin's change of role or disabled flag did.
#[derive(Debug, Clone)]
pub enum FlagsChanged {
    NotFound,
    /// The admin asking is not (or no longer) an enabled admin: nothing done.
    NotAdmin,
    /// It would leave no enabled admin: nothing done.
    LastAdmin,
    Updated {
        before: Box<User>,
        after: Box<User>,
        sessions_ended: u64,
        families_revoked: u64,
    },
}

/// How many expired rows the hourly purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub sessions: u64,
    pub refresh_tokens: u64,
    pub families: u64,
    pub login_clients: u64,
}

#[async_trait]
pub trait AccountStore: Send + Sync {
    /// `StoreError::Conflict` when the email is taken.
    async fn insert_user(&self, user: &User) -> Result<(), StoreError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError>;
    /// Replaces the stored hash; `changed` marks a password change (the credential epoch moves on,
    /// so every session and token family of the old password stops working).
    async fn set_password_hash(&self, id: &str, hash: &str, changed: bool, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Replaces `old` by `new` (same password, today's parameters) only if `old` is still stored.
    async fn upgrade_password_hash(&self, id: &str, old: &str, new: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// In one transaction, only if `verified_hash` is still stored and the user enabled: the new
    /// hash, the credential epoch moved on, every other session deleted, every other token family
    /// revoked, the remembered login addresses forgotten, and the credential that asked (`keep`)
    /// moved to the new epoch.
    async fn change_password(
        &self,
        user_id: &str,
        verified_hash: &str,
        new_hash: &str,
        keep: Keep<'_>,
        now: DateTime<Utc>,
    ) -> Result<PasswordChanged, StoreError>;
    /// Newest first; `starting_after` is the last id of the previous page.
    async fn list_users(&self, limit: i64, starting_after: Option<&str>) -> Result<Vec<User>, StoreError>;
    /// A change made by the admin `actor` (`None`: the operator, from the command line or a test),
    /// in one transaction that first locks every enabled admin: refused when the actor is not one
    /// of them any more, or when it would leave none. Disabling
    /// moves the credential epoch on, deletes the user's sessions, revokes their token families and
    /// forgets the addresses they logged in from.
    async fn update_user_flags(
        &self,
        actor: Option<&str>,
        id: &str,
        role: Option<Role>,
        disabled: Option<bool>,
        now: DateTime<Utc>,
    ) -> Result<FlagsChanged, StoreError>;

    /// Stores the session only if `session.credential_epoch` is still the user's and the user is
    /// enabled; `false` otherwise (the password changed, or the user was disabled, since the login
    /// read them).
    async fn insert_session(&self, session: &SessionRow) -> Result<bool, StoreError>;
    async fn session_by_token_hash(&self, token_hash: &str) -> Result<Option<SessionRow>, StoreError>;
    async fn touch_session(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError>;
    async fn delete_session(&self, id: &str) -> Result<bool, StoreError>;
    async fn delete_user_session(&self, user_id: &str, id: &str) -> Result<bool, StoreError>;
    /// The user's sessions of `epoch` that are neither past `now` nor last seen before
    /// `idle_cutoff`, newest first, after `starting_after` (a session id).
    async fn list_live_sessions(
        &self,
        user_id: &str,
        epoch: i64,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
        limit: i64,
        starting_after: Option<&str>,
    ) -> Result<Vec<SessionRow>, StoreError>;

    /// Like [`AccountStore::insert_session`]: only while `epoch` is the user's and the user is enabled.
    async fn insert_family(&self, id: &str, user_id: &str, epoch: i64, now: DateTime<Utc>) -> Result<bool, StoreError>;
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
    /// Records on the spent token the token issued for it (its hash and sealed value).
    async fn set_successor(&self, spent_hash: &str, successor_hash: &str, sealed: &str) -> Result<(), StoreError>;
    /// Whether the refresh token with this hash exists and was never spent.
    async fn refresh_unspent(&self, token_hash: &str) -> Result<bool, StoreError>;
    async fn revoke_family(&self, id: &str, reason: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
    async fn family(&self, id: &str) -> Result<Option<FamilyRow>, StoreError>;

    /// Whether `client_key` logged in to the user successfully at or after `since`.
    async fn known_client(&self, user_id: &str, client_key: &str, since: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Remembers that `client_key` logged in to the user, only while `epoch` is still the user's
    /// credential epoch and the user enabled (a login racing a password change or a disable must
    /// not leave its address known to the new password).
    async fn remember_client(&self, user_id: &str, client_key: &str, epoch: i64, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// As `remember_client`, for a sign-in from a client the account did not know: in the same
    /// transaction, a `new_sign_in` email to the account (`notice`: the mail's data besides `to`),
    /// once per (account, client, sign-in time).
    async fn remember_new_client(
        &self,
        user_id: &str,
        client_key: &str,
        epoch: i64,
        notice: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Deletes sessions past their lifetime or idle since before `idle_cutoff`, or of an old
    /// credential epoch; refresh tokens past their expiry; families created before
    /// `family_cutoff` that are revoked, or hold no live refresh token and none spent since then
    /// (so a refresh between spending one token and storing the next is never cut short); login
    /// clients not seen since `clients_cutoff`.
    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
        family_cutoff: DateTime<Utc>,
        clients_cutoff: DateTime<Utc>,
    ) -> Result<Purged, StoreError>;
}

pub(crate) fn conflict(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Database(e),
    }
}

const USER_COLUMNS: &str = "id, email, name, password_hash, role, disabled, created_at, password_changed_at, credential_epoch";
const SESSION_COLUMNS: &str = "id, token_hash, user_id, created_at, last_seen_at, expires_at, ip, user_agent, credential_epoch";

pub(crate) fn user_query(tail: &str) -> String {
    format!("SELECT {USER_COLUMNS} FROM users {tail}")
}

pub(crate) fn session_query(tail: &str) -> String {
    format!("SELECT {SESSION_COLUMNS} FROM sessions {tail}")
}

pub(crate) fn user_returning(head: &str) -> String {
    format!("{head} RETURNING {USER_COLUMNS}")
}

macro_rules! impl_account_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::accounts::AccountStore for $store {
            async fn insert_user(&self, u: &$crate::domain::account::User) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "INSERT INTO users (id, email, email_key, name, password_hash, role, disabled, created_at, updated_at, password_changed_at, credential_epoch)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
                .bind(u.credential_epoch)
                .execute(&mut *c)
                .await)
                .map_err($crate::store::accounts::conflict)?;
                Ok(())
            }

            async fn user_by_email(&self, email: &str) -> Result<Option<$crate::domain::account::User>, $crate::store::error::StoreError> {
                let row: Option<$crate::store::accounts::UserRow> = $crate::store::pool::on_conn!(self, c => sqlx::query_as(&$crate::store::accounts::user_query("WHERE email_key = $1"))
                    .bind($crate::domain::account::email_key(email))
                    .fetch_optional(&mut *c)
                    .await)?;
                Ok(row.map(Into::into))
            }

            async fn user_by_id(&self, id: &str) -> Result<Option<$crate::domain::account::User>, $crate::store::error::StoreError> {
                let row: Option<$crate::store::accounts::UserRow> =
                    $crate::store::pool::on_conn!(self, c => sqlx::query_as(&$crate::store::accounts::user_query("WHERE id = $1")).bind(id).fetch_optional(&mut *c).await)?;
                Ok(row.map(Into::into))
            }

            async fn set_password_hash(&self, id: &str, hash: &str, changed: bool, now: chrono::DateTime<chrono::Utc>) -> Result<(), $crate::store::error::StoreError> {
                let sql = if changed {
                    "UPDATE users SET password_hash = $1, updated_at = $2, password_changed_at = $2, credential_epoch = credential_epoch + 1 WHERE id = $3"
                } else {
                    "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3"
                };
                $crate::store::pool::on_conn!(self, c => sqlx::query(sql).bind(hash).bind(now).bind(id).execute(&mut *c).await)?;
                self.view.invalidate(id);
                Ok(())
            }

            async fn upgrade_password_hash(&self, id: &str, old: &str, new: &str, now: chrono::DateTime<chrono::Utc>) -> Result<bool, $crate::store::error::StoreError> {
                let done = $crate::store::pool::on_conn!(self, c => sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3 AND password_hash = $4")
                    .bind(new)
                    .bind(now)
                    .bind(id)
                    .bind(old)
                    .execute(&mut *c)
                    .await)?;
                self.view.invalidate(id);
                Ok(done.rows_affected() > 0)
            }

            async fn change_password(
                &self,
                user_id: &str,
                verified_hash: &str,
                new_hash: &str,
                keep: $crate::store::accounts::Keep<'_>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::accounts::PasswordChanged, $crate::store::error::StoreError> {
                use $crate::store::accounts::{Keep, PasswordChanged};
                let _turn = self.write_turn().await;
                $crate::store::pool::transaction!(self, tx => {
                    let epoch: Option<i64> = sqlx::query_scalar(
                        "UPDATE users SET password_hash = $1, updated_at = $2, password_changed_at = $2, credential_epoch = credential_epoch + 1
                          WHERE id = $3 AND password_hash = $4 AND disabled = $5 RETURNING credential_epoch",
                    )
                    .bind(new_hash)
                    .bind(now)
                    .bind(user_id)
                    .bind(verified_hash)
                    .bind(false)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(epoch) = epoch else {
                        tx.rollback().await?;
                        return Ok(PasswordChanged::Stale);
                    };
                    let (keep_session, keep_family) = match keep {
                        Keep::Session(id) => (Some(id), None),
                        Keep::Family(id) => (None, Some(id)),
                    };
                    let sessions_ended = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> COALESCE($2, '')")
                        .bind(user_id)
                        .bind(keep_session)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    let families_revoked = sqlx::query(
                        "UPDATE token_families SET revoked_at = $1, revoked_reason = 'password_change'
                          WHERE user_id = $2 AND id <> COALESCE($3, '') AND revoked_at IS NULL",
                    )
                    .bind(now)
                    .bind(user_id)
                    .bind(keep_family)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    // Addresses that knew the old password are strangers to the new one.
                    sqlx::query("DELETE FROM login_clients WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
                    sqlx::query("UPDATE sessions SET credential_epoch = $1 WHERE id = $2 AND user_id = $3")
                        .bind(epoch)
                        .bind(keep_session)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE token_families SET credential_epoch = $1 WHERE id = $2 AND user_id = $3")
                        .bind(epoch)
                        .bind(keep_family)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                    // "Your password was changed", born with the change (one per change: its epoch).
                    let to: Option<String> = sqlx::query_scalar("SELECT email FROM users WHERE id = $1").bind(user_id).fetch_optional(&mut *tx).await?;
                    if let Some(to) = to {
                        let data = serde_json::json!({ "to": to, "at": now }).to_string();
                        let fact = format!("password_changed:{user_id}:{epoch}");
                        let n = Self::insert_message(&mut tx, "email", &to, "password_changed", &data, &fact, Some(user_id), None, now).await?;
                        $crate::store::outbox::note_written(n);
                    }
                    tx.commit().await?;
                    Ok(PasswordChanged::Changed { sessions_ended, families_revoked })
                })
                .inspect(|_| {
                    self.view.invalidate(user_id);
                    $crate::store::outbox::wake_after_commit();
                })
            }

            async fn list_users(&self, limit: i64, starting_after: Option<&str>) -> Result<Vec<$crate::domain::account::User>, $crate::store::error::StoreError> {
                let rows: Vec<$crate::store::accounts::UserRow> =
                    $crate::store::pool::on_conn!(self, c => sqlx::query_as(&$crate::store::accounts::user_query("WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"))
                        .bind(starting_after)
                        .bind(limit)
                        .fetch_all(&mut *c)
                        .await)?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn update_user_flags(
                &self,
                actor: Option<&str>,
                id: &str,
                role: Option<$crate::domain::account::Role>,
                disabled: Option<bool>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::accounts::FlagsChanged, $crate::store::error::StoreError> {
                use $crate::domain::account::{Role, User};
                use $crate::store::accounts::{user_query, user_returning, FlagsChanged, UserRow};
                let _turn = self.write_turn().await;
                $crate::store::pool::transaction!(self, tx => {
                    // Every enabled admin is locked first (row locks on PostgreSQL, the write lock on
                    // SQLite), so two admins demoting each other take turns and the second sees the first.
                    let admins: Vec<String> = sqlx::query_scalar("UPDATE users SET role = role WHERE role = 'admin' AND disabled = $1 RETURNING id")
                        .bind(false)
                        .fetch_all(&mut *tx)
                        .await?;
                    if actor.is_some_and(|actor| !admins.iter().any(|a| a == actor)) {
                        tx.rollback().await?;
                        return Ok(FlagsChanged::NotAdmin);
                    }
                    let row: Option<UserRow> = sqlx::query_as(&user_query("WHERE id = $1")).bind(id).fetch_optional(&mut *tx).await?;
                    let Some(before) = row.map(User::from) else {
                        tx.rollback().await?;
                        return Ok(FlagsChanged::NotFound);
                    };
                    let (new_role, new_disabled) = (role.unwrap_or(before.role), disabled.unwrap_or(before.disabled));
                    let was_admin = before.role == Role::Admin && !before.disabled;
                    let stays_admin = new_role == Role::Admin && !new_disabled;
                    if was_admin && !stays_admin && !admins.iter().any(|a| a != id) {
                        tx.rollback().await?;
                        return Ok(FlagsChanged::LastAdmin);
                    }
                    let disabling = new_disabled && !before.disabled;
                    let after: UserRow = sqlx::query_as(&user_returning(
                        "UPDATE users SET role = $1, disabled = $2, updated_at = $3, credential_epoch = credential_epoch + $4 WHERE id = $5",
                    ))
                    .bind(new_role.as_str())
                    .bind(new_disabled)
                    .bind(now)
                    .bind(i64::from(disabling))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                    let (mut sessions_ended, mut families_revoked) = (0, 0);
                    if new_disabled {
                        sessions_ended = sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
                        families_revoked = sqlx::query(
                            "UPDATE token_families SET revoked_at = $1, revoked_reason = 'user_disabled' WHERE user_id = $2 AND revoked_at IS NULL",
                        )
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        sqlx::query("DELETE FROM login_clients WHERE user_id = $1").bind(id).execute(&mut *tx).await?;
                        Self::revoke_licences_of_user(&mut tx, id, now).await?;
                    }
                    tx.commit().await?;
                    Ok(FlagsChanged::Updated { before: Box::new(before), after: Box::new(after.into()), sessions_ended, families_revoked })
                })
                .inspect(|_| self.view.invalidate(id))
            }

            async fn insert_session(&self, s: &$crate::store::accounts::SessionRow) -> Result<bool, $crate::store::error::StoreError> {
                let done = $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "INSERT INTO sessions (id, token_hash, user_id, created_at, last_seen_at, expires_at, ip, user_agent, credential_epoch)
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
                      WHERE EXISTS (SELECT 1 FROM users WHERE id = $3 AND credential_epoch = $9 AND disabled = $10)",
                )
                .bind(&s.id)
                .bind(&s.token_hash)
                .bind(&s.user_id)
                .bind(s.created_at)
                .bind(s.last_seen_at)
                .bind(s.expires_at)
                .bind(&s.ip)
                .bind(&s.user_agent)
                .bind(s.credential_epoch)
                .bind(false)
                .execute(&mut *c)
                .await)?;
                Ok(done.rows_affected() == 1)
            }

            async fn session_by_token_hash(&self, token_hash: &str) -> Result<Option<$crate::store::accounts::SessionRow>, $crate::store::error::StoreError> {
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&$crate::store::accounts::session_query("WHERE token_hash = $1"))
                    .bind(token_hash)
                    .fetch_optional(&mut *c)
                    .await)?)
            }

            async fn touch_session(&self, id: &str, now: chrono::DateTime<chrono::Utc>) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::on_conn!(self, c => sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2").bind(now).bind(id).execute(&mut *c).await)?;
                Ok(())
            }

            async fn delete_session(&self, id: &str) -> Result<bool, $crate::store::error::StoreError> {
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query("DELETE FROM sessions WHERE id = $1").bind(id).execute(&mut *c).await)?.rows_affected() > 0)
            }

            async fn delete_user_session(&self, user_id: &str, id: &str) -> Result<bool, $crate::store::error::StoreError> {
                let done =
                    $crate::store::pool::on_conn!(self, c => sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id = $2").bind(user_id).bind(id).execute(&mut *c).await)?;
                Ok(done.rows_affected() > 0)
            }

            async fn list_live_sessions(
                &self,
                user_id: &str,
                epoch: i64,
                now: chrono::DateTime<chrono::Utc>,
                idle_cutoff: chrono::DateTime<chrono::Utc>,
                limit: i64,
                starting_after: Option<&str>,
            ) -> Result<Vec<$crate::store::accounts::SessionRow>, $crate::store::error::StoreError> {
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&$crate::store::accounts::session_query(
                    "WHERE user_id = $1 AND credential_epoch = $2 AND expires_at > $3 AND last_seen_at > $4
                       AND ($5 IS NULL OR id < $5) ORDER BY id DESC LIMIT $6",
                ))
                .bind(user_id)
                .bind(epoch)
                .bind(now)
                .bind(idle_cutoff)
                .bind(starting_after)
                .bind(limit)
                .fetch_all(&mut *c)
                .await)?)
            }

            async fn insert_family(&self, id: &str, user_id: &str, epoch: i64, now: chrono::DateTime<chrono::Utc>) -> Result<bool, $crate::store::error::StoreError> {
                let done = $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "INSERT INTO token_families (id, user_id, created_at, credential_epoch)
                     SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM users WHERE id = $2 AND credential_epoch = $4 AND disabled = $5)",
                )
                .bind(id)
                .bind(user_id)
                .bind(now)
                .bind(epoch)
                .bind(false)
                .execute(&mut *c)
                .await)?;
                Ok(done.rows_affected() == 1)
            }

            async fn insert_refresh(
                &self,
                token_hash: &str,
                family_id: &str,
                user_id: &str,
                now: chrono::DateTime<chrono::Utc>,
                expires_at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::on_conn!(self, c => sqlx::query("INSERT INTO refresh_tokens (token_hash, family_id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(token_hash)
                    .bind(family_id)
                    .bind(user_id)
                    .bind(now)
                    .bind(expires_at)
                    .execute(&mut *c)
                    .await)?;
                Ok(())
            }

            async fn spend_refresh(&self, token_hash: &str, now: chrono::DateTime<chrono::Utc>) -> Result<$crate::store::accounts::SpendOutcome, $crate::store::error::StoreError> {
                use sqlx::Row;
                let spent = $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL RETURNING family_id, user_id, expires_at",
                )
                .bind(now)
                .bind(token_hash)
                .fetch_optional(&mut *c)
                .await)?;
                if let Some(r) = spent {
                    return Ok($crate::store::accounts::SpendOutcome::Fresh {
                        family_id: r.try_get("family_id")?,
                        user_id: r.try_get("user_id")?,
                        expires_at: r.try_get("expires_at")?,
                    });
                }
                let known = $crate::store::pool::on_conn!(self, c => sqlx::query("SELECT family_id, user_id, used_at, successor_hash, successor_sealed FROM refresh_tokens WHERE token_hash = $1")
                    .bind(token_hash)
                    .fetch_optional(&mut *c)
                    .await)?;
                Ok(match known {
                    Some(r) => {
                        let successor_hash: Option<String> = r.try_get("successor_hash")?;
                        let successor_sealed: Option<String> = r.try_get("successor_sealed")?;
                        $crate::store::accounts::SpendOutcome::Reused {
                            family_id: r.try_get("family_id")?,
                            user_id: r.try_get("user_id")?,
                            used_at: r.try_get("used_at")?,
                            successor: successor_hash.zip(successor_sealed),
                        }
                    }
                    None => $crate::store::accounts::SpendOutcome::Unknown,
                })
            }

            async fn set_successor(&self, spent_hash: &str, successor_hash: &str, sealed: &str) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::on_conn!(self, c => sqlx::query("UPDATE refresh_tokens SET successor_hash = $2, successor_sealed = $3 WHERE token_hash = $1")
                    .bind(spent_hash)
                    .bind(successor_hash)
                    .bind(sealed)
                    .execute(&mut *c)
                    .await)?;
                Ok(())
            }

            async fn refresh_unspent(&self, token_hash: &str) -> Result<bool, $crate::store::error::StoreError> {
                let n: i64 = $crate::store::pool::on_conn!(self, c => sqlx::query_scalar("SELECT count(*) FROM refresh_tokens WHERE token_hash = $1 AND used_at IS NULL")
                    .bind(token_hash)
                    .fetch_one(&mut *c)
                    .await)?;
                Ok(n > 0)
            }

            async fn revoke_family(&self, id: &str, reason: &str, now: chrono::DateTime<chrono::Utc>) -> Result<bool, $crate::store::error::StoreError> {
                let user: Option<String> = $crate::store::pool::on_conn!(self, c => sqlx::query_scalar("UPDATE token_families SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL RETURNING user_id")
                    .bind(now)
                    .bind(reason)
                    .bind(id)
                    .fetch_optional(&mut *c)
                    .await)?;
                if let Some(user) = &user {
                    self.view.invalidate(user);
                }
                Ok(user.is_some())
            }

            async fn family(&self, id: &str) -> Result<Option<$crate::store::accounts::FamilyRow>, $crate::store::error::StoreError> {
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as("SELECT user_id, credential_epoch, revoked_at IS NOT NULL AS revoked FROM token_families WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *c)
                    .await)?)
            }

            async fn known_client(&self, user_id: &str, client_key: &str, since: chrono::DateTime<chrono::Utc>) -> Result<bool, $crate::store::error::StoreError> {
                let n: i64 = $crate::store::pool::on_conn!(self, c => sqlx::query_scalar("SELECT count(*) FROM login_clients WHERE user_id = $1 AND client_key = $2 AND last_success_at >= $3")
                    .bind(user_id)
                    .bind(client_key)
                    .bind(since)
                    .fetch_one(&mut *c)
                    .await)?;
                Ok(n > 0)
            }

            async fn remember_client(
                &self,
                user_id: &str,
                client_key: &str,
                epoch: i64,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::error::StoreError> {
                $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "INSERT INTO login_clients (user_id, client_key, last_success_at)
                     SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM users WHERE id = $1 AND credential_epoch = $4 AND disabled = $5)
                     ON CONFLICT (user_id, client_key) DO UPDATE SET last_success_at = excluded.last_success_at",
                )
                .bind(user_id)
                .bind(client_key)
                .bind(now)
                .bind(epoch)
                .bind(false)
                .execute(&mut *c)
                .await)?;
                Ok(())
            }

            async fn remember_new_client(
                &self,
                user_id: &str,
                client_key: &str,
                epoch: i64,
                notice: &serde_json::Value,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::error::StoreError> {
                let _turn = self.write_turn().await;
                $crate::store::pool::transaction!(self, tx => {
                    let remembered = sqlx::query(
                        "INSERT INTO login_clients (user_id, client_key, last_success_at)
                         SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM users WHERE id = $1 AND credential_epoch = $4 AND disabled = $5)
                         ON CONFLICT (user_id, client_key) DO UPDATE SET last_success_at = excluded.last_success_at",
                    )
                    .bind(user_id)
                    .bind(client_key)
                    .bind(now)
                    .bind(epoch)
                    .bind(false)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    let to: Option<String> = sqlx::query_scalar("SELECT email FROM users WHERE id = $1 AND disabled = $2")
                        .bind(user_id)
                        .bind(false)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let (1, Some(to)) = (remembered, to) {
                        let mut data = notice.clone();
                        if let Some(map) = data.as_object_mut() {
                            map.insert("to".to_owned(), serde_json::Value::String(to.clone()));
                        }
                        let fact = format!("new_sign_in:{user_id}:{client_key}:{}", now.timestamp_micros());
                        let n = Self::insert_message(&mut tx, "email", &to, "new_sign_in", &data.to_string(), &fact, Some(user_id), None, now).await?;
                        $crate::store::outbox::note_written(n);
                    }
                    tx.commit().await?;
                    Ok(())
                })
            }

            async fn purge_expired(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                idle_cutoff: chrono::DateTime<chrono::Utc>,
                family_cutoff: chrono::DateTime<chrono::Utc>,
                clients_cutoff: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::accounts::Purged, $crate::store::error::StoreError> {
                let _turn = self.write_turn().await;
                let sessions = $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $2
                        OR credential_epoch <> (SELECT u.credential_epoch FROM users u WHERE u.id = sessions.user_id)",
                )
                .bind(now)
                .bind(idle_cutoff)
                .execute(&mut *c)
                .await)?
                .rows_affected();
                let refresh_tokens =
                    $crate::store::pool::on_conn!(self, c => sqlx::query("DELETE FROM refresh_tokens WHERE expires_at <= $1").bind(now).execute(&mut *c).await)?.rows_affected();
                let families = $crate::store::pool::on_conn!(self, c => sqlx::query(
                    "DELETE FROM token_families WHERE created_at < $1
                        AND (revoked_at IS NOT NULL OR NOT EXISTS (SELECT 1 FROM refresh_tokens r
                              WHERE r.family_id = token_families.id AND (r.used_at IS NULL OR r.used_at >= $1)))",
                )
                .bind(family_cutoff)
                .execute(&mut *c)
                .await)?
                .rows_affected();
                let login_clients = $crate::store::pool::on_conn!(self, c => sqlx::query("DELETE FROM login_clients WHERE last_success_at < $1")
                    .bind(clients_cutoff)
                    .execute(&mut *c)
                    .await)?
                    .rows_affected();
                // Revoked and dead families are gone: whatever the view held of them goes too
                // (only then: a flush costs every user a database read).
                if families > 0 {
                    self.view.flush();
                }
                Ok($crate::store::accounts::Purged { sessions, refresh_tokens, families, login_clients })
            }
        }
    };
}

pub(crate) use impl_account_store;
