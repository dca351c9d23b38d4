//! The optional plain-http listener (`TOLLGATE_HTTP_REDIRECT_BIND`): every request is answered
//! `308 Permanent Redirect` to the same path and query on `TOLLGATE_PUBLIC_URL`'s https origin. The
//! request's `Host` (or an absolute request target) never chooses where the client is sent, so the
//! listener cannot be made an open redirect or poison a cache; it serves no API route.
//!
//! It runs the same accept loop as the main listener (its own instance, with the same timeouts)
//! under a small bound of its own, [`max_connections`], which the open-file budget includes: clients
//! holding connections to it cannot take the descriptors the https listener and the database need.

use axum::http::header::{CONTENT_LENGTH, LOCATION};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// The most connections the redirect listener serves at once, whatever `TOLLGATE_MAX_CONNECTIONS`.
pub const MAX_CONNECTIONS: usize = 64;

/// The redirect listener's connection bound for a main bound of `main`: an eighth of it, at least 1
/// and at most [`MAX_CONNECTIONS`]. A 308 takes one round trip, so a few slots serve many clients.
pub fn max_connections(main: usize) -> usize {
    (main / 8).clamp(1, MAX_CONNECTIONS)
}

/// The file descriptors the redirect listener can hold with a bound of `max`: its connections, the
/// one client the accept loop takes beyond the bound, and its listening socket.
pub fn descriptors(max: usize) -> u64 {
    u64::try_from(max).unwrap_or(u64::MAX).saturating_add(2)
}

/// A router that redirects everything to `origin` (`https://host[:port]`, no trailing slash).
pub fn router(origin: String) -> Router {
    Router::new().fallback(move |uri: Uri| {
        let location = location(&origin, &uri);
        async move { redirect(location) }
    })
}

/// `origin` followed by the request's path and query; only the path and query of the request are
/// used (an absolute-form target's scheme and authority are dropped).
pub fn location(origin: &str, uri: &Uri) -> String {
    let path_and_query = uri.path_and_query().map(|pq| pq.as_str()).filter(|pq| pq.starts_with('/')).unwrap_or("/");
    format!("{origin}{path_and_query}")
}

fn redirect(location: String) -> Response {
    match HeaderValue::try_from(location) {
        Ok(value) => {
            (StatusCode::PERMANENT_REDIRECT, [(LOCATION, value), (CONTENT_LENGTH, HeaderValue::from_static("0"))]).into_response()
        }
        // A parsed request target is always a valid header value; refuse rather than guess.
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirect_bound_is_an_eighth_of_the_main_one_between_1_and_64() {
        for (main, redirect) in [(1, 1), (8, 1), (100, 12), (512, 64), (1024, 64), (usize::MAX, 64)] {
            assert_eq!(max_connections(main), redirect, "{main}");
        }
        assert_eq!(descriptors(64), 66);
    }

    #[test]
    fn the_location_keeps_path_and_query_and_never_the_requests_authority() {
        let origin = "https://pay.example.com";
        for (target, expected) in [
            ("/", "https://pay.example.com/"),
            ("/api/v1/orders/ord_1?x=1&y=%20", "https://pay.example.com/api/v1/orders/ord_1?x=1&y=%20"),
            ("http://evil.example/steal?q", "https://pay.example.com/steal?q"),
            ("http://evil.example", "https://pay.example.com/"),
            ("//evil.example/x", "https://pay.example.com//evil.example/x"),
            ("*", "https://pay.example.com/"),
        ] {
            let uri: Uri = target.parse().unwrap();
            assert_eq!(location(origin, &uri), expected, "{target}");
        }
    }
}
