//! `POST /api/v1/webhooks/stripe`: verify over the raw bytes, store in the ledger, then answer 200.
//! Nothing is acknowledged before it is durable; nothing unverified is stored. The event is applied
//! to its order in the same transaction as the ledger insert.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::ledger::{created_grant, EventStatus, Recorded};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::ClientInfo;
use crate::http::responses::BodyTooLarge;
use crate::http::state::AppState;
use crate::meters::WebhookOutcome;
use crate::nowpayments::ipn::Payment;
use crate::nowpayments::signature::{verify_ipn, IpnError};
use crate::ratelimit::{client_key, Decision, Quota};
use crate::stripe::webhook::{verify_signature, Event};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(receive)).routes(routes!(receive_nowpayments))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReceivedOut {
    pub received: bool,
}

/// A Stripe event delivery. Verified by `Stripe-Signature` over the raw body; answered 200 once the
/// event is durably in the ledger (a redelivery of a stored event is a 200 no-op).
#[utoipa::path(post, path = "/api/v1/webhooks/stripe", tag = "webhooks",
    params(("Stripe-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"t.body\">")),
    request_body(content = Object, content_type = "application/json", description = "A Stripe event, byte for byte as Stripe signed it"),
    responses(
        (status = 200, description = "Stored (or already stored)", body = ReceivedOut),
        BodyTooLarge,
        (status = 400, description = "Missing, forged or stale signature, or a body that is not a Stripe event; nothing stored", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many deliveries from this address failed verification (TOLLGATE_WEBHOOK_LIMIT a minute); see Retry-After. A verified delivery is never refused so", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Not stored (the database refused the write, or applying it failed and it is kept as `failed`); Stripe will retry", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database cannot be reached; not stored, Stripe will retry (see Retry-After)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn receive(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<axum::Json<ReceivedOut>> {
    let stripe = &state.config.stripe;
    let header = headers.get("stripe-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    let tolerance = i64::try_from(stripe.webhook_tolerance.as_secs()).unwrap_or(300);
    if let Err(reason) = verify_signature(&body, header, &stripe.webhook_secrets, Utc::now().timestamp(), tolerance) {
        // A security event: who and why, never the body or the header.
        tracing::warn!(security = true, reason = %reason, client_ip = %client.ip, bytes = body.len(), "stripe webhook refused");
        state.meters.webhook(WebhookOutcome::Rejected);
        // Only deliveries that fail verification count (the check is an HMAC, before any database
        // work): a sender that keeps failing is told to back off, and a verified retry storm from
        // Stripe after an outage is never turned away, however fast it comes.
        let quota = Quota { limit: state.config.http.webhook_limit, period: std::time::Duration::from_secs(60) };
        let key = format!("webhook:unverified:{}", client_key(&client.ip.to_string()));
        if let Decision::Limited { limit, retry_after } = state.limiter.hit(&key, quota).await {
            return Err(ApiError::RateLimited { limit, retry_after });
        }
        return Err(ApiError::BadRequest("invalid Stripe-Signature".to_owned()));
    }
    let Some(event) = Event::parse(&body) else {
        tracing::warn!(security = true, client_ip = %client.ip, "signed stripe webhook body is not an event");
        state.meters.webhook(WebhookOutcome::Rejected);
        return Err(ApiError::BadRequest("the body is not a Stripe event".to_owned()));
    };
    let recorded = state.payments.ingest(&event, &body).await;
    state.meters.webhook(match &recorded {
        Ok(Recorded::Stored { status, .. }) => match status {
            EventStatus::Processed => WebhookOutcome::Processed,
            EventStatus::Ignored => WebhookOutcome::Ignored,
            EventStatus::Unmatched => WebhookOutcome::Unmatched,
            EventStatus::Failed | EventStatus::Received => WebhookOutcome::Failed,
        },
        Ok(Recorded::Duplicate { .. }) => WebhookOutcome::Duplicate,
        Err(_) => WebhookOutcome::Failed,
    });
    match recorded? {
        Recorded::Stored { status, detail, retried } => {
            if created_grant(&detail) {
                state.meters.order_fulfilled();
            }
            tracing::info!(event_id = %event.id, kind = %event.kind, status = %status, detail = %detail, retried, "stripe event stored")
        }
        Recorded::Duplicate { status } => {
            tracing::info!(event_id = %event.id, status = %status, "stripe event redelivered; already stored")
        }
    }
    Ok(axum::Json(ReceivedOut { received: true }))
}

/// A NOWPayments IPN. Verified by `x-nowpayments-sig` (hex HMAC-SHA512 with the IPN secret) over
/// the body's JSON with keys sorted, as `JSON.stringify` writes it; answered 200 once it is
/// durably in the ledger (a re-sent IPN is a 200 no-op). A `finished` IPN fulfils only once
/// `GET /v1/payment/{id}` confirms it; until then it is kept as `failed` and answered 502.
#[utoipa::path(post, path = "/api/v1/webhooks/nowpayments", tag = "webhooks",
    params(("x-nowpayments-sig" = String, Header, description = "hex HMAC-SHA512, keyed with the IPN secret, of the body's JSON with keys sorted recursively and no whitespace")),
    request_body(content = Object, content_type = "application/json", description = "A NOWPayments IPN, byte for byte as sent"),
    responses(
        (status = 200, description = "Stored (or already stored)", body = ReceivedOut),
        BodyTooLarge,
        (status = 400, description = "Missing or wrong signature (or NOWPayments not enabled on this server), a body that is not one JSON object, a duplicate key, or not a payment notification; nothing stored", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many deliveries from this address failed verification (TOLLGATE_WEBHOOK_LIMIT a minute); see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Not stored (the database refused the write, or applying it failed and it is kept as `failed`); NOWPayments will retry", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Stored as `failed`, not applied: NOWPayments' API does not (yet) confirm the payment as finished, or cannot be asked; a re-sent IPN, a replay or `tollgate nowpayments sync` applies it once it does", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database cannot be reached; not stored (see Retry-After)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn receive_nowpayments(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<axum::Json<ReceivedOut>> {
    let header = headers.get("x-nowpayments-sig").and_then(|v| v.to_str().ok());
    // NOWPayments off: nothing can verify, so every IPN is refused as unverifiable.
    let verified = match state.payments.nowpayments_ipn_secret() {
        Some(secret) => verify_ipn(&body, header, secret),
        None => Err(IpnError::Disabled),
    };
    let payment = match verified.as_ref().map(Payment::read) {
        Ok(Ok(payment)) => payment,
        Ok(Err(reason)) => {
            tracing::warn!(security = true, client_ip = %client.ip, reason = %reason, "signed nowpayments IPN is not a payment");
            state.meters.webhook_from("nowpayments", WebhookOutcome::Rejected);
            return Err(ApiError::BadRequest("the body is not a NOWPayments payment notification".to_owned()));
        }
        Err(reason) => {
            // A security event: who and why, never the body or the header.
            tracing::warn!(security = true, reason = %reason, client_ip = %client.ip, bytes = body.len(), "nowpayments IPN refused");
            state.meters.webhook_from("nowpayments", WebhookOutcome::Rejected);
            let quota = Quota { limit: state.config.http.webhook_limit, period: std::time::Duration::from_secs(60) };
            let key = format!("webhook:unverified:{}", client_key(&client.ip.to_string()));
            if let Decision::Limited { limit, retry_after } = state.limiter.hit(&key, quota).await {
                return Err(ApiError::RateLimited { limit, retry_after });
            }
            return Err(ApiError::BadRequest(match reason {
                IpnError::Body(e) => format!("{e}"),
                IpnError::Disabled => "NOWPayments is not enabled on this server".to_owned(),
                _ => "invalid x-nowpayments-sig".to_owned(),
            }));
        }
    };
    let recorded = state.payments.ingest_ipn(&payment, &body, None).await;
    state.meters.webhook_from(
        "nowpayments",
        match &recorded {
            Ok(Recorded::Stored { status, .. }) => match status {
                EventStatus::Processed => WebhookOutcome::Processed,
                EventStatus::Ignored => WebhookOutcome::Ignored,
                EventStatus::Unmatched => WebhookOutcome::Unmatched,
                EventStatus::Failed | EventStatus::Received => WebhookOutcome::Failed,
            },
            Ok(Recorded::Duplicate { .. }) => WebhookOutcome::Duplicate,
            Err(_) => WebhookOutcome::Failed,
        },
    );
    let event_id = payment.event_id();
    match recorded? {
        Recorded::Stored { status: EventStatus::Failed, detail, .. } => {
            tracing::warn!(event_id = %event_id, detail = %detail, "nowpayments IPN stored, not applied");
            return Err(ApiError::Provider(detail));
        }
        Recorded::Stored { status, detail, retried } => {
            if created_grant(&detail) {
                state.meters.order_fulfilled();
            }
            tracing::info!(event_id = %event_id, status = %status, detail = %detail, retried, "nowpayments IPN stored")
        }
        Recorded::Duplicate { status } => {
            tracing::info!(event_id = %event_id, status = %status, "nowpayments IPN re-sent; already stored")
        }
    }
    Ok(axum::Json(ReceivedOut { received: true }))
}
