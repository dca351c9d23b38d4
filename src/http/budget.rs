//! The global per-client budget: on API routes without a limit of their own, each client (the
//! user when a bearer token or session cookie proves one, else the client address) may make
//! `TOLLGATE_API_HOURLY_LIMIT` requests an hour and `TOLLGATE_API_DAILY_LIMIT` a day. Refused
//! answers are 429 problems with `Retry-After` and `RateLimit-*`; allowed answers on API routes
//! carry `RateLimit-Limit/Remaining/Reset` of the tightest limit they passed, this budget's or
//! one a service counted (API key, checkout...), except login, token and registration.

use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::domain::apikeys::looks_like_key;
use crate::domain::auth::LiveSession;
use crate::http::auth::{cookie_value, VerifiedAccess};
use crate::http::error::ApiError;
use crate::http::extract::ClientInfo;
use crate::http::state::AppState;
use crate::ratelimit::{client_key, Decision, Quota, Refusal};

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

/// Routes that end access or tell of its end: a user who spent their budget (or whose stolen
/// session spent it) must still be able to log out and end sessions, an admin in an incident to
/// disable a user or revoke a key, and licence verifiers to poll the revocation list.
const NEVER_BUDGETED: &[&str] = &[
    "/api/v1/auth/logout",
    "/api/v1/me/sessions/{id}",
    "/api/v1/admin/users/{id}",
    "/api/v1/admin/api-keys/{id}",
    "/api/v1/licences/revoked",
];

/// Whether the global budget applies to the route template `route`: API routes only (health,
/// readiness, metrics, docs, the OpenAPI document and the JWKS are never limited).
pub fn budgeted(route: &str) -> bool {
    route.starts_with("/api/") && !OWN_LIMIT.contains(&route) && !NEVER_BUDGETED.contains(&route)
}

/// The routes an API key authenticates on (each key has its own budget there).
fn key_route(route: &str) -> bool {
    route == "/api/v1/users" || route.starts_with("/api/v1/users/") || route == "/api/v1/auth/introspect"
}

/// Who the budget is counted for; `None` for an API key on a key route (its own per-key budget
/// applies, and unknown keys are limited per address where they are looked up). Anything that only
/// looks like a key elsewhere counts for the address.
///
/// A bearer token whose claims verify is left in `verified` for the extractor
/// ([`VerifiedAccess`]), so that the request does not verify its token twice.
async fn who(
    state: &AppState,
    route: &str,
    headers: &HeaderMap,
    client: &ClientInfo,
    verified: &mut Option<VerifiedAccess>,
    session: &mut Option<LiveSession>,
) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let user = match bearer {
        Some(token) if looks_like_key(token) && key_route(route) => return None,
        Some(token) if looks_like_key(token) => None,
        Some(token) => state.auth.access_claims(token).map(|claims| {
            let sub = claims.sub.clone();
            *verified = Some(VerifiedAccess(claims));
            sub
        }),
        None => match cookie_value(headers, state.cookie.name).filter(|t| !t.is_empty()) {
            Some(token) => state.auth.live_session(token).await.map(|live| {
                let user = live.user_id().to_owned();
                *session = Some(live);
                user
            }),
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
    // Names known at compile time and numbers written straight into the value (no string between).
    headers.insert(HeaderName::from_static("ratelimit-limit"), HeaderValue::from(limit));
    headers.insert(HeaderName::from_static("ratelimit-remaining"), HeaderValue::from(remaining));
    headers.insert(HeaderName::from_static("ratelimit-reset"), HeaderValue::from(secs));
}

/// Routes whose allowed answers carry no `RateLimit-*`: a login, token or registration answer
/// must look the same whether or not the account exists (the per-account counts would differ).
const NO_ALLOWANCE_HEADERS: &[&str] = &["/api/v1/auth/login", "/api/v1/auth/token", "/api/v1/auth/register"];

/// The budget around `next` (the handler).
pub async fn budget<F, Fut>(state: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    // The template shares its text with the router (an `Arc<str>` clone, not a copy).
    let route = req.extensions().get::<MatchedPath>().cloned();
    let Some(route) = route.filter(|r| r.as_str().starts_with("/api/")) else {
        return next(req).await;
    };
    let route = route.as_str();
    let (mut verified, mut session) = (None, None);
    let who = match (budgeted(route), req.extensions().get::<ClientInfo>().cloned()) {
        (true, Some(client)) => who(state, route, req.headers(), &client, &mut verified, &mut session).await,
        _ => None,
    };
    let mut req = req;
    if let Some(verified) = verified {
        req.extensions_mut().insert(verified);
    }
    if let Some(session) = session {
        req.extensions_mut().insert(session);
    }
    let mut allowances = Vec::new();
    if let Some(who) = who {
        let http = &state.config.http;
        let hour = Quota { limit: http.api_hourly_limit, period: Duration::from_secs(3600) };
        let day = Quota { limit: http.api_daily_limit, period: Duration::from_secs(86_400) };
        // Both windows in one call: in memory one lock, and a pair one window refuses counts in
        // neither; on Redis hour, day, and the hour given back when the day refuses.
        let (hour_key, day_key) = (format!("api:hour:{who}"), format!("api:day:{who}"));
        match state.limiter.hit_both((&hour_key, hour), (&day_key, day)).await {
            Err(Refusal { limit, retry_after }) => return ApiError::RateLimited { limit, retry_after }.into_response(),
            Ok(decisions) => {
                for d in decisions {
                    if let Decision::Allowed { limit, remaining, reset } = d {
                        allowances.push((limit, remaining, reset));
                    }
                }
            }
        }
    }
    // The limits the handler's services counted (API key, checkout, licences...) join in.
    let (mut response, inside) = crate::ratelimit::observed(next(req)).await;
    allowances.extend(inside);
    if NO_ALLOWANCE_HEADERS.contains(&route) || response.headers().contains_key("ratelimit-limit") {
        return response;
    }
    // The tightest limit is the one a client must pace itself by.
    if let Some((limit, remaining, reset)) = allowances.into_iter().min_by_key(|(_, remaining, _)| *remaining) {
        headers_for(response.headers_mut(), limit, remaining, reset);
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
        for route in NEVER_BUDGETED {
            assert!(!budgeted(route), "{route} ends access or tells of its end: never budgeted");
        }
        assert!(key_route("/api/v1/users/{id}/entitlements") && key_route("/api/v1/auth/introspect"));
        assert!(!key_route("/api/v1/products") && !key_route("/api/v1/auth/refresh"));
        for route in ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/.well-known/jwks.json"] {
            assert!(!budgeted(route), "{route} is never limited");
        }
        for route in OWN_LIMIT {
            assert!(!budgeted(route), "{route} has its own limit");
        }
    }
}
