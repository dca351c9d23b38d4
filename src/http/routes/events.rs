//! `/api/v1/admin/events*`: the ledger, for operators.

use axum::extract::{Path, RawQuery, State};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::domain::ledger::EventStatus;
use crate::domain::FieldError;
use crate::http::audit::audit;
use crate::http::auth::{AdminUser, Meta};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::pagination::{list_params, page};
use crate::http::state::AppState;
use crate::store::ledger::{EventRow, HistoryRow};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/events", get(list_events))
        .route("/api/v1/admin/events/{id}", get(get_event))
        .route("/api/v1/admin/events/{id}/replay", post(replay_event))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventListParams {
    /// Only events of this type (`checkout.session.completed`, …).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Only events in this state.
    #[param(pattern = "^(received|processed|ignored|unmatched|failed)$")]
    pub status: Option<String>,
    /// 1–100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The last event id of the previous page.
    pub starting_after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventOut {
    #[schema(example = "evt_1Pgc76B7WZ01zgkWwyRHS12y")]
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub livemode: bool,
    pub api_version: Option<String>,
    /// When Stripe created the event (RFC 3339).
    pub created: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `received`, `processed`, `ignored`, `unmatched` or `failed`.
    pub status: String,
}

impl From<&EventRow> for EventOut {
    fn from(r: &EventRow) -> EventOut {
        EventOut {
            id: r.event_id.clone(),
            kind: r.kind.clone(),
            livemode: r.livemode,
            api_version: r.api_version.clone(),
            created: DateTime::from_timestamp(r.created, 0),
            received_at: r.received_at,
            updated_at: r.updated_at,
            status: r.status.as_str().to_owned(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub data: Vec<EventOut>,
    pub has_more: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventDetailOut {
    #[serde(flatten)]
    pub event: EventOut,
    /// The body exactly as Stripe sent and signed it.
    pub raw_payload: String,
    /// What was done with the event, oldest first.
    pub history: Vec<HistoryRow>,
}

/// Every verified event, newest first.
#[utoipa::path(get, path = "/api/v1/admin/events", tag = "admin", params(EventListParams), security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "A page of the ledger", body = EventList),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad filter or list parameters", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_events(
    State(state): State<AppState>,
    _admin: AdminUser,
    RawQuery(q): RawQuery,
) -> ApiResult<axum::Json<EventList>> {
    let (limit, after) = list_params(q.clone())?;
    let mut kind = None;
    let mut status = None;
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "type" if !v.is_empty() => kind = Some(v.into_owned()),
            "status" => match EventStatus::parse(&v) {
                Some(s) => status = Some(s),
                None => {
                    return Err(ApiError::Validation(vec![FieldError::new(
                        "status",
                        "must be received, processed, ignored, unmatched or failed",
                    )]))
                }
            },
            _ => {}
        }
    }
    let rows = state.store.list_events(kind.as_deref(), status, limit + 1, after.as_deref()).await?;
    let (rows, has_more) = page(rows, limit);
    Ok(axum::Json(EventList { data: rows.iter().map(EventOut::from).collect(), has_more }))
}

/// One event with its raw payload and processing history.
#[utoipa::path(get, path = "/api/v1/admin/events/{id}", tag = "admin", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "A Stripe event id (`evt_…`)")),
    responses(
        (status = 200, description = "The event", body = EventDetailOut),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such event in the ledger", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_event(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<EventDetailOut>> {
    let (row, history) = state.store.event(&id).await?.ok_or(ApiError::NotFound)?;
    Ok(axum::Json(EventDetailOut {
        event: EventOut::from(&row),
        raw_payload: String::from_utf8_lossy(&row.payload).into_owned(),
        history,
    }))
}

/// Processes a stored event again, as if it had just arrived (idempotent: an order is fulfilled
/// once however often its events are replayed). Answers the event as it is afterwards.
#[utoipa::path(post, path = "/api/v1/admin/events/{id}/replay", tag = "admin", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "A Stripe event id (`evt_…`)")),
    responses(
        (status = 200, description = "Processed again", body = EventDetailOut),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin, or CSRF failure", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such event in the ledger", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn replay_event(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<EventDetailOut>> {
    let (status, _) = state.payments.replay(&id, &admin.user.id).await?;
    audit(&state, &meta, &admin.user.id, "event.replay", &id, serde_json::json!({"status": status.as_str()})).await;
    get_event(State(state), AdminUser(admin), Path(id)).await
}
