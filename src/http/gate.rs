//! The stack every route runs behind, as one service: the edge (request id, client, panics,
//! problems, security headers, access log, metrics), sensitive headers, CORS, the request timeout
//! and the global budget, outermost first, around the route (with its body limits).
//!
//! One service instead of a layer each: `axum::middleware::from_fn` clones the whole service it
//! wraps and boxes it on every request, so three of them nested (with tower-http's timeout and
//! sensitive-headers layers between) cloned and boxed the stack eight times per request. Measured
//! in-process (`examples/stack_cost.rs`): that was most of what `GET /healthz` cost beyond routing.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use tower::{Layer, Service, ServiceExt};

use crate::http::cors::{cors, CorsPolicy};
use crate::http::middleware::{edge, EdgeConfig};
use crate::http::state::AppState;

/// Request headers whose values are marked sensitive, so no `Debug` of the request shows them.
static SENSITIVE: [HeaderName; 4] =
    [header::AUTHORIZATION, header::COOKIE, HeaderName::from_static("stripe-signature"), HeaderName::from_static("x-csrf-token")];

/// What the stack needs, shared by every route's copy of it.
pub struct Gate {
    pub edge: EdgeConfig,
    pub cors: CorsPolicy,
    pub timeout: Duration,
    /// Bodies declared larger than this are refused before the budget counts them (the route's
    /// `RequestBodyLimitLayer` still cuts a body that turns out larger than declared).
    pub body_limit: usize,
    pub state: AppState,
}

/// The [`Gate`] as a layer (`Router::layer`, so that it sees the matched route).
#[derive(Clone)]
pub struct GateLayer(pub Arc<Gate>);

impl<S> Layer<S> for GateLayer {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GateService { gate: self.0.clone(), inner }
    }
}

#[derive(Clone)]
pub struct GateService<S> {
    gate: Arc<Gate>,
    inner: S,
}

impl<S> Service<Request> for GateService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The route is readied (`oneshot`) when the request reaches it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let (gate, inner) = (self.gate.clone(), self.inner.clone());
        for name in &SENSITIVE {
            if let header::Entry::Occupied(mut values) = req.headers_mut().entry(name) {
                values.iter_mut().for_each(|v| v.set_sensitive(true));
            }
        }
        Box::pin(async move {
            let gate = &*gate;
            let response = edge(&gate.edge, req, |req| {
                cors(&gate.cors, req, |req| async move {
                    if declared_length(&req).is_some_and(|n| n > gate.body_limit) {
                        // The edge renders it as a problem.
                        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
                    }
                    let routed = crate::http::budget::budget(&gate.state, req, |req| async move {
                        match inner.oneshot(req).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        }
                    });
                    match tokio::time::timeout(gate.timeout, routed).await {
                        Ok(response) => response,
                        // The edge renders it as a problem.
                        Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
                    }
                })
            })
            .await;
            Ok(response)
        })
    }
}

/// The body length the request declares (`Content-Length`), when it is a number.
fn declared_length(req: &Request) -> Option<usize> {
    req.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
