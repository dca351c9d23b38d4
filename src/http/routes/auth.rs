//! `/api/v1/auth/*`: register, login/logout (browser sessions), csrf, token/refresh (API clients).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::account::{Role, User};
use crate::domain::auth::Credential;
use crate::http::auth::{cookie_value, device_cookie, session_cookie, CurrentUser, Meta};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::Json;
use crate::http::responses::{BodyTooLarge, CredentialsChecked, CsrfChecked, JsonBody, PasswordQueueFull, Unauthenticated};
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(csrf))
        .routes(routes!(token))
        .routes(routes!(refresh))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterIn {
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    pub email: String,
    /// 12–128 characters, not a common or easily guessed password.
    #[schema(value_type = String, min_length = 12, max_length = 128, example = "correct horse battery staple 42")]
    pub password: SecretString,
    #[schema(example = "Ada Lovelace")]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CredentialsIn {
    #[schema(format = Email, max_length = 254, example = "ada@example.com")]
    pub email: String,
    #[schema(value_type = String, example = "correct horse battery staple 42")]
    pub password: SecretString,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshIn {
    #[schema(value_type = String)]
    pub refresh_token: SecretString,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserOut {
    #[schema(example = "usr_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

impl From<&User> for UserOut {
    fn from(u: &User) -> UserOut {
        UserOut { id: u.id.clone(), email: u.email.clone(), name: u.name.clone(), role: u.role, created_at: u.created_at }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginOut {
    pub user: UserOut,
    /// Send this as `X-CSRF-Token` on every state-changing request made with the session cookie.
    pub csrf_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CsrfOut {
    pub csrf_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenOut {
    /// A signed JWT (HS256) for `Authorization: Bearer`.
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until the access token expires.
    #[schema(example = 900)]
    pub expires_in: i64,
    /// Opaque, single use: exchange it at `/api/v1/auth/refresh` for a new pair.
    pub refresh_token: String,
}

/// Create an account.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterIn,
    responses(
        (status = 201, description = "The new user", body = UserOut),
        JsonBody, BodyTooLarge, PasswordQueueFull,
        (status = 409, description = "The email is taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (email, weak password, name)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many registrations from this client; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn register(
    State(state): State<AppState>,
    Meta(meta): Meta,
    Json(input): Json<RegisterIn>,
) -> ApiResult<(StatusCode, axum::Json<UserOut>)> {
    let user = state.auth.register(&input.email, &input.password, input.name.as_deref(), Role::User, &meta).await?;
    Ok((StatusCode::CREATED, axum::Json(UserOut::from(&user))))
}

/// Log in with a password: sets the session cookie and returns the CSRF token.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = CredentialsIn,
    responses(
        (status = 200, description = "Logged in; `Set-Cookie` carries a new session (and, the first time on this browser, a device cookie that marks it as known to the account)", body = LoginOut),
        JsonBody, BodyTooLarge, CredentialsChecked, PasswordQueueFull,
        (status = 401, description = "Invalid email or password (the same answer for every reason)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login(
    State(state): State<AppState>,
    Meta(mut meta): Meta,
    headers: HeaderMap,
    Json(input): Json<CredentialsIn>,
) -> ApiResult<Response> {
    meta.device = cookie_value(&headers, state.cookie.device_name).map(str::to_owned);
    let session = state.auth.login(&input.email, &input.password, &meta).await?;
    let max_age = (session.expires_at - Utc::now()).num_seconds().max(0);
    let body = LoginOut { user: UserOut::from(&session.user), csrf_token: session.csrf_token };
    let mut response = axum::Json(body).into_response();
    response.headers_mut().append(header::SET_COOKIE, session_cookie(&state, Some(&session.token), max_age));
    if let Some(device) = &session.device_cookie {
        response.headers_mut().append(header::SET_COOKIE, device_cookie(&state, device));
    }
    Ok(response)
}

/// End the session (cookie) or revoke the token family (bearer).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 204, description = "Logged out"),
        Unauthenticated, CsrfChecked,
    ))]
pub async fn logout(State(state): State<AppState>, Meta(meta): Meta, current: CurrentUser) -> ApiResult<Response> {
    state.auth.logout(&current.user, &current.credential, &meta).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if matches!(current.credential, Credential::Session { .. }) {
        response.headers_mut().insert(header::SET_COOKIE, session_cookie(&state, None, 0));
    }
    Ok(response)
}

/// The CSRF token of the current session.
#[utoipa::path(get, path = "/api/v1/auth/csrf", tag = "auth",
    security(("session" = [])),
    responses(
        (status = 200, description = "The session's CSRF token", body = CsrfOut),
        (status = 401, description = "No live session", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn csrf(current: CurrentUser) -> ApiResult<axum::Json<CsrfOut>> {
    match current.credential {
        Credential::Session { csrf_token, .. } => Ok(axum::Json(CsrfOut { csrf_token })),
        Credential::Bearer { .. } => Err(ApiError::Unauthorized("CSRF tokens belong to browser sessions".to_owned())),
    }
}

/// Exchange email and password for an access token and a refresh token.
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "auth", request_body = CredentialsIn,
    responses(
        (status = 200, description = "A new token pair in a new family", body = TokenOut),
        JsonBody, BodyTooLarge, CredentialsChecked, PasswordQueueFull,
        (status = 401, description = "Invalid email or password", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn token(
    State(state): State<AppState>,
    Meta(meta): Meta,
    Json(input): Json<CredentialsIn>,
) -> ApiResult<axum::Json<TokenOut>> {
    let pair = state.auth.token(&input.email, &input.password, &meta).await?;
    Ok(axum::Json(token_out(pair)))
}

/// Spend a refresh token for a new pair. A spent token presented again revokes its whole family.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshIn,
    responses(
        (status = 200, description = "A new pair; the presented refresh token is spent", body = TokenOut),
        JsonBody, BodyTooLarge,
        (status = 401, description = "Unknown, expired, revoked or already spent refresh token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing field", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    Meta(meta): Meta,
    Json(input): Json<RefreshIn>,
) -> ApiResult<axum::Json<TokenOut>> {
    use secrecy::ExposeSecret;
    let pair = state.auth.refresh(input.refresh_token.expose_secret(), &meta).await?;
    Ok(axum::Json(token_out(pair)))
}

fn token_out(pair: crate::domain::auth::TokenPair) -> TokenOut {
    TokenOut {
        access_token: pair.access_token,
        token_type: "Bearer".to_owned(),
        expires_in: pair.expires_in,
        refresh_token: pair.refresh_token,
    }
}
