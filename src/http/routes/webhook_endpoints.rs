//! `/api/v1/admin/webhook-endpoints` and `/api/v1/admin/webhook-messages`: the merchant's app's
//! webhook endpoints (Standard Webhooks), their messages and attempts, replay, retry and ping.
//! Admins only; changes need CSRF with a session cookie and are audited. An endpoint's secret is
//! shown once, when created or rotated.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::notifications::{is_event_type, EVENT_TYPES};
use crate::domain::FieldError;
use crate::http::audit::audit;
use crate::http::auth::{AdminUser, Meta};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{Json, Query};
use crate::http::pagination::{page, ListParams};
use crate::http::responses::{AdminOnly, AdminOnlyWithCsrf, BadListParameters, JsonBody, Unauthenticated};
use crate::http::state::AppState;
use crate::notify::ssrf::check_url;
use crate::notify::webhook::new_secret;
use crate::store::outbox::{AttemptRow, EndpointPatch, EndpointRow, MessageRow};

/// How long a rotated-out secret keeps signing beside the new one.
const ROTATION_OVERLAP_HOURS: i64 = 24;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_endpoint, list_endpoints))
        .routes(routes!(update_endpoint, delete_endpoint))
        .routes(routes!(rotate_secret))
        .routes(routes!(replay))
        .routes(routes!(ping))
        .routes(routes!(list_messages))
        .routes(routes!(retry_message))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointOut {
    #[schema(example = "we_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub disabled: bool,
    /// Since when every delivery has failed (5 days of it disables the endpoint).
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&EndpointRow> for EndpointOut {
    fn from(e: &EndpointRow) -> EndpointOut {
        EndpointOut {
            id: e.id.clone(),
            url: e.url.clone(),
            events: e.event_types(),
            description: e.description.clone(),
            disabled: e.disabled,
            failing_since: e.failing_since,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointCreated {
    #[serde(flatten)]
    pub endpoint: EndpointOut,
    /// `whsec_…`: verifies the `webhook-signature` header. Shown this once.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    pub data: Vec<EndpointOut>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointIn {
    /// https in production; private, loopback and metadata addresses are refused unless
    /// `TOLLGATE_WEBHOOK_ALLOW_PRIVATE` is on.
    #[schema(example = "https://app.example.com/webhooks/tollgate", max_length = 2048)]
    pub url: String,
    /// Event types to receive (at least one).
    #[schema(example = json!(["order.paid", "entitlement.revoked"]))]
    pub events: Vec<String>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatchIn {
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub disabled: Option<bool>,
    /// An empty string removes it.
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretOut {
    /// The new `whsec_…` secret, shown this once.
    pub secret: String,
    /// Until then the previous secret signs too (both signatures in `webhook-signature`).
    pub previous_secret_expires_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayIn {
    /// Every message for this endpoint that occurred at or after this time is sent again (the
    /// same message: same `webhook-id`, a fresh timestamp and signature).
    pub since: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayOut {
    /// How many messages were made due again.
    pub replayed: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageQueued {
    #[schema(example = "msg_018f3a2b4c5d6e7f8a9b0c1d")]
    pub message_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptOut {
    pub attempt: i64,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<i64>,
    pub error: Option<String>,
    /// At most 4 KiB of the receiver's answer.
    pub response: Option<String>,
    pub duration_ms: i64,
}

impl From<AttemptRow> for AttemptOut {
    fn from(a: AttemptRow) -> AttemptOut {
        AttemptOut {
            attempt: a.attempt,
            at: a.at,
            status_code: a.status_code,
            error: a.error,
            response: a.response,
            duration_ms: a.duration_ms,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageOut {
    /// The `webhook-id` header, the same on every attempt.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// `pending`, `held` (its endpoint is disabled: sent once it is enabled again), `delivered` or `failed`.
    pub status: String,
    pub occurred_at: DateTime<Utc>,
    /// The user's sequence number of the fact (orders what arrives out of order).
    pub sequence: Option<i64>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The body sent, `{"type", "timestamp", "data"}`.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub attempts: Vec<AttemptOut>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageList {
    pub data: Vec<MessageOut>,
    pub has_more: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetryOut {
    pub id: String,
    pub status: String,
}

fn validate_url(state: &AppState, url: &str, errors: &mut Vec<FieldError>) {
    let c = &state.config;
    if let Err(why) = check_url(url.trim(), c.is_production(), c.webhooks.allow_private) {
        errors.push(FieldError::new("url", why));
    }
}

fn validate_events(events: &[String], errors: &mut Vec<FieldError>) -> Vec<String> {
    if events.is_empty() {
        errors.push(FieldError::new("events", "must list at least one event type"));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if !is_event_type(e) {
            errors.push(FieldError::new(format!("events[{i}]"), format!("must be one of {}", EVENT_TYPES.join(", "))));
        } else if !out.contains(e) {
            out.push(e.clone());
        }
    }
    out
}

fn validate_description(d: Option<&str>, errors: &mut Vec<FieldError>) {
    if let Some(d) = d {
        if d.chars().count() > 500 || d.chars().any(char::is_control) {
            errors.push(FieldError::new("description", "must be at most 500 characters, without control characters"));
        }
    }
}

async fn found(state: &AppState, id: &str) -> ApiResult<EndpointRow> {
    state.store.endpoint(id).await?.ok_or(ApiError::NotFound)
}

/// Adds an endpoint; its secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/admin/webhook-endpoints", tag = "admin", request_body = EndpointIn, security(("bearer" = []), ("session" = [])),
    responses(
        (status = 201, description = "Created, with its secret", body = EndpointCreated),
        Unauthenticated, AdminOnlyWithCsrf, JsonBody,
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_endpoint(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    Json(input): Json<EndpointIn>,
) -> ApiResult<(StatusCode, axum::Json<EndpointCreated>)> {
    let mut errors = Vec::new();
    validate_url(&state, &input.url, &mut errors);
    let events = validate_events(&input.events, &mut errors);
    validate_description(input.description.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let now = Utc::now();
    let row = EndpointRow {
        id: crate::domain::account::new_id("we"),
        url: input.url.trim().to_owned(),
        events: serde_json::to_string(&events).map_err(anyhow::Error::from)?,
        description: input.description.filter(|d| !d.is_empty()),
        disabled: false,
        secret: new_secret(),
        previous_secret: None,
        previous_until: None,
        failing_since: None,
        created_at: now,
        updated_at: now,
    };
    state.store.insert_endpoint(&row).await?;
    audit(
        &state,
        &meta,
        &admin.user.id,
        "webhook_endpoint.create",
        &row.id,
        serde_json::json!({"url": row.url, "events": events}),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(EndpointCreated { endpoint: EndpointOut::from(&row), secret: row.secret.clone() })))
}

/// Every endpoint (no secrets).
#[utoipa::path(get, path = "/api/v1/admin/webhook-endpoints", tag = "admin", security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "The endpoints", body = EndpointList),
        Unauthenticated, AdminOnly,
    ))]
pub async fn list_endpoints(State(state): State<AppState>, _admin: AdminUser) -> ApiResult<axum::Json<EndpointList>> {
    let rows = state.store.endpoints().await?;
    Ok(axum::Json(EndpointList { data: rows.iter().map(EndpointOut::from).collect(), has_more: false }))
}

/// Changes an endpoint's URL, events, description, or disables/enables it (enabling forgets
/// its failing run).
#[utoipa::path(patch, path = "/api/v1/admin/webhook-endpoints/{id}", tag = "admin", request_body = EndpointPatchIn, security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "An endpoint id (`we_…`)")),
    responses(
        (status = 200, description = "Changed", body = EndpointOut),
        Unauthenticated, AdminOnlyWithCsrf, JsonBody,
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_endpoint(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    Path(id): Path<String>,
    Json(input): Json<EndpointPatchIn>,
) -> ApiResult<axum::Json<EndpointOut>> {
    let mut errors = Vec::new();
    if let Some(url) = &input.url {
        validate_url(&state, url, &mut errors);
    }
    let events = input.events.as_deref().map(|e| validate_events(e, &mut errors));
    validate_description(input.description.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let patch = EndpointPatch {
        url: input.url.as_deref().map(|u| u.trim().to_owned()),
        events: events.as_ref().map(serde_json::to_string).transpose().map_err(anyhow::Error::from)?,
        description: input.description.map(|d| Some(d).filter(|d| !d.is_empty())),
        disabled: input.disabled,
    };
    if !state.store.update_endpoint(&id, &patch, Utc::now()).await? {
        return Err(ApiError::NotFound);
    }
    let row = found(&state, &id).await?;
    audit(
        &state,
        &meta,
        &admin.user.id,
        "webhook_endpoint.update",
        &id,
        serde_json::json!({"url": row.url, "events": row.event_types(), "disabled": row.disabled}),
    )
    .await;
    Ok(axum::Json(EndpointOut::from(&row)))
}

/// Removes an endpoint and its messages.
#[utoipa::path(delete, path = "/api/v1/admin/webhook-endpoints/{id}", tag = "admin", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "An endpoint id (`we_…`)")),
    responses(
        (status = 204, description = "Removed"),
        Unauthenticated, AdminOnlyWithCsrf,
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if !state.store.delete_endpoint(&id).await? {
        return Err(ApiError::NotFound);
    }
    audit(&state, &meta, &admin.user.id, "webhook_endpoint.delete", &id, serde_json::json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

/// A new secret; the old one keeps signing beside it for 24 h. A second rotation while the
/// previous one's 24 h run is refused (409): it would end that old secret's promised overlap early.
#[utoipa::path(post, path = "/api/v1/admin/webhook-endpoints/{id}/rotate-secret", tag = "admin", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "An endpoint id (`we_…`)")),
    responses(
        (status = 200, description = "The new secret, shown this once", body = SecretOut),
        Unauthenticated, AdminOnlyWithCsrf,
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A rotation is still in its 24 h overlap", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<SecretOut>> {
    let now = Utc::now();
    let until = now + chrono::Duration::hours(ROTATION_OVERLAP_HOURS);
    let secret = new_secret();
    if !state.store.rotate_endpoint_secret(&id, &secret, until, now).await? {
        return Err(match found(&state, &id).await {
            Ok(e) => ApiError::Conflict(format!(
                "the previous rotation's old secret signs until {}; rotate again after that",
                e.previous_until.map_or_else(String::new, |t| t.to_rfc3339())
            )),
            Err(e) => e,
        });
    }
    audit(&state, &meta, &admin.user.id, "webhook_endpoint.rotate_secret", &id, serde_json::json!({"previous_until": until}))
        .await;
    Ok(axum::Json(SecretOut { secret, previous_secret_expires_at: until }))
}

/// Sends again every message of this endpoint since `since` (after the merchant's outage): the
/// same messages, same `webhook-id`, made due now with a new round of retries.
#[utoipa::path(post, path = "/api/v1/admin/webhook-endpoints/{id}/replay", tag = "admin", request_body = ReplayIn, security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "An endpoint id (`we_…`)")),
    responses(
        (status = 202, description = "Made due again", body = ReplayOut),
        Unauthenticated, AdminOnlyWithCsrf, JsonBody,
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The endpoint is disabled: re-enable it first", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn replay(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    Path(id): Path<String>,
    Json(input): Json<ReplayIn>,
) -> ApiResult<(StatusCode, axum::Json<ReplayOut>)> {
    if found(&state, &id).await?.disabled {
        // Its messages would only fail at once: nothing would be sent.
        return Err(ApiError::Conflict("the endpoint is disabled: re-enable it (PATCH disabled=false), then replay".to_owned()));
    }
    let replayed = state.store.replay_endpoint(&id, input.since, Utc::now()).await?;
    audit(
        &state,
        &meta,
        &admin.user.id,
        "webhook_endpoint.replay",
        &id,
        serde_json::json!({"since": input.since, "replayed": replayed}),
    )
    .await;
    Ok((StatusCode::ACCEPTED, axum::Json(ReplayOut { replayed })))
}

/// Sends the endpoint a `ping` message (to test it).
#[utoipa::path(post, path = "/api/v1/admin/webhook-endpoints/{id}/ping", tag = "admin", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "An endpoint id (`we_…`)")),
    responses(
        (status = 202, description = "Queued", body = MessageQueued),
        Unauthenticated, AdminOnlyWithCsrf,
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn ping(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, axum::Json<MessageQueued>)> {
    let message_id = state.store.enqueue_ping(&id, Utc::now()).await?.ok_or(ApiError::NotFound)?;
    audit(&state, &meta, &admin.user.id, "webhook_endpoint.ping", &id, serde_json::json!({"message_id": message_id})).await;
    Ok((StatusCode::ACCEPTED, axum::Json(MessageQueued { message_id })))
}

/// The endpoint's messages, newest first, with their delivery state and attempts.
#[utoipa::path(get, path = "/api/v1/admin/webhook-endpoints/{id}/messages", tag = "admin", params(("id" = String, Path, description = "An endpoint id (`we_…`)"), ListParams), security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "A page of messages", body = MessageList),
        Unauthenticated, AdminOnly, BadListParameters,
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_messages(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
    Query(list): Query<ListParams>,
) -> ApiResult<axum::Json<MessageList>> {
    found(&state, &id).await?;
    let rows = state.store.endpoint_messages(&id, list.limit.fetch(), list.starting_after.as_deref()).await?;
    let (rows, has_more) = page(rows, list.limit);
    let mut data = Vec::with_capacity(rows.len());
    for row in rows {
        let attempts = state.store.message_attempts(&row.id).await?;
        data.push(message_out(row, attempts));
    }
    Ok(axum::Json(MessageList { data, has_more }))
}

fn message_out(m: MessageRow, attempts: Vec<AttemptRow>) -> MessageOut {
    MessageOut {
        payload: serde_json::from_str(&m.payload).unwrap_or(serde_json::Value::Null),
        next_attempt_at: (m.status == "pending").then_some(m.next_attempt_at),
        id: m.id,
        event_type: m.event_type,
        status: m.status,
        occurred_at: m.occurred_at,
        sequence: m.user_seq,
        delivered_at: m.delivered_at,
        last_error: m.last_error,
        attempts: attempts.into_iter().map(AttemptOut::from).collect(),
    }
}

/// Attempts the webhook message now (a failed one gets a new round of retries). Emails are not
/// retried here (404), and a delivered message is not sent again (409: use replay for that).
#[utoipa::path(post, path = "/api/v1/admin/webhook-messages/{id}/retry", tag = "admin", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "A message id (`msg_…`)")),
    responses(
        (status = 202, description = "Due now", body = RetryOut),
        Unauthenticated, AdminOnlyWithCsrf,
        (status = 404, description = "No such webhook message", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Being sent right now, or delivered already", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn retry_message(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, axum::Json<RetryOut>)> {
    let message = state.store.outbox_message(&id).await?.filter(|m| m.kind == "webhook").ok_or(ApiError::NotFound)?;
    if message.status == "delivered" {
        return Err(ApiError::Conflict("the message was delivered; replay the endpoint to send it again".to_owned()));
    }
    if !state.store.retry_message(&id, Utc::now()).await? {
        return Err(ApiError::Conflict("the message is being sent right now, or was just delivered".to_owned()));
    }
    audit(&state, &meta, &admin.user.id, "webhook_message.retry", &id, serde_json::json!({})).await;
    Ok((StatusCode::ACCEPTED, axum::Json(RetryOut { id, status: "pending".to_owned() })))
}
