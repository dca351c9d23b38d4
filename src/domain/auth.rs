//! The accounts service: registration, login, sessions, token pairs, refresh with theft
//! detection, password changes, admin changes, and the audit trail of all of it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::account::{email_key, known_words, new_id, Email, NewPassword, PasswordCandidate, Role, User, UserName};
use super::crypto::{
    csrf_token_for, device_cookie, device_cookie_owner, random_token, seal_token, token_hash, unseal_token, DeviceCookie,
};
use super::jwt::{Claims, JwtKeys};
use super::password::{PasswordHasherPool, PasswordWorkError};
use super::FieldError;
use crate::config::AuthConfig;
use crate::ratelimit::{client_key, Decision, Quota, RateLimiter};
use crate::store::view::Ticket;
use crate::store::{
    FamilyRow, FlagsChanged, Keep, NewAuditEntry, PasswordChanged, Purged, SessionRow, SpendOutcome, Store, StoreError,
};

/// Who asked, for the audit log and the limiter.
#[derive(Clone, Default)]
pub struct RequestMeta {
    pub ip: String,
    pub user_agent: Option<String>,
    pub request_id: String,
    /// The browser's device cookie, when it sent one (see [`AuthService::login`]).
    pub device: Option<String>,
}

/// The device cookie is a credential of sorts: never printed.
impl std::fmt::Debug for RequestMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMeta")
            .field("ip", &self.ip)
            .field("user_agent", &self.user_agent)
            .field("request_id", &self.request_id)
            .field("device", &self.device.as_ref().map(|_| "[redacted]"))
            .finish()
    }
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
    /// Too much password work is waiting: answered at once, the client may retry shortly.
    #[error("busy")]
    Busy,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("not found")]
    NotFound,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Internal(e.into())
    }
}

impl From<PasswordWorkError> for AuthError {
    fn from(e: PasswordWorkError) -> Self {
        match e {
            PasswordWorkError::Busy => AuthError::Busy,
            other => AuthError::Internal(other.into()),
        }
    }
}

/// A new browser session: the cookie value (shown once, stored hashed) and its CSRF token.
pub struct NewSession {
    pub user: User,
    pub token: String,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
    /// A device cookie to set, when the browser has none for this account yet.
    pub device_cookie: Option<String>,
}

pub struct TokenPair {
    pub access_token: String,
    pub expires_in: i64,
    pub refresh_token: String,
}

/// A session's row as read for one request (see [`AuthService::live_session`]); opaque outside.
#[derive(Clone)]
pub struct LiveSession(Box<SessionRow>);

impl LiveSession {
    pub fn user_id(&self) -> &str {
        &self.0.user_id
    }
}

/// How a request was authenticated.
#[derive(Clone)]
pub enum Credential {
    Session { session_id: String, csrf_token: String },
    Bearer { family_id: String, claims: std::sync::Arc<Claims> },
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

/// A page of the caller's live sessions.
pub struct SessionPage {
    pub sessions: Vec<SessionRow>,
    pub has_more: bool,
}

/// A password that checked out, and the client that sent it.
struct Authenticated {
    user: User,
    /// The nonce of a device cookie valid for this account at its current password.
    device: Option<String>,
    ip_key: String,
    /// The account knew this client (a device cookie, or an address it signed in from lately).
    known: bool,
}

/// The limiter windows a login attempt was counted in, to give back when the attempt turns out
/// not to be a wrong password.
struct Counted<'a> {
    limiter: &'a dyn RateLimiter,
    /// The per-address rate, given back only for an attempt refused before its check.
    ip: Option<(String, Quota)>,
    client: String,
    ceiling: Option<String>,
}

impl Counted<'_> {
    /// Gives the failure counts back (a successful login).
    async fn release(&mut self) {
        self.limiter.refund_window(&self.client).await;
        if let Some(ceiling) = self.ceiling.take() {
            self.limiter.refund_window(&ceiling).await;
        }
    }

    /// Gives every count back, the address's rate included, and returns `error`: the attempt was
    /// refused before its password was checked (`return Err(counted.give_back(e).await)`).
    async fn give_back(&mut self, error: AuthError) -> AuthError {
        self.release().await;
        if let Some((ip, quota)) = self.ip.take() {
            self.limiter.refund(&ip, quota).await;
        }
        error
    }
}

