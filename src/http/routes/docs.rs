//! `/openapi.json` and `/docs`: the API description and a page that renders it, with every asset
//! served from the binary (no CDN), under a CSP that allows exactly those assets.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::state::AppState;

/// The docs page loads its own script and stylesheet and fetches `/openapi.json`; nothing else.
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const DOCS_HTML: &str = include_str!("../../../assets/docs/index.html");
const DOCS_JS: &str = include_str!("../../../assets/docs/docs.js");
const DOCS_CSS: &str = include_str!("../../../assets/docs/docs.css");

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(docs_page))
        // The page's assets are not part of the API.
        .route("/docs/docs.js", get(|| async { asset(DOCS_JS, "text/javascript; charset=utf-8") }))
        .route("/docs/docs.css", get(|| async { asset(DOCS_CSS, "text/css; charset=utf-8") }))
}

/// The OpenAPI 3.1 document describing this API.
#[utoipa::path(get, path = "/openapi.json", tag = "docs",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn openapi_json(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], state.openapi.as_ref().clone()).into_response()
}

/// A human-readable rendering of the OpenAPI document.
#[utoipa::path(get, path = "/docs", tag = "docs",
    responses((status = 200, description = "An HTML page rendering /openapi.json", content_type = "text/html", body = String)))]
pub async fn docs_page() -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], DOCS_HTML).into_response();
    response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DOCS_CSP));
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DOCS_CSP));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response
}
