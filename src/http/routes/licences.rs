//! Licences verifiable offline: the public keys (`/.well-known/jwks.json`), issuing a licence to
//! the caller or (with an API key holding `licences:issue`) to a user, and the revocation list.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::apikeys::Scope;
use crate::domain::licence::Jwk;
use crate::domain::licensing::LicenceError;
use crate::http::apikey::ApiKeyCaller;
use crate::http::auth::CurrentUser;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::Query;
use crate::http::idempotency::{idempotent, IdempotencyKeyHeader};
use crate::http::pagination::{non_empty, page, Limit};
use crate::http::responses::{CsrfChecked, IdempotentCreate, Unauthenticated};
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(jwks))
        .routes(routes!(issue_my_licence))
        .routes(routes!(issue_user_licence))
        .routes(routes!(revoked_licences))
}

impl From<LicenceError> for ApiError {
    fn from(e: LicenceError) -> Self {
        match e {
            LicenceError::NotFound => ApiError::NotFound,
            LicenceError::RateLimited { limit, retry_after } => ApiError::RateLimited { limit, retry_after },
            LicenceError::Internal(e) => ApiError::from(e),
        }
    }
}

/// An Ed25519 public key (RFC 8037).
#[derive(Debug, Serialize, ToSchema)]
pub struct JwkOut {
    #[schema(example = "OKP")]
    pub kty: String,
    #[schema(example = "Ed25519")]
    pub crv: String,
    /// The RFC 7638 thumbprint of the key; licences name it in their header.
    pub kid: String,
    /// The public key, base64url.
    pub x: String,
    #[serde(rename = "use")]
    #[schema(example = "sig")]
    pub use_: String,
    #[schema(example = "EdDSA")]
    pub alg: String,
}

impl From<Jwk> for JwkOut {
    fn from(k: Jwk) -> JwkOut {
        JwkOut { kty: k.kty, crv: k.crv, kid: k.kid, x: k.x, use_: k.use_, alg: k.alg }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JwksOut {
    /// The current signing key first, then the previous one during a rotation.
    pub keys: Vec<JwkOut>,
}

/// The public keys that sign licences, for verifying them offline.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "licences",
    responses((status = 200, description = "The JSON Web Key Set", body = JwksOut)))]
pub async fn jwks(State(state): State<AppState>) -> ApiResult<([(&'static str, &'static str); 1], axum::Json<JwksOut>)> {
    let keys = state.licences.jwks().await?.into_iter().map(JwkOut::from).collect();
    // Verifiers cache it; a rotation publishes the next key beside the old one first.
    Ok(([("cache-control", "public, max-age=300")], axum::Json(JwksOut { keys })))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LicenceOut {
    #[schema(example = "lic_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    /// A compact JWS (`alg` EdDSA, `typ` `tollgate-licence+jwt`, `kid`) whose claims are `iss`,
    /// `sub`, `features` (`[{feature, expires_at|null}]`), `iat`, `nbf`, `exp` and `jti` (the id).
    pub licence: String,
    /// The licence's `exp`: the earliest of `TOLLGATE_LICENCE_TTL` from now and the end of the
    /// access it carries.
    pub expires_at: DateTime<Utc>,
}

async fn issue(state: &AppState, user_id: &str) -> ApiResult<(StatusCode, LicenceOut)> {
    let issued = state.licences.issue(user_id).await?;
    Ok((StatusCode::CREATED, LicenceOut { id: issued.id, licence: issued.licence, expires_at: issued.expires_at }))
}

/// A licence for the caller, carrying the access they hold now.
#[utoipa::path(post, path = "/api/v1/me/licences", tag = "licences", security(("bearer" = []), ("session" = [])),
    params(IdempotencyKeyHeader),
    responses(
        (status = 201, description = "The licence", body = LicenceOut),
        Unauthenticated, CsrfChecked, IdempotentCreate,
        (status = 429, description = "Too many licences for this user; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn issue_my_licence(State(state): State<AppState>, current: CurrentUser, headers: HeaderMap) -> ApiResult<Response> {
    let user_id = current.user.id.clone();
    idempotent(&state, &current.user.id, &headers, "licence", &user_id, || issue(&state, &user_id)).await
}

/// A licence for user `id`, for the merchant's servers (API key with `licences:issue`).
#[utoipa::path(post, path = "/api/v1/users/{id}/licences", tag = "licences", security(("api_key" = [])),
    params(("id" = String, Path, description = "A user id (`usr_…`)"), IdempotencyKeyHeader),
    responses(
        (status = 201, description = "The licence", body = LicenceOut),
        (status = 401, description = "No valid API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks licences:issue", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user (or disabled)", body = Problem, content_type = "application/problem+json"),
        IdempotentCreate,
        (status = 429, description = "Too many licences for this user, or requests with this key; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn issue_user_licence(
    State(state): State<AppState>,
    caller: ApiKeyCaller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.require(Scope::LicencesIssue)?;
    idempotent(&state, &caller.key_id, &headers, &format!("licence:{id}"), &id, || issue(&state, &id)).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RevokedParams {
    /// Only licences revoked at or after this time (RFC 3339).
    #[serde(default, deserialize_with = "rfc3339")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<DateTime<Utc>>,
    /// 1–100, default 20.
    #[serde(default)]
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Limit,
    /// The last licence id of the previous page.
    #[serde(default, deserialize_with = "non_empty")]
    pub starting_after: Option<String>,
}

/// `?since=`: an RFC 3339 time; present but empty is refused like any other non-time (the
/// document says `date-time`).
fn rfc3339<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(t) => DateTime::parse_from_rfc3339(&t)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| serde::de::Error::custom("must be an RFC 3339 time such as 2026-12-01T00:00:00Z")),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedOut {
    #[schema(example = "lic_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    pub revoked_at: DateTime<Utc>,
    /// `refund`, `dispute` or `user_disabled`.
    #[schema(example = "refund")]
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedList {
    pub data: Vec<RevokedOut>,
    pub has_more: bool,
}

/// Licences revoked before their `exp` (a refund, a dispute, a disabled user), oldest first.
/// Verifiers poll it with `since` and refuse the licences it names.
#[utoipa::path(get, path = "/api/v1/licences/revoked", tag = "licences", params(RevokedParams),
    responses(
        (status = 200, description = "Revoked licences, oldest revocation first", body = RevokedList),
        (status = 422, description = "Bad since, limit or starting_after", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoked_licences(
    State(state): State<AppState>,
    Query(params): Query<RevokedParams>,
) -> ApiResult<axum::Json<RevokedList>> {
    let rows = state.licences.revoked(params.since, params.starting_after.as_deref(), params.limit.fetch()).await?;
    let (rows, has_more) = page(rows, params.limit);
    let data = rows.into_iter().map(|r| RevokedOut { id: r.id, revoked_at: r.revoked_at, reason: r.revoked_reason }).collect();
    Ok(axum::Json(RevokedList { data, has_more }))
}