pub struct AuthService {
    store: Arc<dyn Store>,
    hasher: PasswordHasherPool,
    limiter: Arc<dyn RateLimiter>,
    jwt: JwtKeys,
    cfg: AuthConfig,
    /// Signs device cookies.
    device_key: [u8; 32],
    /// Whether a sign-in from a client the account does not know writes a `new_sign_in` email.
    new_sign_in_mail: bool,
}

/// Session activity is written at most this often (or a quarter of the idle timeout, if shorter),
/// not on every request.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// A client that logged in to an account successfully within this long is known to it.
const KNOWN_CLIENT_FOR: chrono::Duration = chrono::Duration::days(90);

/// How long an attempt slowed by the account ceiling may wait for its turn before it is 429.
const MAX_SLOWDOWN: Duration = Duration::from_secs(10);

/// The user, when the family is live for them: not revoked, theirs, of their current credential
/// epoch, and the user enabled.
fn live_family_user(family: &FamilyRow, user_id: &str, user: Option<Arc<User>>) -> Option<Arc<User>> {
    if family.revoked || family.user_id != user_id {
        return None;
    }
    user.filter(|u| !u.disabled && u.credential_epoch == family.credential_epoch)
}

/// The login limiters' keys for an account (by its folded address, so case buys nothing, and the
/// same for an address with no account).
fn account_key(email: &str, what: &str) -> String {
    format!("login:{}:{what}", email_key(email))
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
        device_key: [u8; 32],
    ) -> AuthService {
        AuthService { store, hasher, limiter, jwt, cfg, device_key, new_sign_in_mail: false }
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

    /// Failed logins per account from one client, in a sliding window.
    fn client_quota(&self) -> Quota {
        Quota { limit: self.cfg.login_max_failures, period: self.cfg.login_failure_window }
    }

    /// Failed logins per account from clients it does not know, all together.
    fn ceiling_quota(&self) -> Quota {
        Quota { limit: self.cfg.login_account_ceiling, period: self.cfg.login_failure_window }
    }

    /// Past the ceiling: one attempt from an unknown client per this interval.
    fn slowdown_quota(&self) -> Quota {
        Quota { limit: 1, period: self.cfg.login_failure_window / self.cfg.login_account_ceiling.max(1) }
    }

    /// The strength verdict on a password that passed the cheap checks (zxcvbn, on the pool);
    /// `admitted`: a later step of a request whose first password job already ran.
    async fn judge(
        &self,
        field: &str,
        candidate: PasswordCandidate,
        known: &[&str],
        admitted: bool,
    ) -> Result<NewPassword, AuthError> {
        let known = known.iter().map(|w| (*w).to_owned()).collect();
        let score = if admitted {
            self.hasher.then_strength(candidate.secret(), known).await?
        } else {
            self.hasher.strength(candidate.secret(), known).await?
        };
        candidate.judge(field, score).map_err(|e| AuthError::Validation(vec![e]))
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
        if self.hasher.is_full() {
            return Err(AuthError::Busy);
        }
        let mut errors = Vec::new();
        let email = Email::parse("email", email).map_err(|e| errors.push(e)).ok();
        let name = name.map(|n| UserName::parse("name", n)).transpose().map_err(|e| errors.push(e)).ok().flatten();
        let known = known_words(email.as_ref().map(Email::as_str), name.as_ref().map(UserName::as_str));
        let password = match NewPassword::precheck("password", password) {
            Ok(candidate) => match self.judge("password", candidate, &known, false).await {
                Ok(p) => Some(p),
                Err(AuthError::Validation(e)) => {
                    errors.extend(e);
                    None
                }
                Err(other) => return Err(other),
            },
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let (Some(email), Some(password), true) = (email, password, errors.is_empty()) else {
            return Err(AuthError::Validation(errors));
        };
        let hash = self.hasher.then_hash(password.secret()).await?;
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
            credential_epoch: 0,
        };
        match self.store.insert_user(&user).await {
            Err(StoreError::Conflict) => return Err(AuthError::Conflict("an account with this email already exists".to_owned())),
            other => other?,
        }
        self.audit(meta, Some(&user.id), "user.register", Some(&user.id), serde_json::json!({ "role": role.as_str() })).await;
        Ok(user)
    }

    /// Sign-ins from clients the account does not know write a `new_sign_in` email
    /// (`TOLLGATE_MAIL_NEW_SIGN_IN`).
    pub fn with_new_sign_in_mail(mut self, on: bool) -> AuthService {
        self.new_sign_in_mail = on;
        self
    }

    /// What a device cookie says, if it is genuine.
    fn device_of<'a>(&self, cookie: &'a str) -> Option<DeviceCookie<'a>> {
        device_cookie_owner(&self.device_key, cookie)
    }

    /// Waits for the account's next slot for an unknown client past the ceiling, up to
    /// [`MAX_SLOWDOWN`]; a longer wait is a 429 with the time left.
    async fn slow_down(&self, email: &str) -> Result<(), AuthError> {
        let key = account_key(email, "slow");
        let deadline = tokio::time::Instant::now() + MAX_SLOWDOWN;
        loop {
            match self.limiter.hit(&key, self.slowdown_quota()).await {
                Decision::Allowed { .. } => return Ok(()),
                Decision::Limited { limit, retry_after } => {
                    if tokio::time::Instant::now() + retry_after > deadline {
                        return Err(AuthError::RateLimited { limit, retry_after });
                    }
                    tokio::time::sleep(retry_after).await;
                }
            }
        }
    }

    /// Checks a password login. Unknown email, wrong password and disabled account give the same
    /// error after the same work (a dummy hash, and the same queries, for unknown emails). Guessing
    /// is bounded without handing anyone a lockout (README "Login limits"):
    /// - per client IP, across accounts (`login_ip_limit`);
    /// - per account and client (its device cookie, else its address): `login_max_failures`
    ///   failures in any `login_failure_window`, then 429 for that client only;
    /// - per account, for clients that never logged in to it: `login_account_ceiling` failures in
    ///   the window, then each such attempt waits its turn, one per window / ceiling.
    ///   A device or address that logged in to the account before, with the password it has now,
    ///   is never slowed.
    ///
    /// Only a password actually checked and wrong uses up an attempt: one refused before that
    /// (the password queue full, the database down) gives its counts back.
    async fn authenticate(&self, email: &str, password: &SecretString, meta: &RequestMeta) -> Result<Authenticated, AuthError> {
        let ip_limit = format!("login:ip:{}", client_key(&meta.ip));
        if let Decision::Limited { limit, retry_after } = self.limiter.hit(&ip_limit, self.ip_quota()).await {
            return Err(AuthError::RateLimited { limit, retry_after });
        }
        // A browser with a genuine device cookie may be the owner: it is let in even when the
        // password queue is full (whether the cookie is this account's is seen below). Anyone
        // else gets 503 before anything (not even a database read) is spent on the attempt.
        let cookie = meta.device.as_deref().and_then(|c| self.device_of(c));
        if cookie.is_none() && self.hasher.is_full() {
            self.limiter.refund(&ip_limit, self.ip_quota()).await;
            return Err(AuthError::Busy);
        }
        let email = Email::parse("email", email).map_err(|e| AuthError::Validation(vec![e]))?;
        let user = self.store.user_by_email(email.as_str()).await?;
        // A device cookie counts for the account it was made for, at the password it has now.
        let device = cookie
            .filter(|d| user.as_ref().is_some_and(|u| u.id == d.user_id && u.credential_epoch == d.epoch))
            .map(|d| d.nonce.to_owned());
        let ip_key = client_key(&meta.ip);
        let client = match &device {
            Some(nonce) => format!("device:{nonce}"),
            None => format!("ip:{ip_key}"),
        };
        // Attempts are counted before the password is checked, so guesses sent in parallel all
        // count; a successful login, or one refused before the check, gives its counts back.
        let client_limit = account_key(email.as_str(), &client);
        if let Decision::Limited { limit, retry_after } = self.limiter.hit_window(&client_limit, self.client_quota()).await {
            return Err(AuthError::RateLimited { limit, retry_after });
        }
        let counted = Counted {
            limiter: self.limiter.as_ref(),
            ip: Some((ip_limit, self.ip_quota())),
            client: client_limit,
            ceiling: None,
        };
        self.check_password(user, password, meta, device, &ip_key, email.as_str(), counted).await
    }

    /// The rest of [`AuthService::authenticate`], with the attempt counted in `counted`.
    #[allow(clippy::too_many_arguments)]
    async fn check_password(
        &self,
        user: Option<User>,
        password: &SecretString,
        meta: &RequestMeta,
        device: Option<String>,
        ip_key: &str,
        email: &str,
        mut counted: Counted<'_>,
    ) -> Result<Authenticated, AuthError> {
        let now = Utc::now();
        // The same query whether the account exists or not, so its time tells nothing.
        let lookup_id = user.as_ref().map_or("usr_none", |u| u.id.as_str());
        let known_ip = match self.store.known_client(lookup_id, ip_key, now - KNOWN_CLIENT_FOR).await {
            Ok(known) => known && user.is_some(),
            Err(e) => return Err(counted.give_back(e.into()).await),
        };
        let known = device.is_some() || known_ip;
        if !known {
            let ceiling = account_key(email, "strangers");
            match self.limiter.hit_window(&ceiling, self.ceiling_quota()).await {
                Decision::Allowed { .. } => counted.ceiling = Some(ceiling),
                Decision::Limited { .. } => {
                    if let Err(e) = self.slow_down(email).await {
                        return Err(counted.give_back(e).await);
                    }
                }
            }
        }
        let stored = user.as_ref().map(|u| u.password_hash.as_str());
        // The account's own devices are checked whatever the queue holds, in the lane served first.
        let checked = if device.is_some() {
            self.hasher.verify_admitted(password, stored).await
        } else {
            self.hasher.verify(password, stored).await
        };
        let verified = match checked {
            Ok(v) => v,
            Err(e) => return Err(counted.give_back(e.into()).await),
        };
        let failure = match &user {
            None => Some("unknown_email"),
            Some(_) if !verified.ok => Some("bad_password"),
            Some(u) if u.disabled => Some("disabled"),
            Some(_) => None,
        };
        if let Some(reason) = failure {
            let actor = user.as_ref().map(|u| u.id.as_str());
            self.audit(meta, actor, "login.failure", actor, serde_json::json!({ "reason": reason, "known_client": known })).await;
            return Err(AuthError::InvalidCredentials);
        }
        let user = user.ok_or(AuthError::InvalidCredentials)?;
        counted.release().await;
        if verified.needs_rehash {
            let upgraded = self.hasher.then_hash(password).await?;
            // Only if the hash is still the one we verified: a password change in between wins.
            self.store.upgrade_password_hash(&user.id, &user.password_hash, &upgraded, Utc::now()).await?;
        }
        Ok(Authenticated { user, device, ip_key: ip_key.to_owned(), known })
    }

    /// After a credential was stored for a successful login: its address becomes known to the
    /// account, and the success is audited.
    async fn logged_in(&self, who: &Authenticated, meta: &RequestMeta) -> Result<(), AuthError> {
        let now = Utc::now();
        if self.new_sign_in_mail && !who.known {
            // "A new sign-in to your account", born with the client's first remembered success.
            let ip = if meta.ip.is_empty() { "unknown" } else { meta.ip.as_str() };
            let agent = meta.user_agent.as_deref().map(str::trim).filter(|a| !a.is_empty()).unwrap_or("unknown");
            let notice = serde_json::json!({ "at": now, "ip": ip, "user_agent": agent });
            self.store.remember_new_client(&who.user.id, &who.ip_key, who.user.credential_epoch, &notice, now).await?;
        } else if !meta.ip.is_empty() {
            self.store.remember_client(&who.user.id, &who.ip_key, who.user.credential_epoch, now).await?;
        }
        self.audit(meta, Some(&who.user.id), "login.success", Some(&who.user.id), serde_json::json!({})).await;
        Ok(())
    }

    /// Password login for browsers: always a new session token (no fixation), and a device cookie
    /// when the browser has none for this account at its current password (it marks the browser
    /// as known to the account).
    pub async fn login(&self, email: &str, password: &SecretString, meta: &RequestMeta) -> Result<NewSession, AuthError> {
        let who = self.authenticate(email, password, meta).await?;
        let now = Utc::now();
        let token = random_token();
        let expires_at = now + chrono_of(self.cfg.session_lifetime);
        let row = SessionRow {
            id: new_id("ses"),
            token_hash: token_hash(&token),
            user_id: who.user.id.clone(),
            created_at: now,
            last_seen_at: now,
            expires_at,
            ip: Some(meta.ip.clone()),
            user_agent: meta.user_agent.clone(),
            credential_epoch: who.user.credential_epoch,
        };
        // Refused when the password changed or the account was disabled since it was verified.
        if !self.store.insert_session(&row).await? {
            return Err(AuthError::InvalidCredentials);
        }
        self.logged_in(&who, meta).await?;
        let csrf_token = csrf_token_for(&token);
        let device_cookie =
            who.device.is_none().then(|| device_cookie(&self.device_key, &who.user.id, who.user.credential_epoch));
        Ok(NewSession { user: who.user, token, csrf_token, expires_at, device_cookie })
    }

    /// Password login for API clients: a new token family and its first pair.
    pub async fn token(&self, email: &str, password: &SecretString, meta: &RequestMeta) -> Result<TokenPair, AuthError> {
        let who = self.authenticate(email, password, meta).await?;
        let family = new_id("fam");
        if !self.store.insert_family(&family, &who.user.id, who.user.credential_epoch, Utc::now()).await? {
            return Err(AuthError::InvalidCredentials);
        }
        self.logged_in(&who, meta).await?;
        self.issue_pair(&who.user.id, &family).await
    }

    async fn issue_pair(&self, user_id: &str, family_id: &str) -> Result<TokenPair, AuthError> {
        let now = Utc::now();
        let refresh_token = random_token();
        let expires_at = now + chrono_of(self.cfg.refresh_token_ttl);
        self.store.insert_refresh(&token_hash(&refresh_token), family_id, user_id, now, expires_at).await?;
        let (access_token, claims) = self.jwt.issue(user_id, family_id, now.timestamp());
        Ok(TokenPair { access_token, expires_in: claims.exp - claims.iat, refresh_token })
    }

    /// The user of a live family: not revoked, of the user's current credential epoch, the user
    /// enabled. Read from the database (a refresh, which writes anyway, wants it exact).
    async fn family_user(&self, family_id: &str, user_id: &str) -> Result<Option<Arc<User>>, AuthError> {
        let Some(family) = self.store.family(family_id).await? else { return Ok(None) };
        let user = self.store.user_by_id(user_id).await?.map(Arc::new);
        Ok(live_family_user(&family, user_id, user))
    }

    /// As [`AuthService::family_user`], through the read view (`store/view.rs`): no query while
    /// the view holds both rows and may use them (README "Sessions, tokens and logout").
    async fn viewed_family_user(&self, family_id: &str, user_id: &str) -> Result<Option<Arc<User>>, AuthError> {
        let view = self.store.view();
        let ticket = view.ticket(user_id);
        let family = match view.family(user_id, family_id) {
            Some(f) => f,
            None => {
                let Some(f) = self.store.family(family_id).await? else { return Ok(None) };
                let f = Arc::new(f);
                view.put_family(&ticket, user_id, family_id, &f);
                f
            }
        };
        if family.revoked || family.user_id != user_id {
            return Ok(None);
        }
        let user = self.viewed_user(user_id, &ticket).await?;
        Ok(live_family_user(&family, user_id, user))
    }

    /// The user row through the read view; `ticket` was taken before any database read made for
    /// this request.
    async fn viewed_user(&self, user_id: &str, ticket: &Ticket) -> Result<Option<Arc<User>>, AuthError> {
        let view = self.store.view();
        if let Some(user) = view.user(user_id) {
            return Ok(Some(user));
        }
        let user = self.store.user_by_id(user_id).await?.map(Arc::new);
        if let Some(u) = &user {
            view.put_user(ticket, u);
        }
        Ok(user)
    }

    /// Spends a refresh token for a new pair. A spent token presented again revokes its whole
    /// family (one of the two presenters is a thief, and we cannot tell which), except within
    /// `refresh_grace` of its use while its successor is still unused: then the client lost the
    /// answer, and gets the same new refresh token again (with a new access token).
    pub async fn refresh(&self, refresh_token: &str, meta: &RequestMeta) -> Result<TokenPair, AuthError> {
        let now = Utc::now();
        let presented = token_hash(refresh_token);
        match self.store.spend_refresh(&presented, now).await? {
            SpendOutcome::Unknown => Err(AuthError::Unauthenticated),
            SpendOutcome::Reused { family_id, user_id, used_at, successor } => {
                let grace = chrono_of(self.cfg.refresh_grace);
                let in_grace = used_at.is_some_and(|t| now - t <= grace) && !grace.is_zero();
                if in_grace {
                    if let Some((successor_hash, sealed)) = successor {
                        let again = unseal_token(&sealed, refresh_token).filter(|t| token_hash(t) == successor_hash);
                        if let Some(again) = again {
                            if self.store.refresh_unspent(&successor_hash).await?
                                && self.family_user(&family_id, &user_id).await?.is_some()
                            {
                                let (access_token, claims) = self.jwt.issue(&user_id, &family_id, now.timestamp());
                                self.audit(meta, Some(&user_id), "token.refresh_retry", Some(&family_id), serde_json::json!({}))
                                    .await;
                                return Ok(TokenPair { access_token, expires_in: claims.exp - claims.iat, refresh_token: again });
                            }
                        }
                    } else {
                        // The first presentation is still being answered: not a theft signal yet.
                        return Err(AuthError::Unauthenticated);
                    }
                }
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
                if expires_at <= now {
                    return Err(AuthError::Unauthenticated);
                }
                let Some(user) = self.family_user(&family_id, &user_id).await? else {
                    return Err(AuthError::Unauthenticated);
                };
                let pair = self.issue_pair(&user.id, &family_id).await?;
                if let Some(sealed) = seal_token(&pair.refresh_token, refresh_token) {
                    self.store.set_successor(&presented, &token_hash(&pair.refresh_token), &sealed).await?;
                }
                Ok(pair)
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

    /// The user behind a session cookie, if the session is live (idle and absolute limits, the
    /// user's current credential epoch), and when it was last seen. Nothing is written here for a
    /// live session: see [`AuthService::touch_session`].
    ///
    /// `read` is the session row [`AuthService::live_session`] read moments ago in the same request
    /// (the rate limiter did), when it found one: it is not read twice.
    pub async fn session_user_read(
        &self,
        token: &str,
        read: Option<LiveSession>,
    ) -> Result<(Arc<User>, Credential, DateTime<Utc>), AuthError> {
        let now = Utc::now();
        let session = match read {
            Some(LiveSession(row)) => *row,
            None => self.store.session_by_token_hash(&token_hash(token)).await?.ok_or(AuthError::Unauthenticated)?,
        };
        let idle_deadline = session.last_seen_at + chrono_of(self.cfg.session_idle_timeout);
        if session.expires_at <= now || idle_deadline <= now {
            self.store.delete_session(&session.id).await?;
            return Err(AuthError::Unauthenticated);
        }
        // The session row is always read (idle expiry and activity need it); the user through the view.
        let ticket = self.store.view().ticket(&session.user_id);
        let user =
            self.viewed_user(&session.user_id, &ticket).await?.filter(|u| !u.disabled).ok_or(AuthError::Unauthenticated)?;
        if user.credential_epoch != session.credential_epoch {
            self.store.delete_session(&session.id).await?;
            return Err(AuthError::Unauthenticated);
        }
        Ok((user, Credential::Session { session_id: session.id, csrf_token: csrf_token_for(token) }, session.last_seen_at))
    }

    /// An access token's claims when its signature and times verify (no database: for the rate
    /// limiter, which must not cost more than the request it limits, and then for
    /// [`AuthService::bearer_user_verified`] later in the same request).
    pub fn access_claims(&self, token: &str) -> Option<std::sync::Arc<Claims>> {
        self.jwt.verify(token, Utc::now().timestamp()).ok()
    }

    /// The row of a session cookie that has not expired (one read, nothing changed: for the rate
    /// limiter, which hands it to [`AuthService::session_user_read`]; the idle timeout, the user
    /// and the credential epoch are checked there).
    pub async fn live_session(&self, token: &str) -> Option<LiveSession> {
        let session = self.store.session_by_token_hash(&token_hash(token)).await.ok()??;
        (session.expires_at > Utc::now()).then(|| LiveSession(Box::new(session)))
    }

    /// The user behind an access token: signature and claims, then the family (logout, theft
    /// detection and password changes end it) and the user (disabling ends access at once, not at
    /// expiry).
    ///
    /// Through the read view: a logout or a disable is seen at once on this instance and within a
    /// second on every other (README "Sessions, tokens and logout").
    pub async fn bearer_user(&self, token: &str) -> Result<(Arc<User>, Credential), AuthError> {
        self.bearer(token, true).await
    }

    /// As [`AuthService::bearer_user`], from the database: for token introspection, whose callers
    /// (the merchant's servers) are promised that a logout or a disable shows on their next call.
    pub async fn bearer_user_now(&self, token: &str) -> Result<(Arc<User>, Credential), AuthError> {
        self.bearer(token, false).await
    }

    /// As [`AuthService::bearer_user`], for a token whose `claims` [`AuthService::access_claims`]
    /// verified moments ago in the same request (the rate limiter did): not verified twice.
    pub async fn bearer_user_verified(&self, claims: std::sync::Arc<Claims>) -> Result<(Arc<User>, Credential), AuthError> {
        self.bearer_claims(claims, true).await
    }

    async fn bearer(&self, token: &str, viewed: bool) -> Result<(Arc<User>, Credential), AuthError> {
        let claims = self.jwt.verify(token, Utc::now().timestamp()).map_err(|e| {
            tracing::info!(reason = %e, "access token refused");
            AuthError::Unauthenticated
        })?;
        self.bearer_claims(claims, viewed).await
    }

    async fn bearer_claims(&self, claims: std::sync::Arc<Claims>, viewed: bool) -> Result<(Arc<User>, Credential), AuthError> {
        let user = if viewed {
            self.viewed_family_user(&claims.fam, &claims.sub).await?
        } else {
            self.family_user(&claims.fam, &claims.sub).await?
        };
        let user = user.ok_or(AuthError::Unauthenticated)?;
        Ok((user, Credential::Bearer { family_id: claims.fam.clone(), claims }))
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

    /// The caller's live browser sessions, newest first.
    pub async fn sessions(&self, user: &User, limit: i64, starting_after: Option<&str>) -> Result<SessionPage, AuthError> {
        let now = Utc::now();
        let idle_cutoff = now - chrono_of(self.cfg.session_idle_timeout);
        let mut sessions =
            self.store.list_live_sessions(&user.id, user.credential_epoch, now, idle_cutoff, limit + 1, starting_after).await?;
        let has_more = sessions.len() > usize::try_from(limit).unwrap_or(0);
        sessions.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(SessionPage { sessions, has_more })
    }

    /// Removes expired sessions, refresh tokens, token families and login clients (hourly).
    pub async fn purge_expired(&self) -> Result<Purged, AuthError> {
        let now = Utc::now();
        Ok(self
            .store
            .purge_expired(
                now,
                now - chrono_of(self.cfg.session_idle_timeout),
                now - chrono_of(self.cfg.access_token_ttl),
                now - KNOWN_CLIENT_FOR,
            )
            .await?)
    }

    /// Changes the password and ends every other session and token family of the user. The
    /// current password is checked first (under its own limiter, per credential, never the login
    /// one): the new password's strength is only judged for someone who knows the current one.
    /// For a browser session, returns the device cookie of the new password.
    pub async fn change_password(
        &self,
        user: &User,
        credential: &Credential,
        current: &SecretString,
        new: &SecretString,
        meta: &RequestMeta,
    ) -> Result<Option<String>, AuthError> {
        // Per credential: someone holding one stolen session cannot use up the owner's attempts.
        let credential_id = match credential {
            Credential::Session { session_id, .. } => session_id.as_str(),
            Credential::Bearer { family_id, .. } => family_id.as_str(),
        };
        let limit_key = format!("password_change:{}:{credential_id}", user.id);
        if let Decision::Limited { limit, retry_after } = self.limiter.hit_window(&limit_key, self.client_quota()).await {
            return Err(AuthError::RateLimited { limit, retry_after });
        }
        let verified = match self.hasher.verify(current, Some(&user.password_hash)).await {
            Ok(v) => v,
            Err(e) => {
                self.limiter.refund_window(&limit_key).await;
                return Err(e.into());
            }
        };
        let mut errors = Vec::new();
        if verified.ok {
            self.limiter.refund_window(&limit_key).await;
        } else {
            errors.push(FieldError::new("current_password", "is incorrect"));
        }
        let candidate = NewPassword::precheck("new_password", new).map_err(|e| errors.push(e)).ok();
        if current.expose_secret() == new.expose_secret() {
            errors.push(FieldError::new("new_password", "must differ from the current password"));
        }
        let (Some(candidate), true) = (candidate, errors.is_empty()) else {
            return Err(AuthError::Validation(errors));
        };
        let known = known_words(Some(&user.email), user.name.as_deref());
        let new_password = self.judge("new_password", candidate, &known, true).await?;
        let hash = self.hasher.then_hash(new_password.secret()).await?;
        let keep = match credential {
            Credential::Session { session_id, .. } => Keep::Session(session_id),
            Credential::Bearer { family_id, .. } => Keep::Family(family_id),
        };
        match self.store.change_password(&user.id, &user.password_hash, &hash, keep, Utc::now()).await? {
            PasswordChanged::Stale => {
                Err(AuthError::Conflict("the password was changed by another request; sign in again".to_owned()))
            }
            PasswordChanged::Changed { sessions_ended, families_revoked } => {
                self.audit(
                    meta,
                    Some(&user.id),
                    "password.change",
                    Some(&user.id),
                    serde_json::json!({ "sessions_ended": sessions_ended, "families_revoked": families_revoked }),
                )
                .await;
                // Device cookies of the old password no longer count; the browser that made the
                // change gets one for the new password.
                let device = matches!(credential, Credential::Session { .. })
                    .then(|| device_cookie(&self.device_key, &user.id, user.credential_epoch + 1));
                Ok(device)
            }
        }
    }

    /// An admin's change to a user's role or disabled flag. Disabling ends every session and
    /// token family of the user at once. An admin cannot demote or disable themselves, and no
    /// change may leave no enabled admin (checked under a lock, so two admins demoting each other
    /// at once cannot both succeed).
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
        let (before, after) = match self.store.update_user_flags(Some(&admin.id), id, role, disabled, Utc::now()).await? {
            FlagsChanged::NotFound => return Err(AuthError::NotFound),
            FlagsChanged::NotAdmin => return Err(AuthError::Forbidden("you are no longer an admin".to_owned())),
            FlagsChanged::LastAdmin => {
                return Err(AuthError::Conflict("this would leave no enabled admin".to_owned()));
            }
            FlagsChanged::Updated { before, after, .. } => (*before, *after),
        };
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
