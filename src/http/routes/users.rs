//! `/api/v1/users*`: what the merchant's servers ask about a user, with an API key. Each handler
//! takes `ApiKeyCaller` and requires its scope first (deny by default). An unknown user id is 404,
//! the same answer for every key that holds the scope.

use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::apikeys::Scope;
use crate::domain::FieldError;
use crate::http::apikey::ApiKeyCaller;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::Query;
use crate::http::pagination::{non_empty, page, ListParams};
use crate::http::responses::KeyAuthenticated;
use crate::http::routes::auth::UserOut;
use crate::http::routes::checkout::{OrderList, OrderOut};
use crate::http::routes::me::{entitlements_of, EntitlementsOut};
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(find_users)).routes(routes!(user_entitlements)).routes(routes!(user_orders))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserSearchParams {
    /// The address, compared as registration folds it (case-insensitive, trimmed). Required.
    #[serde(default, deserialize_with = "non_empty")]
    #[param(required = true, value_type = String, example = "buyer@example.com")]
    pub email: Option<String>,
}

/// At most one user: a list, as Stripe's `GET /v1/customers?email=` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserSearchList {
    pub data: Vec<UserOut>,
    /// Always false (an address belongs to one user at most).
    pub has_more: bool,
}

/// The user with this email, if any (key with `users:read`).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(UserSearchParams), security(("api_key" = [])),
    responses(
        (status = 200, description = "The user with this address, or an empty list", body = UserSearchList),
        KeyAuthenticated,
        (status = 422, description = "No email given", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn find_users(
    State(state): State<AppState>,
    caller: ApiKeyCaller,
    params: Result<Query<UserSearchParams>, ApiError>,
) -> ApiResult<axum::Json<UserSearchList>> {
    // The scope first: a key without it learns nothing, not even what the query should be.
    caller.require(Scope::UsersRead)?;
    let Query(params) = params?;
    let email = params
        .email
        .filter(|e| !e.trim().is_empty())
        .ok_or_else(|| ApiError::Validation(vec![FieldError::new("email", "is required (?email=the address to look up)")]))?;
    let user = state.store.user_by_email(&email).await?;
    Ok(axum::Json(UserSearchList { data: user.iter().map(UserOut::from).collect(), has_more: false }))
}

/// What a user owns now: the same answer, from the same code, as `GET /api/v1/me/entitlements`
/// (key with `entitlements:read`).
#[utoipa::path(get, path = "/api/v1/users/{id}/entitlements", tag = "users", security(("api_key" = [])),
    params(("id" = String, Path, description = "A user id (`usr_…`)")),
    responses(
        (status = 200, description = "Active grants and credits", body = EntitlementsOut),
        KeyAuthenticated,
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn user_entitlements(
    State(state): State<AppState>,
    caller: ApiKeyCaller,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<EntitlementsOut>> {
    caller.require(Scope::EntitlementsRead)?;
    existing_user(&state, &id).await?;
    Ok(axum::Json(entitlements_of(&state, &id).await?))
}

/// A user's orders, newest first, as `GET /api/v1/orders` shows them (key with `orders:read`).
#[utoipa::path(get, path = "/api/v1/users/{id}/orders", tag = "users", params(ListParams), security(("api_key" = [])),
    params(("id" = String, Path, description = "A user id (`usr_…`)")),
    responses(
        (status = 200, description = "A page of orders", body = OrderList),
        KeyAuthenticated,
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad list parameters", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn user_orders(
    State(state): State<AppState>,
    caller: ApiKeyCaller,
    Path(id): Path<String>,
    list: Result<Query<ListParams>, ApiError>,
) -> ApiResult<axum::Json<OrderList>> {
    caller.require(Scope::OrdersRead)?;
    let Query(list) = list?;
    existing_user(&state, &id).await?;
    let rows = state.payments.list_orders(Some(&id), list.limit.fetch(), list.starting_after.as_deref()).await?;
    let (rows, has_more) = page(rows, list.limit);
    Ok(axum::Json(OrderList { data: rows.into_iter().map(OrderOut::from).collect(), has_more }))
}

/// 404 unless the user exists.
async fn existing_user(state: &AppState, id: &str) -> ApiResult<()> {
    match state.store.user_by_id(id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound),
    }
}
