//! `/api/v1/admin/*`: user management and the audit log. Every handler takes `AdminUser`.

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::account::{Role, User};
use crate::http::auth::{AdminUser, Meta};
use crate::http::error::{ApiResult, Problem};
use crate::http::extract::{Json, Query};
use crate::http::pagination::{page, AuditListParams, ListParams};
use crate::http::responses::{AdminOnly, BadListParameters, JsonBody, Unauthenticated};
use crate::http::state::AppState;
use crate::store::AuditEntry;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_users)).routes(routes!(update_user)).routes(routes!(list_audit))
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
        Unauthenticated, AdminOnly, BadListParameters,
    ))]
pub async fn list_users(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(list): Query<ListParams>,
) -> ApiResult<axum::Json<UserList>> {
    let users = state.store.list_users(list.limit.fetch(), list.starting_after.as_deref()).await?;
    let (users, has_more) = page(users, list.limit);
    Ok(axum::Json(UserList { data: users.iter().map(AdminUserOut::from).collect(), has_more }))
}

/// Change a user's role or disable them; disabling ends their sessions and tokens at once.
#[utoipa::path(patch, path = "/api/v1/admin/users/{id}", tag = "admin", request_body = UserPatchIn, security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "A user id (`usr_…`)")),
    responses(
        (status = 200, description = "The updated user", body = AdminUserOut),
        Unauthenticated, JsonBody,
        (status = 403, description = "Not an admin, or missing X-CSRF-Token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An admin cannot demote or disable themselves", body = Problem, content_type = "application/problem+json"),
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
        Unauthenticated, AdminOnly, BadListParameters,
    ))]
pub async fn list_audit(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(list): Query<AuditListParams>,
) -> ApiResult<axum::Json<AuditList>> {
    let rows = state.store.list_audit_page(list.limit.fetch(), list.starting_after).await?;
    let (rows, has_more) = page(rows, list.limit);
    Ok(axum::Json(AuditList { data: rows, has_more }))
}
