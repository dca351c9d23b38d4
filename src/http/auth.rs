//! Authentication extractors. Every protected route names one of these; nothing else decides who
//! the caller is. `CurrentUser` accepts a bearer token or a session cookie, and for a cookie on a
//! state-changing request also enforces CSRF; `AdminUser` adds the role check (deny by default).

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method};

use crate::config::CorsOrigins;
use crate::domain::account::{Role, User};
use crate::domain::apikeys::looks_like_key;
use crate::domain::auth::{Credential, RequestMeta};
use crate::domain::crypto::constant_time_eq;
use crate::http::error::ApiError;
use crate::http::extract::{ClientInfo, RequestId};
use crate::http::state::AppState;

pub const CSRF_HEADER: &str = "x-csrf-token";

/// The claims of the request's own bearer token, verified by the global budget
/// (`http/budget.rs`) before the handler runs; [`CurrentUser`] then does not verify it again.
/// Only ever inserted by the budget, from this request's `Authorization` header.
#[derive(Clone)]
pub struct VerifiedAccess(pub std::sync::Arc<crate::domain::jwt::Claims>);

/// The authenticated caller and how they proved it.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    /// Shared with the read view (`store/view.rs`), which hands out the row it holds.
    pub user: std::sync::Arc<User>,
    pub credential: Credential,
}

/// An authenticated caller with the `admin` role; anyone else gets 403.
#[derive(Debug, Clone)]
pub struct AdminUser(pub CurrentUser);

/// The value of cookie `name` in the request, if it is there exactly once. Two cookies of the same
/// name (one possibly planted for a parent domain) are ambiguous, and ambiguity is refused.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.trim());
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Who made the request, for the audit log and the limiters.
pub fn request_meta(parts: &Parts) -> RequestMeta {
    RequestMeta {
        ip: parts.extensions.get::<ClientInfo>().map(|c| c.ip.to_string()).unwrap_or_default(),
        user_agent: parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(256).collect()),
        request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default(),
        device: None,
    }
}

/// The request's audit metadata as an extractor.
pub struct Meta(pub RequestMeta);

impl<S: Send + Sync> FromRequestParts<S> for Meta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Meta(request_meta(parts)))
    }
}

fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A browser says where a request came from; a cross-site one never rides on our cookie.
fn cross_site(headers: &HeaderMap, state: &AppState) -> bool {
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let ours = state.config.public_url.origin().ascii_serialization();
    let listed = match &state.config.http.cors_origins {
        CorsOrigins::List(list) => list.iter().any(|o| o == origin),
        CorsOrigins::Any => false,
    };
    origin != ours && !listed
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
            let token = auth
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| ApiError::Unauthorized("expected Authorization: Bearer <access token>".to_owned()))?;
            // A merchant's server key is never a user: it works only on the routes its scopes name.
            if looks_like_key(token) {
                return Err(ApiError::Unauthorized("API keys are not accepted on user or admin routes".to_owned()));
            }
            let (user, credential) = match parts.extensions.remove::<VerifiedAccess>() {
                Some(VerifiedAccess(claims)) => state.auth.bearer_user_verified(claims).await?,
                None => state.auth.bearer_user(token).await?,
            };
            return Ok(CurrentUser { user, credential });
        }
        let token = cookie_value(&parts.headers, state.cookie.name)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("authentication required".to_owned()))?;
        // The row the global budget read for this request's cookie, when it did (`http/budget.rs`).
        let read = parts.extensions.remove::<crate::domain::auth::LiveSession>();
        let (user, credential, last_seen_at) = state.auth.session_user_read(token, read).await?;
        if is_state_changing(&parts.method) {
            if cross_site(&parts.headers, state) {
                return Err(ApiError::Forbidden("cross-site request refused".to_owned()));
            }
            let Credential::Session { csrf_token, .. } = &credential else {
                return Err(ApiError::Internal(anyhow::anyhow!("session credential expected")));
            };
            let sent = parts.headers.get(CSRF_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
            if !constant_time_eq(sent, csrf_token.as_bytes()) {
                return Err(ApiError::Forbidden("missing or wrong X-CSRF-Token".to_owned()));
            }
        }
        // Only an accepted request counts as activity.
        state.auth.touch_session(&credential, last_seen_at).await?;
        Ok(CurrentUser { user, credential })
    }
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let current = CurrentUser::from_request_parts(parts, state).await?;
        if current.user.role != Role::Admin {
            return Err(ApiError::Forbidden("this needs the admin role".to_owned()));
        }
        Ok(AdminUser(current))
    }
}

/// `Set-Cookie` for one of our cookies: HttpOnly, SameSite=Lax, Path=/, Secure over https.
fn set_cookie(state: &AppState, name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
    let secure = if state.cookie.secure { "; Secure" } else { "" };
    let header = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}");
    HeaderValue::from_str(&header).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` for the device cookie (180 days).
pub fn device_cookie(state: &AppState, value: &str) -> HeaderValue {
    set_cookie(state, state.cookie.device_name, value, 180 * 86_400)
}

/// `Set-Cookie` for a new session (or, with `None`, one that clears it).
pub fn session_cookie(state: &AppState, token: Option<&str>, max_age_secs: i64) -> HeaderValue {
    match token {
        Some(t) => set_cookie(state, state.cookie.name, t, max_age_secs),
        None => set_cookie(state, state.cookie.name, "", 0),
    }
}
