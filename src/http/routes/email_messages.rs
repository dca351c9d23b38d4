//! `/api/v1/admin/email-messages`: the emails in the outbox (receipts, refunds, security notices,
//! disabled-endpoint notices) with their delivery state and attempts, so an admin sees which mail
//! failed and why. Admins only; read-only.

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::auth::AdminUser;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::Query;
use crate::http::pagination::{non_empty, page, Limit};
use crate::http::responses::{AdminOnly, Unauthenticated};
use crate::http::routes::webhook_endpoints::AttemptOut;
use crate::http::state::AppState;
use crate::store::outbox::MessageRow;

const STATUS_RULE: &str = "must be pending, delivered or failed";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_email_messages)).routes(routes!(get_email_message))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EmailListParams {
    /// Only emails in this state.
    #[serde(default, deserialize_with = "email_status")]
    #[param(value_type = Option<String>, pattern = "^(pending|delivered|failed)$")]
    pub status: Option<String>,
    /// 1–100, default 20.
    #[serde(default)]
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Limit,
    /// The last message id of the previous page.
    #[serde(default, deserialize_with = "non_empty")]
    pub starting_after: Option<String>,
}

fn email_status<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let status = String::deserialize(deserializer)?;
    match status.as_str() {
        "pending" | "delivered" | "failed" => Ok(Some(status)),
        _ => Err(serde::de::Error::custom(STATUS_RULE)),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmailMessageOut {
    #[schema(example = "msg_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    /// `receipt`, `refund`, `password_changed`, `new_sign_in` or `endpoint_disabled`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The address it is sent to.
    pub recipient: String,
    /// `pending`, `delivered` or `failed` (permanently refused, or out of retries).
    pub status: String,
    /// Failed attempts in the current round.
    pub failed_attempts: i64,
    /// The last failure's reason (the mail server's or provider's answer).
    pub last_error: Option<String>,
    /// When the fact it reports happened.
    pub occurred_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// When it is tried next (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl From<MessageRow> for EmailMessageOut {
    fn from(m: MessageRow) -> EmailMessageOut {
        EmailMessageOut {
            next_attempt_at: (m.status == "pending").then_some(m.next_attempt_at),
            id: m.id,
            event_type: m.event_type,
            recipient: m.recipient,
            status: m.status,
            failed_attempts: m.attempts,
            last_error: m.last_error,
            occurred_at: m.occurred_at,
            created_at: m.created_at,
            delivered_at: m.delivered_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmailMessageList {
    pub data: Vec<EmailMessageOut>,
    pub has_more: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmailMessageDetail {
    #[serde(flatten)]
    pub message: EmailMessageOut,
    /// Every delivery attempt, oldest first.
    pub attempts: Vec<AttemptOut>,
}

/// The emails in the outbox, newest first, optionally only those in one state.
#[utoipa::path(get, path = "/api/v1/admin/email-messages", tag = "admin", params(EmailListParams), security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "A page of emails", body = EmailMessageList),
        Unauthenticated, AdminOnly,
        (status = 422, description = "Bad filter or list parameters", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_email_messages(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(list): Query<EmailListParams>,
) -> ApiResult<axum::Json<EmailMessageList>> {
    let rows = state.store.email_messages(list.status.as_deref(), list.limit.fetch(), list.starting_after.as_deref()).await?;
    let (rows, has_more) = page(rows, list.limit);
    Ok(axum::Json(EmailMessageList { data: rows.into_iter().map(EmailMessageOut::from).collect(), has_more }))
}

/// One email with every delivery attempt.
#[utoipa::path(get, path = "/api/v1/admin/email-messages/{id}", tag = "admin", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "A message id (`msg_…`)")),
    responses(
        (status = 200, description = "The email and its attempts", body = EmailMessageDetail),
        Unauthenticated, AdminOnly,
        (status = 404, description = "No such email", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_email_message(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<EmailMessageDetail>> {
    let message = state.store.outbox_message(&id).await?.filter(|m| m.kind == "email").ok_or(ApiError::NotFound)?;
    let attempts = state.store.message_attempts(&message.id).await?;
    Ok(axum::Json(EmailMessageDetail { message: message.into(), attempts: attempts.into_iter().map(AttemptOut::from).collect() }))
}
