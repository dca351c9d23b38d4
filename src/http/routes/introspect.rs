//! `POST /api/v1/auth/introspect` (RFC 7662): a merchant's server, with an API key holding
//! `tokens:introspect`, asks whether a user's access token is active now. The answer goes through
//! the same checks as any request made with the token (`AuthService::bearer_user`: signature,
//! expiry, its refresh family not revoked by a logout, theft detection or a password change, the
//! user not disabled), so a logout or a disabled user is honoured at once.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::account::Role;
use crate::domain::apikeys::Scope;
use crate::domain::auth::{AuthError, Credential};
use crate::http::apikey::ApiKeyCaller;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::responses::KeyAuthenticated;
use crate::http::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(introspect))
}

const FORM: &str = "application/x-www-form-urlencoded";

/// The form RFC 7662 defines.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct IntrospectIn {
    /// The access token to look at.
    token: String,
    /// Accepted and ignored: only access tokens can be active.
    token_type_hint: Option<String>,
}

/// RFC 7662's answer: `{"active": false}` alone for anything that is not an active access token.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct IntrospectionOut {
    pub active: bool,
    /// The user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The user's email address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// `access_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// Seconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// A problem with this detail (the edge renders it).
fn problem(status: StatusCode, detail: &str) -> Response {
    let mut p = Problem::for_status(status);
    p.detail = Some(detail.to_owned());
    let mut response = status.into_response();
    response.extensions_mut().insert(p);
    response
}

/// The `token` parameter of a form body: exactly once and not empty.
fn token_of(body: &[u8]) -> Result<String, &'static str> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|_| "the body is not a valid application/x-www-form-urlencoded form")?;
    let mut tokens = pairs.into_iter().filter(|(k, _)| k == "token").map(|(_, v)| v);
    match (tokens.next(), tokens.next()) {
        (Some(t), None) if !t.is_empty() => Ok(t),
        (Some(_), Some(_)) => Err("token must be given once"),
        _ => Err("token is required (token=<access token>)"),
    }
}

/// Whether a user's access token is active now (key with `tokens:introspect`).
#[utoipa::path(post, path = "/api/v1/auth/introspect", tag = "auth", security(("api_key" = [])),
    request_body(content = IntrospectIn, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The token's state; exactly `{\"active\": false}` unless it is an active access token", body = IntrospectionOut),
        (status = 400, description = "No token in the form", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/x-www-form-urlencoded", body = Problem, content_type = "application/problem+json"),
        KeyAuthenticated,
    ))]
pub async fn introspect(
    State(state): State<AppState>,
    caller: ApiKeyCaller,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    caller.require(Scope::TokensIntrospect)?;
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(FORM));
    if !is_form {
        return Ok(problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "expected Content-Type: application/x-www-form-urlencoded"));
    }
    let token = match token_of(&body) {
        Ok(t) => t,
        Err(detail) => return Ok(problem(StatusCode::BAD_REQUEST, detail)),
    };
    let out = match state.auth.bearer_user_now(&token).await {
        Ok((user, Credential::Bearer { claims, .. })) => IntrospectionOut {
            active: true,
            sub: Some(user.id.clone()),
            username: Some(user.email.clone()),
            role: Some(user.role),
            token_type: Some("access_token".to_owned()),
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            nbf: Some(claims.nbf),
            iss: Some(claims.iss.clone()),
            aud: Some(claims.aud.clone()),
            jti: Some(claims.jti.clone()),
        },
        Ok(_) | Err(AuthError::Unauthenticated) => IntrospectionOut::default(),
        // The database is unreachable, say: an error, never a guess either way.
        Err(e) => return Err(ApiError::from(e)),
    };
    let mut response = axum::Json(out).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_one_non_empty_form_parameter() {
        assert_eq!(token_of(b"token=abc.def&token_type_hint=access_token").unwrap(), "abc.def");
        assert_eq!(token_of(b"token=a%2Bb").unwrap(), "a+b");
        assert!(token_of(b"").is_err() && token_of(b"token=").is_err() && token_of(b"tok=1").is_err());
        assert_eq!(token_of(b"token=a&token=b").unwrap_err(), "token must be given once");
        assert!(serde_json::to_string(&IntrospectionOut::default()).unwrap() == r#"{"active":false}"#);
    }
}
