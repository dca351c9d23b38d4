//! CORS from an exact allow-list. A listed origin gets credentials; an unlisted origin gets no CORS
//! header at all (not even `Access-Control-Allow-Credentials`), so the browser refuses the
//! response. `*` (development only) allows any origin, never with credentials.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;

use crate::config::CorsOrigins;

const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
const ALLOW_HEADERS: &str = "content-type, authorization, x-csrf-token, idempotency-key, x-request-id";
const EXPOSE_HEADERS: &str = "x-request-id, retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset";
const MAX_AGE: &str = "600";

#[derive(Clone)]
pub struct CorsPolicy(pub Arc<CorsOrigins>);

impl CorsPolicy {
    /// The `Access-Control-Allow-Origin` value for `origin`, and whether credentials are allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<(HeaderValue, bool)> {
        match self.0.as_ref() {
            CorsOrigins::Any => Some((HeaderValue::from_static("*"), false)),
            CorsOrigins::List(list) => {
                let o = origin.to_str().ok()?;
                list.iter().any(|allowed| allowed == o).then(|| (origin.clone(), true))
            }
        }
    }
}

fn add_vary_origin(headers: &mut HeaderMap) {
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// CORS around `next` (a preflight from an allowed origin is answered here).
pub async fn cors<F, Fut>(policy: &CorsPolicy, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin.as_ref().and_then(|o| policy.allow(o));
    let preflight = req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);

    let Some((allow_origin, credentials)) = allowed else {
        let mut response = next(req).await;
        if origin.is_some() {
            add_vary_origin(response.headers_mut());
        }
        return response;
    };

    let mut response = if preflight {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
        r
    } else {
        let mut r = next(req).await;
        r.headers_mut().insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
        r
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    if credentials {
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    add_vary_origin(h);
    response
}
