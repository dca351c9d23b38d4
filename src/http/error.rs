//! The one error type of the HTTP layer and its problem+json rendering (RFC 9457).
//!
//! A handler returns [`ApiError`]; its `IntoResponse` attaches a [`Problem`] to the response and
//! the edge middleware renders it with the request id. Error responses produced by layers that
//! know nothing of this type (axum's 405, tower-http's 408/413) are rendered there too, so every
//! error leaving the server has the same shape. Internal causes are logged, never sent.

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::FieldError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    #[schema(example = "urn:tollgate:problem:validation-failed")]
    pub kind: String,
    /// A short, human-readable summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request id (also in the `X-Request-Id` header); quote it when reporting a problem.
    pub request_id: String,
    /// Field-level validation errors (422).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// Per-dependency readiness (503 from `/readyz`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<BTreeMap<String, String>>,
    /// The credit balance now (409 `insufficient-credits`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<i64>,
}

impl Problem {
    /// A problem for `status` with the standard title and no detail.
    pub fn for_status(status: StatusCode) -> Problem {
        let (slug, title) = match status.as_u16() {
            400 => ("bad-request", "Bad request"),
            401 => ("unauthorized", "Not authenticated"),
            403 => ("forbidden", "Forbidden"),
            404 => ("not-found", "Not found"),
            405 => ("method-not-allowed", "Method not allowed"),
            408 => ("request-timeout", "Request timeout"),
            409 => ("conflict", "Conflict"),
            413 => ("payload-too-large", "Payload too large"),
            415 => ("unsupported-media-type", "Unsupported media type"),
            422 => ("validation-failed", "Validation failed"),
            429 => ("rate-limited", "Too many requests"),
            502 => ("bad-gateway", "Upstream error"),
            503 => ("not-ready", "Service unavailable"),
            s if s >= 500 => ("internal", "Internal server error"),
            _ => ("error", "Request failed"),
        };
        Problem {
            kind: format!("urn:tollgate:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            request_id: String::new(),
            errors: None,
            checks: None,
            balance: None,
        }
    }

    fn detail(mut self, detail: impl Into<String>) -> Problem {
        self.detail = Some(detail.into());
        self
    }

    /// The final response: the problem serialised with `request_id`, keeping `headers`.
    pub fn render(mut self, request_id: &str, mut response: Response) -> Response {
        self.request_id = request_id.to_owned();
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.remove(header::CONTENT_LENGTH);
        let (parts, _) = response.into_parts();
        Response::from_parts(parts, axum::body::Body::from(body))
    }
}

/// Marks a response refused because the password queue was full (counted by the edge).
#[derive(Debug, Clone, Copy)]
pub struct PasswordQueueFull;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("not authenticated")]
    Unauthorized(String),
    #[error("forbidden")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("conflict")]
    Conflict(String),
    /// A debit or adjustment larger than the balance: 409 `insufficient-credits` with the balance.
    #[error("insufficient credits")]
    InsufficientCredits { balance: i64 },
    #[error("rate limited")]
    RateLimited { limit: u32, retry_after: std::time::Duration },
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("not ready")]
    NotReady(BTreeMap<String, String>),
    /// The payment provider failed or refused; logged, never shown (no key, no Stripe internals).
    #[error("payment provider error: {0}")]
    Provider(String),
    /// The database cannot be reached right now; a retry may work.
    #[error("database unavailable")]
    Unavailable,
    /// Too much password work is waiting; nothing was done and a retry may work.
    #[error("busy")]
    Busy,
    /// Logged with the request id; the client only learns that something went wrong.
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

