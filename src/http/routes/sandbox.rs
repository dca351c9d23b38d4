//! The sandbox's checkout page (development without a Stripe key): Pay, Decline or Cancel, each
//! delivered to our own webhook endpoint as Stripe-shaped, signed events. Not part of the API, so
//! not in the OpenAPI document; 404 whenever Stripe is the provider.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::nowpayments::sandbox::CryptoChoice;
use crate::stripe::sandbox::{Choice, PageInfo, SessionState};
use crate::stripe::ProviderError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .route("/sandbox/checkout/{id}", get(page).post(choose))
        .route("/sandbox/nowpayments/{id}", get(crypto_page).post(crypto_choose))
}

const PAGE_CSP: &str = "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    response
}

fn money(info: &PageInfo) -> String {
    format!("{}.{:02} {}", info.amount / 100, info.amount % 100, info.currency.to_uppercase())
}

async fn page(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let sandbox = state.sandbox.as_ref().ok_or(ApiError::NotFound)?;
    let info = sandbox.page(&id).ok_or(ApiError::NotFound)?;
    let id = escape(&id);
    let buttons = if info.status == SessionState::Open {
        format!(
            "<form method=\"post\" action=\"/sandbox/checkout/{id}\">\
             <button name=\"choice\" value=\"pay\">Pay</button> \
             <button name=\"choice\" value=\"decline\">Decline (card refused)</button> \
             <button name=\"choice\" value=\"cancel\">Cancel</button></form>"
        )
    } else {
        format!("<p>This checkout is {}.</p>", escape(info.status.as_str()))
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tollgate sandbox checkout</title></head><body>\
         <h1>Sandbox checkout</h1><p>No real money moves here: this page stands in for Stripe Checkout in development.</p>\
         <p>Order <code>{}</code>: <strong>{}</strong></p>{buttons}</body></html>",
        escape(&info.order_id),
        escape(&money(&info)),
    );
    Ok(html(StatusCode::OK, body))
}

async fn choose(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let sandbox = state.sandbox.as_ref().ok_or(ApiError::NotFound)?;
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site") {
        return Err(ApiError::Forbidden("cross-site request refused".to_owned()));
    }
    let choice = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "choice")
        .and_then(|(_, v)| Choice::parse(&v))
        .ok_or_else(|| ApiError::BadRequest("choice must be pay, decline or cancel".to_owned()))?;
    let info = sandbox.page(&id).ok_or(ApiError::NotFound)?;
    match sandbox.choose(&id, choice).await {
        Ok(()) => {}
        Err(ProviderError::NotFound) => return Err(ApiError::NotFound),
        Err(ProviderError::Unsupported(why)) => return Err(ApiError::Conflict(why.to_owned())),
        Err(e) => return Err(ApiError::Provider(e.to_string())),
    }
    let (what, next) = match choice {
        Choice::Pay => ("Paid", info.success_url),
        Choice::Decline => ("The card was declined", format!("/sandbox/checkout/{id}")),
        Choice::Cancel => ("Canceled", info.cancel_url),
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tollgate sandbox checkout</title></head><body>\
         <h1>{what}</h1><p>The events went to the webhook endpoint, signed, as Stripe would send them.</p>\
         <p><a href=\"{}\">Continue</a></p></body></html>",
        escape(&next)
    );
    Ok(html(StatusCode::OK, body))
}

/// NOWPayments' invoice page, in the sandbox: pay in full, pay part, or let it expire.
async fn crypto_page(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let sandbox = state.payments.nowpayments_sandbox().ok_or(ApiError::NotFound)?;
    let info = sandbox.page(&id).ok_or(ApiError::NotFound)?;
    let id = escape(&id);
    let buttons = match info.status {
        None => format!(
            "<form method=\"post\" action=\"/sandbox/nowpayments/{id}\">\
             <button name=\"choice\" value=\"pay\">Pay in full</button> \
             <button name=\"choice\" value=\"partial\">Pay only part</button> \
             <button name=\"choice\" value=\"expire\">Let it expire</button></form>"
        ),
        Some(status) => format!("<p>This invoice's payment is {}.</p>", escape(status)),
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tollgate sandbox crypto invoice</title></head><body>\
         <h1>Sandbox crypto invoice</h1><p>No real crypto moves here: this page stands in for a NOWPayments invoice in development.</p>\
         <p>Order <code>{}</code>: <strong>{}</strong></p>{buttons}</body></html>",
        escape(&info.order_id),
        escape(&info.price),
    );
    Ok(html(StatusCode::OK, body))
}

async fn crypto_choose(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let sandbox = state.payments.nowpayments_sandbox().ok_or(ApiError::NotFound)?;
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site") {
        return Err(ApiError::Forbidden("cross-site request refused".to_owned()));
    }
    let choice = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "choice")
        .and_then(|(_, v)| CryptoChoice::parse(&v))
        .ok_or_else(|| ApiError::BadRequest("choice must be pay, partial or expire".to_owned()))?;
    let info = sandbox.page(&id).ok_or(ApiError::NotFound)?;
    match sandbox.choose(&id, choice).await {
        Ok(()) => {}
        Err(ProviderError::NotFound) => return Err(ApiError::NotFound),
        Err(ProviderError::Unsupported(why)) => return Err(ApiError::Conflict(why.to_owned())),
        Err(e) => return Err(ApiError::Provider(e.to_string())),
    }
    let (what, next) = match choice {
        CryptoChoice::Pay => ("Paid", info.success_url),
        CryptoChoice::PayPart => ("Partially paid", info.success_url),
        CryptoChoice::Expire => ("Expired", info.cancel_url),
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tollgate sandbox crypto invoice</title></head><body>\
         <h1>{what}</h1><p>The IPNs went to the IPN endpoint, signed, as NOWPayments would send them.</p>\
         <p><a href=\"{}\">Continue</a></p></body></html>",
        escape(&next)
    );
    Ok(html(StatusCode::OK, body))
}
