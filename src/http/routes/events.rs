//! `/api/v1/admin/events*`: the ledger, for operators.

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::ledger::EventStatus;
use crate::http::audit::audit;
use crate::http::auth::{AdminUser, Meta};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::Query;
use crate::http::pagination::{non_empty, page, Limit};
use crate::http::responses::{AdminOnly, AdminOnlyWithCsrf, Unauthenticated};
use crate::http::state::AppState;
use crate::store::ledger::{EventRow, HistoryRow};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events)).routes(routes!(get_event)).routes(routes!(replay_event))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventListParams {
    /// Only events of this type (`checkout.session.completed`, …).
    #[serde(rename = "type", default, deserialize_with = "non_empty")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Only this provider's events: `stripe` or `nowpayments`.
    #[serde(default, deserialize_with = "event_provider")]
    #[param(value_type = Option<String>, pattern = "^(stripe|nowpayments)$")]
    pub provider: Option<String>,
    /// Only events in this state.
    #[serde(default, deserialize_with = "event_status")]
    #[param(value_type = Option<String>, pattern = "^(received|processed|ignored|unmatched|failed)$")]
    pub status: Option<EventStatus>,
    /// 1–100, default 20.
    #[serde(default)]
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Limit,
    /// The last event id of the previous page.
    #[serde(default, deserialize_with = "non_empty")]
    pub starting_after: Option<String>,
}

fn event_provider<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let provider = String::deserialize(deserializer)?;
    match provider.as_str() {
        "stripe" | "nowpayments" => Ok(Some(provider)),
        _ => Err(serde::de::Error::custom("must be stripe or nowpayments")),
    }
}

fn event_status<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<EventStatus>, D::Error> {
    let status = String::deserialize(deserializer)?;
    EventStatus::parse(&status)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("must be received, processed, ignored, unmatched or failed"))
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
    /// Who sent it: `stripe` or `nowpayments` (an IPN, whose id is `np_<payment>_<status>_<updated_at>`).
    pub provider: String,
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
            provider: r.provider.clone(),
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
        Unauthenticated, AdminOnly,
        (status = 422, description = "Bad filter or list parameters", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_events(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(list): Query<EventListParams>,
) -> ApiResult<axum::Json<EventList>> {
    let rows = state
        .store
        .list_provider_events(
            list.provider.as_deref(),
            list.kind.as_deref(),
            list.status,
            list.limit.fetch(),
            list.starting_after.as_deref(),
        )
        .await?;
    let (rows, has_more) = page(rows, list.limit);
    Ok(axum::Json(EventList { data: rows.iter().map(EventOut::from).collect(), has_more }))
}

/// One event with its raw payload and processing history.
#[utoipa::path(get, path = "/api/v1/admin/events/{id}", tag = "admin", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "A Stripe event id (`evt_…`)")),
    responses(
        (status = 200, description = "The event", body = EventDetailOut),
        Unauthenticated, AdminOnly,
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
        Unauthenticated, AdminOnlyWithCsrf,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FieldError;
    use crate::http::extract::parse_query;

    #[test]
    fn events_are_filtered_by_a_known_status() {
        let p: EventListParams = parse_query("status=failed&type=charge.refunded").unwrap();
        assert_eq!((p.status, p.kind.as_deref()), (Some(EventStatus::Failed), Some("charge.refunded")));
        assert_eq!(parse_query::<EventListParams>("type=").unwrap().kind, None);
        assert_eq!(parse_query::<EventListParams>("provider=nowpayments").unwrap().provider.as_deref(), Some("nowpayments"));
        let Err(ApiError::Validation(errors)) = parse_query::<EventListParams>("provider=paypal") else { panic!() };
        assert_eq!(errors, [FieldError::new("provider", "must be stripe or nowpayments")]);
        for bad in ["status=lost", "status=", "status=Failed"] {
            let Err(ApiError::Validation(errors)) = parse_query::<EventListParams>(bad) else { panic!("{bad} accepted") };
            assert_eq!(errors, [FieldError::new("status", "must be received, processed, ignored, unmatched or failed")], "{bad}");
        }
    }
}
