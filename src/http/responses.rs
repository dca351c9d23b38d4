//! The problem responses many operations share, each set declared once and named in their
//! `#[utoipa::path(responses(...))]`: every one is a [`Problem`] as `application/problem+json`.
//! An operation lists its own success and the problems only it has beside them. These types only
//! document; handlers answer with [`ApiError`](crate::http::error::ApiError).
//!
//! Descriptions are worded as the routes documented them before the sets existed (two wordings
//! of a bad JSON body among them), so that the served document did not change.

use utoipa::IntoResponses;

use crate::http::error::Problem;

/// No live session cookie and no valid bearer token.
#[derive(IntoResponses)]
pub enum Unauthenticated {
    #[response(status = 401, description = "Not authenticated", content_type = "application/problem+json")]
    Unauthenticated(Problem),
}

/// An operation for admins only that changes nothing (no CSRF check).
#[derive(IntoResponses)]
pub enum AdminOnly {
    #[response(status = 403, description = "Not an admin", content_type = "application/problem+json")]
    Forbidden(Problem),
}

/// An operation for admins only that changes something: with a session cookie it also needs
/// `X-CSRF-Token`.
#[derive(IntoResponses)]
pub enum AdminOnlyWithCsrf {
    #[response(status = 403, description = "Not an admin, or CSRF failure", content_type = "application/problem+json")]
    Forbidden(Problem),
}

/// A change made with a session cookie needs `X-CSRF-Token` and must not come from another site.
#[derive(IntoResponses)]
pub enum CsrfChecked {
    #[response(
        status = 403,
        description = "Missing or wrong X-CSRF-Token, or a cross-site request",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
}

/// A JSON request body ([`Json`](crate::http::extract::Json)) that is not JSON, or not sent as JSON.
#[derive(IntoResponses)]
pub enum JsonBody {
    #[response(status = 400, description = "Malformed JSON", content_type = "application/problem+json")]
    Malformed(Problem),
    #[response(status = 415, description = "Not JSON", content_type = "application/problem+json")]
    NotJson(Problem),
}

/// [`JsonBody`] as the payment routes word it.
#[derive(IntoResponses)]
pub enum PaymentsJsonBody {
    #[response(status = 400, description = "Malformed body", content_type = "application/problem+json")]
    Malformed(Problem),
    #[response(status = 415, description = "Not JSON", content_type = "application/problem+json")]
    NotJson(Problem),
}

/// A body over `TOLLGATE_BODY_LIMIT`.
#[derive(IntoResponses)]
pub enum BodyTooLarge {
    #[response(status = 413, description = "Body too large", content_type = "application/problem+json")]
    PayloadTooLarge(Problem),
}

/// A create made at most once per `Idempotency-Key` ([`idempotent`](crate::http::idempotency::idempotent)).
#[derive(IntoResponses)]
pub enum IdempotentCreate {
    #[response(
        status = 409,
        description = "The same Idempotency-Key is still being processed",
        content_type = "application/problem+json"
    )]
    InProgress(Problem),
    #[response(
        status = 422,
        description = "Invalid fields, or an Idempotency-Key reused with another body",
        content_type = "application/problem+json"
    )]
    Invalid(Problem),
}

/// `?limit=` or `?starting_after=` that do not parse ([`pagination`](crate::http::pagination)).
#[derive(IntoResponses)]
pub enum BadListParameters {
    #[response(status = 422, description = "Bad list parameters", content_type = "application/problem+json")]
    Invalid(Problem),
}

/// An email and password checked: the email must be one, and guessing is limited.
#[derive(IntoResponses)]
pub enum CredentialsChecked {
    #[response(status = 422, description = "Malformed email", content_type = "application/problem+json")]
    Invalid(Problem),
    #[response(status = 429, description = "Too many attempts; see Retry-After", content_type = "application/problem+json")]
    RateLimited(Problem),
}

/// Password work is queued; when the queue is full nothing is done.
#[derive(IntoResponses)]
pub enum PasswordQueueFull {
    #[response(
        status = 503,
        description = "Too many password checks are waiting; nothing was done, see Retry-After",
        content_type = "application/problem+json"
    )]
    Busy(Problem),
}

/// Starting a payment (Checkout Session or PaymentIntent) for the caller.
#[derive(IntoResponses)]
pub enum StartingPayment {
    #[response(status = 403, description = "CSRF failure", content_type = "application/problem+json")]
    Forbidden(Problem),
    #[response(status = 429, description = "Too many checkouts", content_type = "application/problem+json")]
    RateLimited(Problem),
    #[response(status = 502, description = "Stripe failed; nothing to pay yet", content_type = "application/problem+json")]
    Provider(Problem),
}

/// A route for the merchant's servers: an API key with the route's scope, within its limit.
#[derive(IntoResponses)]
pub enum KeyAuthenticated {
    #[response(
        status = 401,
        description = "No valid API key (missing, unknown, revoked, expired, or of the other mode)",
        content_type = "application/problem+json"
    )]
    Unauthenticated(Problem),
    #[response(status = 403, description = "The key lacks this route's scope", content_type = "application/problem+json")]
    Forbidden(Problem),
    #[response(
        status = 429,
        description = "The key's rate limit (TOLLGATE_API_KEY_LIMIT a minute); see Retry-After",
        content_type = "application/problem+json"
    )]
    RateLimited(Problem),
}