/// An internal error, unless somewhere in its chain the store said the database is unreachable:
/// that is a 503 the client may retry, not a bug.
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let unavailable =
            e.chain().any(|cause| cause.downcast_ref::<crate::store::StoreError>().is_some_and(|s| s.is_unavailable()));
        if unavailable {
            ApiError::Unavailable
        } else {
            ApiError::Internal(e)
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::from(anyhow::Error::from(e))
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::InsufficientCredits { .. } => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotReady(_) | ApiError::Unavailable | ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Provider(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn problem(&self) -> Problem {
        let p = Problem::for_status(self.status());
        match self {
            ApiError::BadRequest(d) => p.detail(d.clone()),
            ApiError::Unauthorized(d) | ApiError::Forbidden(d) | ApiError::Conflict(d) => p.detail(d.clone()),
            ApiError::NotFound => p.detail("no such resource"),
            ApiError::InsufficientCredits { balance } => {
                let mut p = p.detail(format!("the credit balance is {balance}; nothing was debited"));
                p.kind = "urn:tollgate:problem:insufficient-credits".to_owned();
                p.title = "Insufficient credits".to_owned();
                p.balance = Some(*balance);
                p
            }
            ApiError::RateLimited { retry_after, .. } => {
                p.detail(format!("too many attempts; retry in {} s", retry_after_secs(*retry_after)))
            }
            ApiError::PayloadTooLarge => p.detail("the request body is larger than this server accepts"),
            ApiError::UnsupportedMediaType => p.detail("expected Content-Type: application/json"),
            ApiError::Validation(errors) => {
                let mut p = p.detail("the request has invalid fields; see errors");
                p.errors = Some(errors.clone());
                p
            }
            ApiError::NotReady(checks) => {
                let failed: Vec<&str> = checks.iter().filter(|(_, v)| *v != "ok").map(|(k, _)| k.as_str()).collect();
                let mut p = p.detail(format!("not ready: {} failed", failed.join(", ")));
                p.checks = Some(checks.clone());
                p
            }
            ApiError::Provider(_) => p.detail(
                "the payment provider could not complete the request; retry later (the same Idempotency-Key is safe to reuse)",
            ),
            ApiError::Unavailable => {
                p.detail("the database is unavailable; retry shortly (an Idempotency-Key makes the retry safe)")
            }
            ApiError::Busy => p.detail("too many password checks are waiting; nothing was done, retry shortly"),
            ApiError::Internal(_) => p.detail("an internal error occurred; quote the request id when reporting it"),
        }
    }
}

impl From<Vec<FieldError>> for ApiError {
    fn from(errors: Vec<FieldError>) -> Self {
        ApiError::Validation(errors)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            // Runs inside the request span, so the log line carries the request id.
            tracing::error!(error = %format!("{cause:#}"), "internal error");
        }
        if let ApiError::Provider(cause) = &self {
            tracing::error!(error = %cause, "payment provider error");
        }
        let mut response = self.status().into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::RateLimited { limit, retry_after } => {
                let secs = retry_after_secs(*retry_after).to_string();
                for (name, value) in [
                    ("retry-after", secs.clone()),
                    ("ratelimit-limit", limit.to_string()),
                    ("ratelimit-remaining", "0".to_owned()),
                    ("ratelimit-reset", secs),
                ] {
                    if let Ok(v) = HeaderValue::from_str(&value) {
                        headers.insert(name, v);
                    }
                }
            }
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable | ApiError::Busy => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if matches!(self, ApiError::Busy) {
            response.extensions_mut().insert(PasswordQueueFull);
        }
        response.extensions_mut().insert(self.problem());
        response
    }
}

/// Whole seconds, rounded up: a client that waits this long will be let through.
fn retry_after_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl From<crate::domain::auth::AuthError> for ApiError {
    fn from(e: crate::domain::auth::AuthError) -> Self {
        use crate::domain::auth::AuthError;
        match e {
            AuthError::InvalidCredentials => ApiError::Unauthorized("invalid email or password".to_owned()),
            AuthError::Unauthenticated => ApiError::Unauthorized("authentication required".to_owned()),
            AuthError::RateLimited { limit, retry_after } => ApiError::RateLimited { limit, retry_after },
            AuthError::Busy => ApiError::Busy,
            AuthError::Conflict(d) => ApiError::Conflict(d),
            AuthError::Validation(errors) => ApiError::Validation(errors),
            AuthError::NotFound => ApiError::NotFound,
            AuthError::Forbidden(d) => ApiError::Forbidden(d),
            AuthError::Internal(e) => ApiError::from(e),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<crate::domain::payments::PaymentError> for ApiError {
    fn from(e: crate::domain::payments::PaymentError) -> Self {
        use crate::domain::payments::PaymentError;
        match e {
            PaymentError::NotFound => ApiError::NotFound,
            PaymentError::Validation(errors) => ApiError::Validation(errors),
            PaymentError::Conflict(d) => ApiError::Conflict(d),
            PaymentError::RateLimited { limit, retry_after } => ApiError::RateLimited { limit, retry_after },
            PaymentError::Provider(e) => ApiError::Provider(e.to_string()),
            PaymentError::Internal(e) => ApiError::from(e),
        }
    }
}
