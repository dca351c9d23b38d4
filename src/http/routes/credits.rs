//! Credits as a ledger: the merchant's server debits (`credits:write`) and reads the movements
//! (`entitlements:read`), a user reads their own, an admin adjusts. The rules are in
//! `domain::credits`; every write is one transaction in `store/credits.rs`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::apikeys::Scope;
use crate::domain::credits::{debit_request_hash, validate_adjustment, validate_debit, CreditKind, Metadata};
use crate::domain::crypto::token_hash;
use crate::http::apikey::ApiKeyCaller;
use crate::http::audit::audit;
use crate::http::auth::{AdminUser, CurrentUser, Meta};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{Json, Query};
use crate::http::idempotency::{idempotency_key, idempotent, IdempotencyKeyHeader};
use crate::http::pagination::{page, ListParams};
use crate::http::responses::{AdminOnlyWithCsrf, BadListParameters, JsonBody, KeyAuthenticated, Unauthenticated};
use crate::http::state::AppState;
use crate::store::credits::{CreditOutcome, MovementRow, NewDebit};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_debit))
        .routes(routes!(user_credits))
        .routes(routes!(my_credits))
        .routes(routes!(create_adjustment))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct DebitIn {
    /// Credits to spend: a whole number from 1 to 1,000,000,000.
    #[serde(deserialize_with = "crate::domain::whole_number::deserialize")]
    #[schema(minimum = 1, maximum = 1_000_000_000, example = 7)]
    pub amount: i64,
    /// Why (1-200 characters), shown in the movement list.
    #[schema(min_length = 1, max_length = 200, example = "export of report 42")]
    pub reason: String,
    /// Up to 50 string pairs (keys ≤ 40 characters, values ≤ 500), kept with the debit.
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

/// One debit, as made.
#[derive(Debug, Serialize, ToSchema)]
pub struct DebitOut {
    #[schema(example = "cm_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    /// The credits debited (positive; the movement list shows the same debit as a negative amount).
    #[schema(example = 7)]
    pub amount: i64,
    /// The balance right after this debit.
    #[schema(example = 493)]
    pub balance_after: i64,
    pub reason: String,
    pub metadata: Option<Metadata>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct AdjustmentIn {
    /// Credits to add (positive) or remove (negative); never zero, at most 1,000,000,000 either way.
    #[serde(deserialize_with = "crate::domain::whole_number::deserialize")]
    #[schema(minimum = -1_000_000_000, maximum = 1_000_000_000, example = -50)]
    pub amount: i64,
    /// Why (1-200 characters).
    #[schema(min_length = 1, max_length = 200, example = "goodwill after an outage")]
    pub reason: String,
}

/// A change of a credit balance.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditMovementOut {
    #[schema(example = "cm_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    pub kind: CreditKind,
    /// Signed: what this movement added to the balance (a debit or claw-back is negative).
    #[schema(example = -7)]
    pub amount: i64,
    /// The balance right after this movement (never negative).
    #[schema(example = 493)]
    pub balance_after: i64,
    pub reason: String,
    /// The order a grant, claw-back or restore is about.
    pub order_id: Option<String>,
    pub metadata: Option<Metadata>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreditMovementList {
    pub data: Vec<CreditMovementOut>,
    pub has_more: bool,
}

fn metadata_of(text: Option<&str>) -> Option<Metadata> {
    text.and_then(|t| serde_json::from_str::<BTreeMap<String, String>>(t).ok())
}

impl From<MovementRow> for CreditMovementOut {
    fn from(m: MovementRow) -> CreditMovementOut {
        CreditMovementOut {
            metadata: metadata_of(m.metadata.as_deref()),
            id: m.id,
            kind: m.kind,
            amount: m.amount,
            balance_after: m.balance_after,
            reason: m.reason,
            order_id: m.order_id,
            created_at: m.created_at,
        }
    }
}

fn debit_out(m: MovementRow) -> DebitOut {
    DebitOut {
        metadata: metadata_of(m.metadata.as_deref()),
        id: m.id,
        amount: -m.amount,
        balance_after: m.balance_after,
        reason: m.reason,
        created_at: m.created_at,
    }
}

fn created(body: &impl Serialize, replayed: bool) -> ApiResult<Response> {
    let bytes = serde_json::to_vec(body).map_err(anyhow::Error::from)?;
    let mut response = (StatusCode::CREATED, [("content-type", "application/json")], bytes).into_response();
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Spend a user's credits: one conditional write that never takes the balance below zero, made
/// once per (user, `Idempotency-Key`) whatever the concurrency or the number of instances.
#[utoipa::path(post, path = "/api/v1/users/{id}/credits/debits", tag = "credits", request_body = DebitIn, security(("api_key" = [])),
    params(("id" = String, Path, description = "A user id (`usr_…`)"),
           ("Idempotency-Key" = String, Header, description = "Required: 1-255 printable ASCII characters; a retry with the same key and body gets the first debit again (`Idempotent-Replayed: true`)")),
    responses(
        (status = 201, description = "Debited (or the first debit with this Idempotency-Key, replayed)", body = DebitOut),
        (status = 400, description = "No Idempotency-Key, or malformed JSON", body = Problem, content_type = "application/problem+json"),
        KeyAuthenticated,
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "insufficient-credits: the balance (member `balance`) is smaller than the amount; nothing was debited", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid amount, reason or metadata, or the Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_debit(
    State(state): State<AppState>,
    caller: ApiKeyCaller,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<DebitIn>, ApiError>,
) -> ApiResult<Response> {
    caller.require(Scope::CreditsWrite)?;
    let Some(key) = idempotency_key(&headers)? else {
        return Err(ApiError::BadRequest("a debit needs an Idempotency-Key header (1-255 printable characters)".to_owned()));
    };
    let Json(input) = body?;
    validate_debit(input.amount, &input.reason, input.metadata.as_ref())?;
    let metadata = match &input.metadata {
        Some(m) => Some(serde_json::to_string(m).map_err(anyhow::Error::from)?),
        None => None,
    };
    let debit = NewDebit {
        user_id: id,
        amount: input.amount,
        reason: input.reason.clone(),
        metadata,
        actor: caller.key_id.clone(),
        idempotency_key: token_hash(&key),
        request_hash: debit_request_hash(input.amount, &input.reason, input.metadata.as_ref()),
        now: Utc::now(),
    };
    match state.store.debit_credits(&debit).await? {
        CreditOutcome::Moved(m) => created(&debit_out(m), false),
        CreditOutcome::Replayed(m) => created(&debit_out(m), true),
        CreditOutcome::KeyReused => Err(ApiError::Validation(vec![crate::domain::FieldError::new(
            "Idempotency-Key",
            "was already used with a different request; use a new key",
        )])),
        CreditOutcome::Insufficient { balance } => Err(ApiError::InsufficientCredits { balance }),
        CreditOutcome::NoUser => Err(ApiError::NotFound),
    }
}

async fn movements(state: &AppState, user_id: &str, list: &ListParams) -> ApiResult<axum::Json<CreditMovementList>> {
    let rows = state.store.credit_movements(user_id, list.limit.fetch(), list.starting_after.as_deref()).await?;
    let (rows, has_more) = page(rows, list.limit);
    Ok(axum::Json(CreditMovementList { data: rows.into_iter().map(CreditMovementOut::from).collect(), has_more }))
}

/// A user's credit movements (grants, debits, claw-backs, restores, adjustments), newest first.
#[utoipa::path(get, path = "/api/v1/users/{id}/credits", tag = "credits", params(("id" = String, Path, description = "A user id (`usr_…`)"), ListParams),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "A page of movements, newest first", body = CreditMovementList),
        KeyAuthenticated,
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        BadListParameters,
    ))]
pub async fn user_credits(
    State(state): State<AppState>,
    caller: ApiKeyCaller,
    Path(id): Path<String>,
    list: Result<Query<ListParams>, ApiError>,
) -> ApiResult<axum::Json<CreditMovementList>> {
    caller.require(Scope::EntitlementsRead)?;
    let Query(list) = list?;
    if state.store.user_by_id(&id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    movements(&state, &id, &list).await
}

/// The caller's own credit movements, newest first.
#[utoipa::path(get, path = "/api/v1/me/credits", tag = "me", params(ListParams), security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "A page of movements, newest first", body = CreditMovementList),
        Unauthenticated, BadListParameters,
    ))]
