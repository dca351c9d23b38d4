//! The global per-client budget: on API routes without a limit of their own, each client (the
//! user when a bearer token or session cookie proves one, else the client address) may make
//! `TOLLGATE_API_HOURLY_LIMIT` requests an hour and `TOLLGATE_API_DAILY_LIMIT` a day. Allowed
//! answers carry `RateLimit-Limit/Remaining/Reset` (of the tighter of the two), refused ones are
//! 429 problems with `Retry-After` as well.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::domain::apikeys::looks_like_key;
use crate::http::auth::cookie_value;
use crate::http::error::ApiError;
use crate::http::extract::ClientInfo;
use crate::http::state::AppState;
use crate::ratelimit::{client_key, Decision, Quota};

/// Routes with a limit of their own (login, token, register: per client and account;
/// checkout and payment intents: per user; licences: per user; password change: per credential;
/// webhooks: see the README), so the global budget does not count them twice.
const OWN_LIMIT: &[&str] = &[
    "/api/v1/auth/login",
    "/api/v1/auth/token",
    "/api/v1/auth/register",
    "/api/v1/checkout/sessions",
    "/api/v1/payment-intents",
    "/api/v1/me/licences",
    "/api/v1/users/{id}/licences",
    "/api/v1/me/password",
    "/api/v1/webhooks/stripe",
];

/// Whether the global budget applies to the route template `route`: API routes only (health,
/// readiness, metrics, docs, the OpenAPI document and the JWKS are never limited).
pub fn budgeted(route: &str) -> bool {
    route.starts_with("/api/") && !OWN_LIMIT.contains(&route)
}

/// Who the budget is counted for; `None` for an API key (its own per-key budget applies).
async fn who(state: &AppState, headers: &HeaderMap, client: &ClientInfo) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let user = match bearer {
        Some(token) if looks_like_key(token) => return None,
        Some(token) => state.auth.token_subject(token),
        None => match cookie_value(headers, state.cookie.name).filter(|t| !t.is_empty()) {
            Some(token) => state.auth.session_subject(token).await,
            None => None,
        },
    };
    Some(match user {
        Some(id) => format!("user:{id}"),
        None => format!("ip:{}", client_key(&client.ip.to_string())),
    })
}

fn headers_for(headers: &mut HeaderMap, limit: u32, remaining: u32, reset: Duration) {
    let secs = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
    for (name, value) in [
        ("ratelimit-limit", limit.to_string()),
        ("ratelimit-remaining", remaining.to_string()),
        ("ratelimit-reset", secs.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

pub async fn budget(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let applies = req.extensions().get::<MatchedPath>().is_some_and(|m| budgeted(m.as_str()));
    let client = req.extensions().get::<ClientInfo>().cloned();
    let (true, Some(client)) = (applies, client) else {
        return next.run(req).await;
    };
    let Some(who) = who(&state, req.headers(), &client).await else {
        return next.run(req).await;
    };
    let http = &state.config.http;
    let hour = Quota { limit: http.api_hourly_limit, period: Duration::from_secs(3600) };
    let day = Quota { limit: http.api_daily_limit, period: Duration::from_secs(86_400) };
    let hourly = state.limiter.hit(&format!("api:hour:{who}"), hour).await;
    if let Decision::Limited { limit, retry_after } = hourly {
        return ApiError::RateLimited { limit, retry_after }.into_response();
    }
    let daily = state.limiter.hit(&format!("api:day:{who}"), day).await;
    if let Decision::Limited { limit, retry_after } = daily {
        state.limiter.refund(&format!("api:hour:{who}"), hour).await;
        return ApiError::RateLimited { limit, retry_after }.into_response();
    }
    let mut response = next.run(req).await;
    // The tighter of the two budgets is the one a client must pace itself by.
    let tighter = [hourly, daily]
        .into_iter()
        .filter_map(|d| match d {
            Decision::Allowed { limit, remaining, reset } => Some((remaining, limit, reset)),
            Decision::Limited { .. } => None,
        })
        .min_by_key(|(remaining, _, _)| *remaining);
    if let Some((remaining, limit, reset)) = tighter {
        if !response.headers().contains_key("ratelimit-limit") {
            headers_for(response.headers_mut(), limit, remaining, reset);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_routes_without_their_own_limit_are_budgeted() {
        assert!(budgeted("/api/v1/me"));
        assert!(budgeted("/api/v1/orders/{id}"));
        for route in ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/.well-known/jwks.json"] {
            assert!(!budgeted(route), "{route} is never limited");
        }
        for route in OWN_LIMIT {
            assert!(!budgeted(route), "{route} has its own limit");
        }
    }
}
