//! Liveness, readiness and the Prometheus metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::ClientInfo;
use crate::http::state::AppState;

/// How long one dependency may take to answer a readiness probe.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthOut {
    #[schema(example = "ok")]
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyOut {
    #[schema(example = "ready")]
    pub status: String,
    /// Each dependency checked and its state (`ok`).
    #[schema(example = json!({"database": "ok"}))]
    pub checks: BTreeMap<String, String>,
}

/// Liveness: the process serves.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is serving", body = HealthOut)))]
pub async fn healthz() -> Json<HealthOut> {
    Json(HealthOut { status: "ok".to_owned() })
}

/// Readiness: the database answers, its schema is current and it takes a write (and Redis answers,
/// when configured).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Every dependency answers", body = ReadyOut),
        (status = 503, description = "A dependency failed (the database unreachable, behind on migrations or unable to write); `checks` names it", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Json<ReadyOut>> {
    let mut checks = BTreeMap::new();
    let database = match tokio::time::timeout(CHECK_TIMEOUT, state.store.migration_status()).await {
        Err(_) => "timed out".to_owned(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database check failed");
            "unavailable".to_owned()
        }
        Ok(Ok(status)) if !status.pending.is_empty() => {
            format!("{} migration(s) pending; run `tollgate migrate`", status.pending.len())
        }
        Ok(Ok(_)) => match tokio::time::timeout(CHECK_TIMEOUT, state.store.check_writable()).await {
            Err(_) => "write timed out".to_owned(),
            Ok(Err(why)) => why,
            Ok(Ok(())) => "ok".to_owned(),
        },
    };
    checks.insert("database".to_owned(), database);
    if let Some(url) = &state.config.redis_url {
        // Redis down is not "not ready": the rate limits fall back to each instance's memory and
        // every request is still served, so taking every instance out of the load balancer at once
        // would turn a Redis outage into a full one. The check says so, and the answer stays 200.
        let redis =
            match crate::redis::ping_with_ca(url.expose_secret(), state.config.redis_ca_file.as_deref(), CHECK_TIMEOUT).await {
                // Redis answers PING, but the limiter's own checks fail (scripts refused, a read-only
                // replica, a full Redis): the limits are per instance all the same.
                Ok(()) if state.limiter.degraded() => {
                    tracing::warn!("readiness: redis answers but the rate limiter is using memory");
                    "degraded".to_owned()
                }
                Ok(()) => "ok".to_owned(),
                Err(e) => {
                    tracing::warn!(error = %e, "readiness: redis check failed; rate limits are per instance");
                    "degraded".to_owned()
                }
            };
        checks.insert("redis".to_owned(), redis);
    }
    if checks.iter().all(|(k, v)| v == "ok" || (k == "redis" && v == "degraded")) {
        Ok(Json(ReadyOut { status: "ready".to_owned(), checks }))
    } else {
        Err(ApiError::NotReady(checks))
    }
}

/// The Prometheus text format (see the README's Metrics section). Allowed to a client on loopback
/// (the address the edge resolved: the socket peer, or the forwarded client when the peer is a
/// trusted proxy) and to `Authorization: Bearer <TOLLGATE_METRICS_TOKEN>`; anyone else gets 403.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Counters and histograms in the Prometheus text format (0.0.4)", content_type = "text/plain", body = String),
        (status = 403, description = "Neither a loopback client nor the metrics token", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn metrics(State(state): State<AppState>, client: ClientInfo, headers: HeaderMap) -> ApiResult<Response> {
    let token = state.config.http.metrics_token.as_ref().map(|t| t.expose_secret().as_bytes());
    if !may_read_metrics(client.ip, &headers, token) {
        return Err(ApiError::Forbidden(
            "metrics are served to loopback clients and to the metrics token (Authorization: Bearer)".to_owned(),
        ));
    }
    let (storage, unreachable) = state.store.fault_counts();
    let mut body = state.meters.render(storage, unreachable);
    // The outbox as the database has it now (every instance's), not this process's counters.
    if let Ok((pending, failed)) = state.store.outbox_backlog().await {
        body.push_str(&format!(
            "# HELP tollgate_outbox_messages Outbox messages (webhooks and email) by status: pending is the backlog, failed gave up\n\
             # TYPE tollgate_outbox_messages gauge\n\
             tollgate_outbox_messages{{status=\"pending\"}} {pending}\n\
             tollgate_outbox_messages{{status=\"failed\"}} {failed}\n"
        ));
    }
    // The read view of this instance (store/view.rs).
    let view = state.store.view().stats();
    body.push_str(&format!(
        "# HELP tollgate_read_view_lookups_total Read view lookups of this instance: hit (no database read) or miss\n\
         # TYPE tollgate_read_view_lookups_total counter\n\
         tollgate_read_view_lookups_total{{result=\"hit\"}} {}\n\
         tollgate_read_view_lookups_total{{result=\"miss\"}} {}\n\
         # HELP tollgate_change_feed_live 1 while this instance's PostgreSQL change feed is live (its heartbeat comes back), else 0\n\
         # TYPE tollgate_change_feed_live gauge\n\
         tollgate_change_feed_live {}\n",
        view.hits,
        view.misses,
        u8::from(view.live)
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}

/// A loopback client, or a bearer token equal to the configured one (compared in constant time,
/// as SHA-256 digests so that not even the length shows).
fn may_read_metrics(client: std::net::IpAddr, headers: &HeaderMap, token: Option<&[u8]>) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    if client.is_loopback() {
        return true;
    }
    let (Some(token), Some(presented)) =
        (token, headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")))
    else {
        return false;
    };
    Sha256::digest(presented.trim().as_bytes()).ct_eq(&Sha256::digest(token)).into()
}
