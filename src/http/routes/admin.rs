//! `/api/v1/admin/*`: user management and the audit log. Every handler takes `AdminUser`.

use axum::extract::{Path, RawQuery, State};
use axum::routing::{get, patch};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::domain::account::{Role, User};
use crate::domain::FieldError;
use crate::http::auth::{AdminUser, Meta};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::Json;
use crate::store::AuditEntry;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/users", get(list_users))
        .route("/api/v1/admin/users/{id}", patch(update_user))
        .route("/api/v1/admin/audit", get(list_audit))
}

/// `?limit=` (1–100, default 20) and `?starting_after=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1–100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The last id of the previous page.
    pub starting_after: Option<String>,
}

/// `?limit=` and `?starting_after=` for the audit log, whose ids are integers.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditListParams {
    /// 1–100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The last id of the previous page.
    pub starting_after: Option<i64>,
}

/// Parses list parameters, reporting each bad one as a 422 field error.
pub(crate) fn list_params(raw: Option<String>) -> Result<(i64, Option<String>), ApiError> {
    let mut limit = 20;
    let mut after = None;
    let mut errors = Vec::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "limit" => match v.parse::<i64>() {
                Ok(n) if (1..=100).contains(&n) => limit = n,
                _ => errors.push(FieldError::new("limit", "must be an integer from 1 to 100")),
            },
            "starting_after" if !v.is_empty() => after = Some(v.into_owned()),
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok((limit, after))
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// A page of at most `limit` from `limit + 1` fetched rows, and whether there are more.
pub(crate) fn page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let limit = usize::try_from(limit).unwrap_or(0);
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    (rows, has_more)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminUserOut {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

impl From<&User> for AdminUserOut {
    fn from(u: &User) -> AdminUserOut {
        AdminUserOut {
            id: u.id.clone(),
            email: u.email.clone(),
            name: u.name.clone(),
            role: u.role,
            disabled: u.disabled,
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub data: Vec<AdminUserOut>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UserPatchIn {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub data: Vec<AuditEntry>,
    pub has_more: bool,
}

/// Every user, newest first.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", params(ListParams), security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "A page of users", body = UserList),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad list parameters", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_users(
    State(state): State<AppState>,
    _admin: AdminUser,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::Json<UserList>> {
    let (limit, after) = list_params(q)?;
    let users = state.store.list_users(limit + 1, after.as_deref()).await.map_err(anyhow::Error::from)?;
    let (users, has_more) = page(users, limit);
    Ok(axum::Json(UserList { data: users.iter().map(AdminUserOut::from).collect(), has_more }))
}

/// Change a user's role or disable them; disabling ends their sessions and tokens at once.
#[utoipa::path(patch, path = "/api/v1/admin/users/{id}", tag = "admin", request_body = UserPatchIn, security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "A user id (`usr_…`)")),
    responses(
        (status = 200, description = "The updated user", body = AdminUserOut),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin, or missing X-CSRF-Token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An admin cannot demote or disable themselves", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_user(
    State(state): State<AppState>,
    Meta(meta): Meta,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
    Json(input): Json<UserPatchIn>,
) -> ApiResult<axum::Json<AdminUserOut>> {
    let user = state.auth.admin_update_user(&admin.user, &id, input.role, input.disabled, &meta).await?;
    Ok(axum::Json(AdminUserOut::from(&user)))
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", params(AuditListParams), security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "A page of audit entries", body = AuditList),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad list parameters", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_audit(
    State(state): State<AppState>,
    _admin: AdminUser,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::Json<AuditList>> {
    let (limit, after) = list_params(q)?;
    let after = match after.map(|a| a.parse::<i64>()) {
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Err(ApiError::Validation(vec![FieldError::new("starting_after", "must be an audit entry id")])),
        None => None,
    };
    let rows = state.store.list_audit_page(limit + 1, after).await.map_err(anyhow::Error::from)?;
    let (rows, has_more) = page(rows, limit);
    Ok(axum::Json(AuditList { data: rows, has_more }))
}