pub async fn my_credits(
    State(state): State<AppState>,
    current: CurrentUser,
    Query(list): Query<ListParams>,
) -> ApiResult<axum::Json<CreditMovementList>> {
    movements(&state, &current.user.id, &list).await
}

/// Add or remove a user's credits by hand; never below zero; audited.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/credits/adjustments", tag = "admin", request_body = AdjustmentIn,
    security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "A user id (`usr_…`)"), IdempotencyKeyHeader),
    responses(
        (status = 201, description = "The movement written", body = CreditMovementOut),
        Unauthenticated, AdminOnlyWithCsrf, JsonBody,
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "insufficient-credits: the adjustment would take the balance below zero (member `balance`); or the same Idempotency-Key is still being processed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid amount or reason, or an Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_adjustment(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(input): Json<AdjustmentIn>,
) -> ApiResult<Response> {
    validate_adjustment(input.amount, &input.reason)?;
    idempotent(&state, &admin.user.id, &headers, &format!("credits-adjustment:{id}"), &input, || async {
        match state.store.adjust_credits(&id, input.amount, &input.reason, &admin.user.id, Utc::now()).await? {
            CreditOutcome::Moved(m) | CreditOutcome::Replayed(m) => {
                let detail = serde_json::json!({"movement_id": m.id, "amount": m.amount, "balance_after": m.balance_after, "reason": m.reason});
                audit(&state, &meta, &admin.user.id, "credits.adjust", &id, detail).await;
                Ok((StatusCode::CREATED, CreditMovementOut::from(m)))
            }
            CreditOutcome::Insufficient { balance } => Err(ApiError::InsufficientCredits { balance }),
            CreditOutcome::NoUser => Err(ApiError::NotFound),
            CreditOutcome::KeyReused => Err(ApiError::Internal(anyhow::anyhow!("an adjustment carries no Idempotency-Key"))),
        }
    })
    .await
}
