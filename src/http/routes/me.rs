//! `/api/v1/me*`: the caller's own account and sessions.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::auth::Credential;
use crate::domain::payments::Entitlements;
use crate::http::auth::{device_cookie, CurrentUser, Meta};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{Json, Query};
use crate::http::pagination::ListParams;
use crate::http::responses::{CsrfChecked, JsonBody, PasswordQueueFull, Unauthenticated};
use crate::http::routes::auth::UserOut;
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(change_password))
        .routes(routes!(sessions))
        .routes(routes!(end_session))
        .routes(routes!(entitlements))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PasswordChangeIn {
    #[schema(value_type = String)]
    pub current_password: SecretString,
    #[schema(value_type = String, min_length = 12, max_length = 128)]
    pub new_password: SecretString,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionOut {
    #[schema(example = "ses_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The session this request was made with.
    pub current: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub data: Vec<SessionOut>,
    pub has_more: bool,
}

/// The authenticated user.
#[utoipa::path(get, path = "/api/v1/me", tag = "me", security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "The caller", body = UserOut),
        Unauthenticated,
    ))]
pub async fn me(current: CurrentUser) -> axum::Json<UserOut> {
    axum::Json(UserOut::from(&*current.user))
}

/// Change the password; every other session and token family of the user ends.
#[utoipa::path(post, path = "/api/v1/me/password", tag = "me", request_body = PasswordChangeIn, security(("bearer" = []), ("session" = [])),
    responses(
        (status = 204, description = "Changed"),
        Unauthenticated, CsrfChecked, JsonBody, PasswordQueueFull,
        (status = 422, description = "Wrong current password or a weak new one", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The password was changed by another request meanwhile", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong current passwords; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn change_password(
    State(state): State<AppState>,
    Meta(meta): Meta,
    current: CurrentUser,
    Json(input): Json<PasswordChangeIn>,
) -> ApiResult<Response> {
    let device = state
        .auth
        .change_password(&current.user, &current.credential, &input.current_password, &input.new_password, &meta)
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(device) = device {
        response.headers_mut().insert(header::SET_COOKIE, device_cookie(&state, &device));
    }
    Ok(response)
}

/// The caller's live browser sessions (neither expired nor idle), newest first.
#[utoipa::path(get, path = "/api/v1/me/sessions", tag = "me", params(ListParams), security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "Live sessions, newest first", body = SessionList),
        Unauthenticated,
        (status = 422, description = "Invalid limit", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn sessions(
    State(state): State<AppState>,
    current: CurrentUser,
    Query(list): Query<ListParams>,
) -> ApiResult<axum::Json<SessionList>> {
    let this = match &current.credential {
        Credential::Session { session_id, .. } => Some(session_id.as_str()),
        Credential::Bearer { .. } => None,
    };
    let page = state.auth.sessions(&current.user, list.limit.get(), list.starting_after.as_deref()).await?;
    let data = page
        .sessions
        .into_iter()
        .map(|s| SessionOut {
            current: this == Some(s.id.as_str()),
            id: s.id,
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            expires_at: s.expires_at,
            ip: s.ip,
            user_agent: s.user_agent,
        })
        .collect();
    Ok(axum::Json(SessionList { data, has_more: page.has_more }))
}

/// End one of the caller's sessions (another user's session id answers 404).
#[utoipa::path(delete, path = "/api/v1/me/sessions/{id}", tag = "me", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "A session id (`ses_…`)")),
    responses(
        (status = 204, description = "Ended"),
        Unauthenticated, CsrfChecked,
        (status = 404, description = "No such session of yours", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn end_session(State(state): State<AppState>, current: CurrentUser, Path(id): Path<String>) -> ApiResult<StatusCode> {
    if state.store.delete_user_session(&current.user.id, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccessOut {
    #[schema(example = "ent_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    #[schema(example = "pro")]
    pub feature: String,
    /// The order that bought it.
    pub order_id: String,
    pub starts_at: DateTime<Utc>,
    /// Null: forever.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntitlementsOut {
    /// Access the caller holds: current periods and, for a feature bought again, the periods queued
    /// after them (each purchase's period follows the one before). Suspended, revoked and expired
    /// grants are not listed.
    pub access: Vec<AccessOut>,
    /// Credits from paid orders that are neither refunded nor lost in a dispute.
    #[schema(example = 500)]
    pub credit_balance: i64,
}

/// What the caller owns now: active access grants and the credit balance.
#[utoipa::path(get, path = "/api/v1/me/entitlements", tag = "me", security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "Active grants and credits", body = EntitlementsOut),
        Unauthenticated,
    ))]
pub async fn entitlements(State(state): State<AppState>, current: CurrentUser) -> ApiResult<axum::Json<EntitlementsOut>> {
    let e = state.payments.viewed_entitlements(&current.user.id).await?;
    Ok(axum::Json(entitlements_out(e)))
}

/// What `user_id` owns now, read from the database (for API keys, `/users/{id}/entitlements`).
pub async fn entitlements_of(state: &AppState, user_id: &str) -> ApiResult<EntitlementsOut> {
    Ok(entitlements_out(state.payments.entitlements(user_id).await?))
}

/// The one shape of `/me/entitlements` and `/users/{id}/entitlements`.
fn entitlements_out(e: Entitlements) -> EntitlementsOut {
    let access = e
        .access
        .into_iter()
        .map(|g| AccessOut {
            id: g.id,
            feature: g.feature.unwrap_or_default(),
            order_id: g.order_id,
            starts_at: g.starts_at,
            expires_at: g.expires_at,
        })
        .collect();
    EntitlementsOut { access, credit_balance: e.credit_balance }
}
