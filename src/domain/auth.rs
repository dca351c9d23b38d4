//! The accounts service: registration, login, sessions, token pairs, refresh with theft
//! detection, password changes, admin changes, and the audit trail of all of it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::account::{email_key, known_words, new_id, Email, NewPassword, Role, User, UserName};
use super::crypto::{csrf_token_for, random_token, token_hash};
use super::jwt::{Claims, JwtKeys};
use super::password::PasswordHasherPool;
use super::FieldError;
use crate::config::AuthConfig;
use crate::ratelimit::{client_key, Decision, Quota, RateLimiter};
use crate::store::{NewAuditEntry, SessionRow, SpendOutcome, Store, StoreError};

/// Who asked, for the audit log and the limiter.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub ip: String,
    pub user_agent: Option<String>,
    pub request_id: String,
}

/// Appends to the audit log what `actor` did to `resource`, from where `meta` says. The action
/// itself already happened; a failed audit write is logged loudly, not undone.
pub async fn record_audit(
    store: &dyn Store,
    meta: &RequestMeta,
    actor: Option<&str>,
    action: &str,
    resource: Option<&str>,
    detail: serde_json::Value,
) {
    let entry = NewAuditEntry {
        actor: actor.map(str::to_owned),
        action: action.to_owned(),
        resource: resource.map(str::to_owned),
        ip: Some(meta.ip.clone()).filter(|s| !s.is_empty()),
        user_agent: meta.user_agent.clone(),
        request_id: Some(meta.request_id.clone()).filter(|s| !s.is_empty()),
        detail,
    };
    if let Err(e) = store.append_audit(entry).await {
        tracing::error!(error = %e, action, "audit write failed");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// One answer for unknown email, wrong password and disabled account.
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("not authenticated")]
    Unauthenticated,
    #[error("rate limited")]
    RateLimited { limit: u32, retry_after: Duration },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Internal(e.into())
    }
}

/// A new browser session: the cookie value (shown once, stored hashed) and its CSRF token.
pub struct NewSession {
    pub user: User,
    pub token: String,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

pub struct TokenPair {
    pub access_token: String,
    pub expires_in: i64,
    pub refresh_token: String,
}

/// How a request was authenticated.
#[derive(Clone)]
pub enum Credential {
    Session { session_id: String, csrf_token: String },
    Bearer { family_id: String, claims: Box<Claims> },
}

/// Ids only: the CSRF token is a secret.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Session { session_id, .. } => {
                f.debug_struct("Session").field("session_id", session_id).finish_non_exhaustive()
            }
            Credential::Bearer { family_id, .. } => {
                f.debug_struct("Bearer").field("family_id", family_id).finish_non_exhaustive()
            }
        }
    }
}

pub struct AuthService {
    store: Arc<dyn Store>,
    hasher: PasswordHasherPool,
    limiter: Arc<dyn RateLimiter>,
    jwt: JwtKeys,
    cfg: AuthConfig,
}

/// Session activity is written at most this often (or a quarter of the idle timeout, if shorter),
/// not on every request.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// The per-account limiter's key: failed logins and wrong current passwords count together, and
/// the address's case buys nothing.
fn account_limiter_key(email: &str) -> String {
    format!("login:account:{}", email_key(email))
}

fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl AuthService {
    pub fn new(
        store: Arc<dyn Store>,
        hasher: PasswordHasherPool,
        limiter: Arc<dyn RateLimiter>,
        jwt: JwtKeys,
        cfg: AuthConfig,
    ) -> AuthService {
        AuthService { store, hasher, limiter, jwt, cfg }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn hasher(&self) -> &PasswordHasherPool {
        &self.hasher
    }

    async fn audit(
        &self,
        meta: &RequestMeta,
        actor: Option<&str>,
        action: &str,
        resource: Option<&str>,
        detail: serde_json::Value,
    ) {
        record_audit(self.store.as_ref(), meta, actor, action, resource, detail).await;
    }

    fn ip_quota(&self) -> Quota {
        Quota { limit: self.cfg.login_ip_limit, period: self.cfg.login_ip_window }
    }

    fn account_quota(&self) -> Quota {
        Quota { limit: self.cfg.login_max_failures, period: self.cfg.login_failure_window }
    }

    pub async fn register(
        &self,
        email: &str,
        password: &SecretString,
        name: Option<&str>,
        role: Role,
        meta: &RequestMeta,
    ) -> Result<User, AuthError> {
        // Registration hashes a password too, and answers whether an email is taken: same limit
        // per client IP as logins (the CLI has no IP and is not limited).
        if !meta.ip.is_empty() {
            if let Decision::Limited { limit, retry_after } =
                self.limiter.hit(&format!("register:ip:{}", client_key(&meta.ip)), self.ip_quota()).await
            {
                return Err(AuthError::RateLimited { limit, retry_after });
            }
        }
        let mut errors = Vec::new();
        let email = Email::parse("email", email).map_err(|e| errors.push(e)).ok();
        let name = name.map(|n| UserName::parse("name", n)).transpose().map_err(|e| errors.push(e)).ok().flatten();
        let known = known_words(email.as_ref().map(Email::as_str), name.as_ref().map(UserName::as_str));
        let password = NewPassword::parse("password", password, &known).map_err(|e| errors.push(e)).ok();
        let (Some(email), Some(password), true) = (email, password, errors.is_empty()) else {
            return Err(AuthError::Validation(errors));
        };
        let hash = self.hasher.hash(password.secret()).await?;
        let now = Utc::now();
        let user = User {
            id: new_id("usr"),
            email: email.as_str().to_owned(),
            name: name.map(|n| n.as_str().to_owned()),
            password_hash: hash,
            role,
            disabled: false,
            created_at: now,
            password_changed_at: now,
        };
        match self.store.insert_user(&user).await {
            Err(StoreError::Conflict) => return Err(AuthError::Conflict("an account with this email already exists".to_owned())),
            other => other?,
        }
        self.audit(meta, Some(&user.id), "user.register", Some(&user.id), serde_json::json!({ "role": role.as_str() })).await;
        Ok(user)
    }

    /// Checks a password login under both limiters. Unknown email, wrong password and disabled
    /// account give the same error after the same work (a dummy hash for unknown emails).
    async fn authenticate(&self, email: &str, password: &SecretString, meta: &RequestMeta) -> Result<User, AuthError> {
        if let Decision::Limited { limit, retry_after } =
            self.limiter.hit(&format!("login:ip:{}", client_key(&meta.ip)), self.ip_quota()).await
        {
            return Err(AuthError::RateLimited { limit, retry_after });
        }
        let email = Email::parse("email", email).map_err(|e| AuthError::Validation(vec![e]))?;
        // The attempt is counted before the password is checked, so guesses sent in parallel all
        // count; a successful login gives its count back.
        let account_key = account_limiter_key(email.as_str());
        if let Decision::Limited { limit, retry_after } = self.limiter.hit(&account_key, self.account_quota()).await {
            return Err(AuthError::RateLimited { limit, retry_after });
        }
        let user = self.store.user_by_email(email.as_str()).await?;
        let verified = self.hasher.verify(password, user.as_ref().map(|u| u.password_hash.as_str())).await?;
        let failure = match &user {
            None => Some("unknown_email"),
            Some(_) if !verified.ok => Some("bad_password"),
            Some(u) if u.disabled => Some("disabled"),
            Some(_) => None,
        };
        if let Some(reason) = failure {
            let actor = user.as_ref().map(|u| u.id.as_str());
            self.audit(meta, actor, "login.failure", actor, serde_json::json!({ "reason": reason })).await;
            return Err(AuthError::InvalidCredentials);
        }
        let user = user.ok_or(AuthError::InvalidCredentials)?;
        self.limiter.refund(&account_key, self.account_quota()).await;
        if verified.needs_rehash {
            let upgraded = self.hasher.hash(password).await?;
            // Only if the hash is still the one we verified: a password change in between wins.
            self.store.upgrade_password_hash(&user.id, &user.password_hash, &upgraded, Utc::now()).await?;
        }
        self.audit(meta, Some(&user.id), "login.success", Some(&user.id), serde_json::json!({})).await;
        Ok(user)
    }

    /// Password login for browsers: always a new session token (no fixation).
    pub async fn login(&self, email: &str, password: &SecretString, meta: &RequestMeta) -> Result<NewSession, AuthError> {
        let user = self.authenticate(email, password, meta).await?;
        let now = Utc::now();
        let token = random_token();
        let expires_at = now + chrono_of(self.cfg.session_lifetime);
        let row = SessionRow {
            id: new_id("ses"),
            token_hash: token_hash(&token),
            user_id: user.id.clone(),
            created_at: now,
            last_seen_at: now,
            expires_at,
            ip: Some(meta.ip.clone()),
            user_agent: meta.user_agent.clone(),
        };
        self.store.insert_session(&row).await?;
        let csrf_token = csrf_token_for(&token);
        Ok(NewSession { user, token, csrf_token, expires_at })
    }

    /// Password login for API clients: a new token family and its first pair.
    pub async fn token(&self, email: &str, password: &SecretString, meta: &RequestMeta) -> Result<TokenPair, AuthError> {
        let user = self.authenticate(email, password, meta).await?;
        let family = new_id("fam");
        self.store.insert_family(&family, &user.id, Utc::now()).await?;
        self.issue_pair(&user.id, &family).await
    }

    async fn issue_pair(&self, user_id: &str, family_id: &str) -> Result<TokenPair, AuthError> {
        let now = Utc::now();
        let refresh_token = random_token();
        let expires_at = now + chrono_of(self.cfg.refresh_token_ttl);
        self.store.insert_refresh(&token_hash(&refresh_token), family_id, user_id, now, expires_at).await?;
        let (access_token, claims) = self.jwt.issue(user_id, family_id, now.timestamp());
        Ok(TokenPair { access_token, expires_in: claims.exp - claims.iat, refresh_token })
    }

    /// Spends a refresh token for a new pair. A token presented twice revokes its whole family:
    /// one of the two presenters is a thief, and we cannot tell which.
    pub async fn refresh(&self, refresh_token: &str, meta: &RequestMeta) -> Result<TokenPair, AuthError> {
        let now = Utc::now();
        match self.store.spend_refresh(&token_hash(refresh_token), now).await? {
            SpendOutcome::Unknown => Err(AuthError::Unauthenticated),
            SpendOutcome::Reused { family_id, user_id } => {
                self.store.revoke_family(&family_id, "refresh_token_reuse", now).await?;
                tracing::warn!(family = %family_id, "refresh token reused; family revoked");
                self.audit(
                    meta,
                    Some(&user_id),
                    "token.refresh_reuse",
                    Some(&family_id),
                    serde_json::json!({ "family_revoked": true }),
                )
                .await;
                Err(AuthError::Unauthenticated)
            }
            SpendOutcome::Fresh { family_id, user_id, expires_at } => {
                if expires_at <= now || !self.store.family_active(&family_id).await? {
                    return Err(AuthError::Unauthenticated);
                }
                match self.store.user_by_id(&user_id).await? {
                    Some(u) if !u.disabled => self.issue_pair(&u.id, &family_id).await,
                    _ => Err(AuthError::Unauthenticated),
                }
            }
        }
    }

    /// Records activity on a session whose request was accepted (after CSRF checks).
    pub async fn touch_session(&self, credential: &Credential, last_seen_at: DateTime<Utc>) -> Result<(), AuthError> {
        let now = Utc::now();
        let every = TOUCH_EVERY.min(chrono_of(self.cfg.session_idle_timeout / 4));
        if let Credential::Session { session_id, .. } = credential {
            if now - last_seen_at >= every {
                self.store.touch_session(session_id, now).await?;
            }
        }
        Ok(())
    }

    /// The user behind a session cookie, if the session is live (idle and absolute limits), and
    /// when it was last seen. Nothing is written here: see [`AuthService::touch_session`].
    pub async fn session_user(&self, token: &str) -> Result<(User, Credential, DateTime<Utc>), AuthError> {
        let now = Utc::now();
        let session = self.store.session_by_token_hash(&token_hash(token)).await?.ok_or(AuthError::Unauthenticated)?;
        let idle_deadline = session.last_seen_at + chrono_of(self.cfg.session_idle_timeout);
        if session.expires_at <= now || idle_deadline <= now {
            self.store.delete_session(&session.id).await?;
            return Err(AuthError::Unauthenticated);
        }
        let user = self.store.user_by_id(&session.user_id).await?.filter(|u| !u.disabled).ok_or(AuthError::Unauthenticated)?;
        Ok((user, Credential::Session { session_id: session.id, csrf_token: csrf_token_for(token) }, session.last_seen_at))
    }

    /// The user behind an access token: signature and claims, then the family (logout and theft
    /// detection revoke it) and the user (disabling ends access at once, not at expiry).
    pub async fn bearer_user(&self, token: &str) -> Result<(User, Credential), AuthError> {
        let claims = self.jwt.verify(token, Utc::now().timestamp()).map_err(|e| {
            tracing::info!(reason = %e, "access token refused");
            AuthError::Unauthenticated
        })?;
        if !self.store.family_active(&claims.fam).await? {
            return Err(AuthError::Unauthenticated);
        }
        let user = self.store.user_by_id(&claims.sub).await?.filter(|u| !u.disabled).ok_or(AuthError::Unauthenticated)?;
        Ok((user, Credential::Bearer { family_id: claims.fam.clone(), claims: Box::new(claims) }))
    }

    pub async fn logout(&self, user: &User, credential: &Credential, meta: &RequestMeta) -> Result<(), AuthError> {
        match credential {
            Credential::Session { session_id, .. } => {
                self.store.delete_session(session_id).await?;
            }
            Credential::Bearer { family_id, .. } => {
                self.store.revoke_family(family_id, "logout", Utc::now()).await?;
            }
        }
        self.audit(meta, Some(&user.id), "logout", Some(&user.id), serde_json::json!({})).await;
        Ok(())
    }

    /// Changes the password and ends every other session and token family of the user.
    pub async fn change_password(
        &self,
        user: &User,
        credential: &Credential,
        current: &SecretString,
        new: &SecretString,
        meta: &RequestMeta,
    ) -> Result<(), AuthError> {
        // Guessing the current password through this route counts like failed logins.
        let account_key = account_limiter_key(&user.email);
        if let Decision::Limited { limit, retry_after } = self.limiter.hit(&account_key, self.account_quota()).await {
            return Err(AuthError::RateLimited { limit, retry_after });
        }
        let known = known_words(Some(&user.email), user.name.as_deref());
        let mut errors = Vec::new();
        let verified = self.hasher.verify(current, Some(&user.password_hash)).await?;
        if verified.ok {
            self.limiter.refund(&account_key, self.account_quota()).await;
        } else {
            errors.push(FieldError::new("current_password", "is incorrect"));
        }
        let new_password = NewPassword::parse("new_password", new, &known).map_err(|e| errors.push(e)).ok();
        if current.expose_secret() == new.expose_secret() {
            errors.push(FieldError::new("new_password", "must differ from the current password"));
        }
        let (Some(new_password), true) = (new_password, errors.is_empty()) else {
            return Err(AuthError::Validation(errors));
        };
        let hash = self.hasher.hash(new_password.secret()).await?;
        let now = Utc::now();
        self.store.set_password_hash(&user.id, &hash, true, now).await?;
        let (keep_session, keep_family) = match credential {
            Credential::Session { session_id, .. } => (Some(session_id.as_str()), None),
            Credential::Bearer { family_id, .. } => (None, Some(family_id.as_str())),
        };
        let sessions = self.store.delete_sessions_of(&user.id, keep_session).await?;
        let families = self.store.revoke_families_of(&user.id, keep_family, "password_change", now).await?;
        self.audit(
            meta,
            Some(&user.id),
            "password.change",
            Some(&user.id),
            serde_json::json!({ "sessions_ended": sessions, "families_revoked": families }),
        )
        .await;
        Ok(())
    }

    /// An admin's change to a user's role or disabled flag. Disabling ends every session and
    /// token family of the user at once. An admin cannot demote or disable themselves (the last
    /// admin could otherwise lock everyone out).
    pub async fn admin_update_user(
        &self,
        admin: &User,
        id: &str,
        role: Option<Role>,
        disabled: Option<bool>,
        meta: &RequestMeta,
    ) -> Result<User, AuthError> {
        if id == admin.id && (role.is_some_and(|r| r != Role::Admin) || disabled == Some(true)) {
            return Err(AuthError::Conflict("admins cannot demote or disable themselves".to_owned()));
        }
        let before = self.store.user_by_id(id).await?.ok_or(AuthError::NotFound)?;
        let now = Utc::now();
        let after = self.store.update_user_flags(id, role, disabled, now).await?.ok_or(AuthError::NotFound)?;
        if after.disabled {
            self.store.delete_sessions_of(id, None).await?;
            self.store.revoke_families_of(id, None, "user_disabled", now).await?;
        }
        if before.role != after.role {
            let detail = serde_json::json!({ "from": before.role.as_str(), "to": after.role.as_str() });
            self.audit(meta, Some(&admin.id), "user.role_change", Some(id), detail).await;
        }
        if before.disabled != after.disabled {
            let action = if after.disabled { "user.disable" } else { "user.enable" };
            self.audit(meta, Some(&admin.id), action, Some(id), serde_json::json!({})).await;
        }
        Ok(after)
    }
}
