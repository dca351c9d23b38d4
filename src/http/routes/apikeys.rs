//! `/api/v1/admin/api-keys`: admins create, list and revoke the merchant's server keys. A key is
//! shown once, in the creation answer, and stored only as a hash.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::apikeys::{scopes_from_text, KeyMode, Scope};
use crate::domain::keys::NewApiKey;
use crate::http::auth::{AdminUser, Meta};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{Json, Query};
use crate::http::idempotency::{idempotent_remembering, IdempotencyKeyHeader};
use crate::http::pagination::{page, ListParams};
use crate::http::responses::{AdminOnly, AdminOnlyWithCsrf, BadListParameters, IdempotentCreate, JsonBody, Unauthenticated};
use crate::http::state::AppState;
use crate::store::ApiKeyRow;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_api_key, list_api_keys)).routes(routes!(revoke_api_key))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyIn {
    /// What the key is for (1–100 characters).
    #[schema(example = "billing backend", min_length = 1, max_length = 100)]
    pub name: String,
    /// At least one of the known scopes.
    #[schema(value_type = Vec<Scope>, min_items = 1, example = json!(["entitlements:read", "users:read"]))]
    pub scopes: Vec<String>,
    /// When the key stops working (in the future); null: never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A new key; `key` is shown this once and stored only as a hash.
#[derive(Serialize, ToSchema)]
pub struct ApiKeyCreatedOut {
    #[schema(example = "key_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    /// The key: send it as `Authorization: Bearer <key>`. Shown once; store it now. Absent from
    /// the answer replayed for a retried `Idempotency-Key` (never stored, so never shown again).
    #[schema(example = "tg_test_…")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's first characters, to recognise it later (not a secret).
    #[schema(example = "tg_test_4fQ2xZ9a")]
    pub prefix: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub mode: KeyMode,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The key itself never prints.
impl std::fmt::Debug for ApiKeyCreatedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyCreatedOut").field("id", &self.id).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// A key as listed: never the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyOut {
    #[schema(example = "key_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    #[schema(example = "tg_test_4fQ2xZ9a")]
    pub prefix: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub mode: KeyMode,
    /// The admin's user id, or `cli`.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// Recorded at most once a minute per key.
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRow> for ApiKeyOut {
    fn from(r: ApiKeyRow) -> ApiKeyOut {
        ApiKeyOut {
            scopes: scopes_from_text(&r.scopes),
            mode: KeyMode::parse(&r.mode).unwrap_or(KeyMode::Test),
            id: r.id,
            prefix: r.prefix,
            name: r.name,
            created_by: r.created_by,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub data: Vec<ApiKeyOut>,
    pub has_more: bool,
}

/// Creates an API key of the server's mode (`tg_live_…` with a live Stripe key, else `tg_test_…`).
#[utoipa::path(post, path = "/api/v1/admin/api-keys", tag = "admin", request_body = ApiKeyIn, security(("bearer" = []), ("session" = [])),
    params(IdempotencyKeyHeader),
    responses(
        (status = 201, description = "Created; `key` is shown this once", body = ApiKeyCreatedOut),
        Unauthenticated, AdminOnlyWithCsrf, JsonBody, IdempotentCreate,
    ))]
pub async fn create_api_key(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    headers: HeaderMap,
    Json(input): Json<ApiKeyIn>,
) -> ApiResult<Response> {
    // The key is shown once: a replay answers the same key's id and details, never the key.
    let forget_key = |mut body: serde_json::Value| {
        if let Some(fields) = body.as_object_mut() {
            fields.remove("key");
        }
        body
    };
    idempotent_remembering(&state, &admin.user.id, &headers, "api_key", &input, forget_key, || async {
        let new = NewApiKey { name: input.name.clone(), scopes: input.scopes.clone(), expires_at: input.expires_at };
        let created = state.keys.create(new, &admin.user.id, &meta).await?;
        let out = ApiKeyCreatedOut {
            key: Some(created.reveal().to_owned()),
            scopes: scopes_from_text(&created.row.scopes),
            mode: state.keys.mode(),
            id: created.row.id,
            prefix: created.row.prefix,
            name: created.row.name,
            created_at: created.row.created_at,
            expires_at: created.row.expires_at,
        };
        Ok((StatusCode::CREATED, out))
    })
    .await
}

/// Every API key, newest first, revoked and expired ones included (never the key itself).
#[utoipa::path(get, path = "/api/v1/admin/api-keys", tag = "admin", params(ListParams), security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "A page of API keys", body = ApiKeyList),
        Unauthenticated, AdminOnly, BadListParameters,
    ))]
pub async fn list_api_keys(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(list): Query<ListParams>,
) -> ApiResult<axum::Json<ApiKeyList>> {
    let rows = state.keys.list(list.limit.fetch(), list.starting_after.as_deref()).await?;
    let (rows, has_more) = page(rows, list.limit);
    Ok(axum::Json(ApiKeyList { data: rows.into_iter().map(ApiKeyOut::from).collect(), has_more }))
}

/// Revokes an API key: it answers 401 from the next request on. Revoking it again is a 204 too.
#[utoipa::path(delete, path = "/api/v1/admin/api-keys/{id}", tag = "admin", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "An API key id (`key_…`)")),
    responses(
        (status = 204, description = "Revoked"),
        Unauthenticated, AdminOnlyWithCsrf,
        (status = 404, description = "No such API key", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.keys.revoke(&id, &admin.user.id, &meta).await.map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT)
}
