//! Licences: the development signing key, issued licences with the grants they carry, their
//! revocation (called inside the transactions that suspend or revoke a grant and that disable a
//! user) and the public revocation list. One SQL text for both engines (see `accounts.rs`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::error::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LicenceRow {
    pub id: String,
    pub user_id: String,
    pub kid: String,
    /// The features as the licence states them (JSON).
    pub features: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
}

/// One entry of the revocation list.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RevokedRow {
    pub id: String,
    pub revoked_at: DateTime<Utc>,
    pub revoked_reason: String,
}

/// What recording a licence did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LicenceInserted {
    Inserted,
    /// No such user, or the user is disabled: nothing recorded.
    NoUser,
    /// A grant it would carry is no longer active (a refund or dispute meanwhile): nothing
    /// recorded; read the access again.
    GrantsChanged,
}

#[async_trait]
pub trait LicenceStore: Send + Sync {
    /// The signing key stored under `id`, inserting `private_key` first when there is none: two
    /// instances starting at once both end with the one stored first.
    async fn ensure_signing_key(&self, id: &str, private_key: &str, now: DateTime<Utc>) -> Result<String, StoreError>;
    /// The signing key stored under `id`, if any (never creates one).
    async fn signing_key(&self, id: &str) -> Result<Option<String>, StoreError>;
    /// Records `licence` carrying `grant_ids`, in one transaction that locks the user (enabled)
    /// and each grant (active) first, so a concurrent disable or refund either sees the licence
    /// and revokes it, or makes this answer `NoUser`/`GrantsChanged`.
    async fn insert_licence(&self, licence: &LicenceRow, grant_ids: &[String]) -> Result<LicenceInserted, StoreError>;
    async fn licence(&self, id: &str) -> Result<Option<LicenceRow>, StoreError>;
    /// Revoked licences, oldest revocation first (then by id), revoked at or after `since`, after
    /// the licence `starting_after`.
    async fn revoked_licences(
        &self,
        since: Option<DateTime<Utc>>,
        starting_after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RevokedRow>, StoreError>;
}

pub(crate) const LICENCE_COLUMNS: &str = "id, user_id, kid, features, issued_at, expires_at, revoked_at, revoked_reason";

macro_rules! impl_licence_store {
    ($store:ty, $db:ty) => {
        impl $store {
            /// Called in the caller's transaction when grant `grant_id` of the order with `facts`
            /// moves to `state`: suspended or revoked, the unexpired licences that carry it are
            /// revoked (reason from `domain::licence::revocation_reason`). How many.
            pub(crate) async fn revoke_licences_of_grant(
                tx: &mut sqlx::Transaction<'_, $db>,
                grant_id: &str,
                state: $crate::domain::orders::GrantState,
                facts: &$crate::domain::orders::OrderFacts,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::store::error::StoreError> {
                if state == $crate::domain::orders::GrantState::Active {
                    return Ok(0);
                }
                let reason = $crate::domain::licence::revocation_reason(facts);
                Ok(sqlx::query(
                    "UPDATE licences SET revoked_at = $1, revoked_reason = $2
                      WHERE revoked_at IS NULL AND expires_at > $1
                        AND id IN (SELECT licence_id FROM licence_grants WHERE grant_id = $3)",
                )
                .bind(now)
                .bind(reason.as_str())
                .bind(grant_id)
                .execute(&mut **tx)
                .await?
                .rows_affected())
            }

            /// Revokes, in the caller's transaction, every unexpired licence of user `user_id`
            /// (being disabled). How many.
            pub(crate) async fn revoke_licences_of_user(
                tx: &mut sqlx::Transaction<'_, $db>,
                user_id: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::store::error::StoreError> {
                Ok(sqlx::query(
                    "UPDATE licences SET revoked_at = $1, revoked_reason = $2
                      WHERE user_id = $3 AND revoked_at IS NULL AND expires_at > $1",
                )
                .bind(now)
                .bind($crate::domain::licence::RevocationReason::UserDisabled.as_str())
                .bind(user_id)
                .execute(&mut **tx)
                .await?
                .rows_affected())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::licences::LicenceStore for $store {
            async fn ensure_signing_key(
                &self,
                id: &str,
                private_key: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<String, $crate::store::error::StoreError> {
                let _turn = self.write_turn().await;
                $crate::store::pool::transaction!(self, tx => {
                    sqlx::query("INSERT INTO signing_keys (id, private_key, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
                        .bind(id)
                        .bind(private_key)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    let stored: String = sqlx::query_scalar("SELECT private_key FROM signing_keys WHERE id = $1")
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(stored)
                })
            }

            async fn signing_key(&self, id: &str) -> Result<Option<String>, $crate::store::error::StoreError> {
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_scalar("SELECT private_key FROM signing_keys WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *c)
                    .await)?)
            }

            async fn insert_licence(
                &self,
                l: &$crate::store::licences::LicenceRow,
                grant_ids: &[String],
            ) -> Result<$crate::store::licences::LicenceInserted, $crate::store::error::StoreError> {
                use $crate::store::licences::LicenceInserted;
                let _turn = self.write_turn().await;
                $crate::store::pool::transaction!(self, tx => {
                    // Locks (row locks on PostgreSQL, the write lock on SQLite) so that a disable or
                    // a grant's revocation running now waits for this licence and then revokes it.
                    let user: Option<String> = sqlx::query_scalar("UPDATE users SET disabled = disabled WHERE id = $1 AND disabled = $2 RETURNING id")
                        .bind(&l.user_id)
                        .bind(false)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if user.is_none() {
                        tx.rollback().await?;
                        return Ok(LicenceInserted::NoUser);
                    }
                    for grant_id in grant_ids {
                        let active: Option<String> = sqlx::query_scalar(
                            "UPDATE grants SET status = status WHERE id = $1 AND user_id = $2 AND status = $3 RETURNING id",
                        )
                        .bind(grant_id)
                        .bind(&l.user_id)
                        .bind($crate::domain::orders::GrantState::Active)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if active.is_none() {
                            tx.rollback().await?;
                            return Ok(LicenceInserted::GrantsChanged);
                        }
                    }
                    sqlx::query(
                        "INSERT INTO licences (id, user_id, kid, features, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&l.id)
                    .bind(&l.user_id)
                    .bind(&l.kid)
                    .bind(&l.features)
                    .bind(l.issued_at)
                    .bind(l.expires_at)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::store::accounts::conflict)?;
                    for grant_id in grant_ids {
                        sqlx::query("INSERT INTO licence_grants (licence_id, grant_id) VALUES ($1, $2)")
                            .bind(&l.id)
                            .bind(grant_id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(LicenceInserted::Inserted)
                })
            }

            async fn licence(&self, id: &str) -> Result<Option<$crate::store::licences::LicenceRow>, $crate::store::error::StoreError> {
                let sql = format!("SELECT {} FROM licences WHERE id = $1", $crate::store::licences::LICENCE_COLUMNS);
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(&sql).bind(id).fetch_optional(&mut *c).await)?)
            }

            async fn revoked_licences(
                &self,
                since: Option<chrono::DateTime<chrono::Utc>>,
                starting_after: Option<&str>,
                limit: i64,
            ) -> Result<Vec<$crate::store::licences::RevokedRow>, $crate::store::error::StoreError> {
                Ok($crate::store::pool::on_conn!(self, c => sqlx::query_as(
                    "SELECT id, revoked_at, revoked_reason FROM licences l
                      WHERE revoked_at IS NOT NULL
                        AND ($1 IS NULL OR revoked_at >= $1)
                        AND ($2 IS NULL OR EXISTS (SELECT 1 FROM licences a WHERE a.id = $2 AND a.revoked_at IS NOT NULL
                               AND (l.revoked_at > a.revoked_at OR (l.revoked_at = a.revoked_at AND l.id > a.id))))
                      ORDER BY revoked_at, id LIMIT $3",
                )
                .bind(since)
                .bind(starting_after)
                .bind(limit)
                .fetch_all(&mut *c)
                .await)?)
            }
        }
    };
}

pub(crate) use impl_licence_store;
