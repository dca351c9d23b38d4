//! `Idempotency-Key` for POSTs that create something: the same key with the same request from the
//! same principal within 24 hours gets the first response again (with `Idempotent-Replayed: true`);
//! the same key with a different request is 422; while the first is still running, 409.
//!
//! Nothing in the table can be replayed by someone who only reads the database: the key is stored
//! as its SHA-256, and the saved response (a PaymentIntent's `client_secret`, say) is sealed with
//! a key derived from the Idempotency-Key itself, which only the client holds.

use std::future::Future;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;

use crate::domain::crypto::{open_bytes, seal_bytes, token_hash};
use crate::domain::FieldError;
use crate::http::error::{ApiError, ApiResult};
use crate::http::state::AppState;
use crate::store::IdempotencyStart;

/// The `Idempotency-Key` header, as operations that honour it document it.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// 1-255 printable ASCII characters; a retry with the same key and body gets the first answer
    #[param(rename = "Idempotency-Key", pattern = "^[ -~]{1,255}$", nullable)]
    pub idempotency_key: Option<String>,
}

/// The key, when the request carries a valid one: 1–255 printable ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(v) if (1..=255).contains(&v.len()) && v.bytes().all(|b| (0x20..0x7f).contains(&b)) => Ok(Some(v.to_owned())),
        _ => Err(ApiError::Validation(vec![FieldError::new("Idempotency-Key", "must be 1-255 printable ASCII characters")])),
    }
}

/// Runs `create` at most once per (principal, key, request). The request is identified by `route`
/// and the parsed `input`, so the same JSON with other whitespace is the same request.
pub async fn idempotent<T, F, Fut>(
    state: &AppState,
    principal: &str,
    headers: &HeaderMap,
    route: &str,
    input: &impl Serialize,
    create: F,
) -> ApiResult<Response>
where
    T: Serialize,
    F: FnOnce() -> Fut,
    Fut: Future<Output = ApiResult<(StatusCode, T)>>,
{
    idempotent_remembering(state, principal, headers, route, input, |body| body, create).await
}

/// [`idempotent`], remembering for the replay only what `remember` keeps of the JSON answer: a
/// secret shown once (a new API key) is answered the first time and never stored, so a replay
/// answers without it.
pub async fn idempotent_remembering<T, F, Fut>(
    state: &AppState,
    principal: &str,
    headers: &HeaderMap,
    route: &str,
    input: &impl Serialize,
    remember: impl FnOnce(serde_json::Value) -> serde_json::Value,
    create: F,
) -> ApiResult<Response>
where
    T: Serialize,
    F: FnOnce() -> Fut,
    Fut: Future<Output = ApiResult<(StatusCode, T)>>,
{
    let Some(key) = idempotency_key(headers)? else {
        let (status, body) = create().await?;
        return Ok((status, axum::Json(body)).into_response());
    };
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(input).map_err(anyhow::Error::from)?);
    let hash: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let store = &state.store;
    let stored_key = token_hash(&key);
    match store.idempotency_start(principal, &stored_key, &hash, Utc::now()).await? {
        IdempotencyStart::New => {}
        IdempotencyStart::Replay { status, body: sealed } => {
            let body = open_bytes(key.as_bytes(), principal, &sealed)
                .ok_or_else(|| anyhow::anyhow!("a saved idempotent response does not open with its key"))?;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut response = (status, [("content-type", "application/json")], body).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        IdempotencyStart::Mismatch => {
            return Err(ApiError::Validation(vec![FieldError::new(
                "Idempotency-Key",
                "was already used with a different request; use a new key",
            )]))
        }
        IdempotencyStart::InProgress => {
            return Err(ApiError::Conflict(
                "a request with this Idempotency-Key is still being processed; retry shortly".to_owned(),
            ))
        }
    }
    match create().await {
        Ok((status, body)) => {
            let bytes = serde_json::to_vec(&body).map_err(anyhow::Error::from)?;
            let kept = serde_json::to_vec(&remember(serde_json::to_value(&body).map_err(anyhow::Error::from)?))
                .map_err(anyhow::Error::from)?;
            let sealed = seal_bytes(key.as_bytes(), principal, &kept);
            store.idempotency_finish(principal, &stored_key, status.as_u16(), &sealed).await?;
            Ok((status, [("content-type", "application/json")], bytes).into_response())
        }
        Err(e) => {
            // Only successes are remembered: a retry after a failure runs again.
            if let Err(forget) = store.idempotency_abandon(principal, &stored_key).await {
                tracing::error!(error = %forget, "cannot release an idempotency key");
            }
            Err(e)
        }
    }
}
