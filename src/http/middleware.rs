//! The edge of every request: request id, client IP, panic recovery, problem rendering, security
//! headers and the access log, in one middleware so no response can leave without them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use ipnet::IpNet;
use tracing::Instrument;

use crate::domain::apikeys::mentions_key;
use crate::http::error::{ApiError, PasswordQueueFull, Problem, PROBLEM_JSON};
use crate::http::extract::{ClientInfo, RequestId};
use crate::meters::Meters;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the edge needs to know about the deployment.
#[derive(Clone)]
pub struct EdgeConfig {
    pub trusted_proxies: Arc<Vec<IpNet>>,
    /// This server terminates TLS itself.
    pub tls: bool,
    pub meters: Arc<Meters>,
}

/// The routes where a 401 is a login failure (wrong email or password).
const LOGIN_ROUTE: &str = "/api/v1/auth/login";
const TOKEN_ROUTE: &str = "/api/v1/auth/token";

/// The API's policy; the docs page sets its own, which is kept.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
pub const PERMISSIONS_POLICY: &str = "accelerometer=(), autoplay=(), camera=(), display-capture=(), encrypted-media=(), fullscreen=(), geolocation=(), gyroscope=(), hid=(), idle-detection=(), magnetometer=(), microphone=(), midi=(), payment=(), picture-in-picture=(), publickey-credentials-get=(), screen-wake-lock=(), serial=(), usb=(), xr-spatial-tracking=()";
pub const HSTS: &str = "max-age=63072000; includeSubDomains";

/// A client-supplied request id is kept when it is 1–128 visible ASCII characters of a safe set.
pub fn sane_request_id(value: &HeaderValue) -> Option<&str> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then_some(s)
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    let ip = canonical(ip);
    proxies.iter().any(|net| canonical_net(net).contains(&ip))
}

/// An IPv4-mapped IPv6 net (`::ffff:10.0.0.0/104`) is the IPv4 net it maps, as addresses are.
fn canonical_net(net: &IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map(IpNet::V4).unwrap_or(*net),
            None => *net,
        },
        _ => *net,
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are their IPv4 address for trust decisions.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` hop: an IP address, possibly `[v6]`, `[v6]:port` or `v4:port`.
fn parse_hop(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, tail) = rest.split_once(']')?;
        return (tail.is_empty() || tail.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok()))
            .then(|| inner.parse().ok())
            .flatten();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The client behind `peer`. Forwarding headers are believed only when `peer` is a trusted proxy;
/// then the client is the right-most `X-Forwarded-For` hop that is not itself a trusted proxy (hops
/// to its left could have been written by anyone). A hop that cannot be read ends the walk with an
/// unknown client (`0.0.0.0`), never with a trusted proxy's address.
pub fn resolve_client(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet], tls: bool) -> ClientInfo {
    let peer = canonical(peer);
    if !trusted(peer, proxies) {
        return ClientInfo { ip: peer, https: tls };
    }
    let mut ip = peer;
    // Bytes, not strings: one non-UTF-8 byte a client slipped into the header must not make the
    // whole header (with the proxy's honest hop) disappear.
    let hops: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter(|hop| !hop.trim_ascii().is_empty())
        .collect();
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(addr) => {
                ip = canonical(addr);
                if !trusted(ip, proxies) {
                    break;
                }
            }
            None => {
                ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                break;
            }
        }
    }
    let forwarded_https = headers
        .get_all("x-forwarded-proto")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    ClientInfo { ip, https: tls || forwarded_https }
}

/// Whether a query string holds something shaped like one of our API keys (percent-decoded).
fn key_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| mentions_key(q) || mentions_key(&percent_encoding::percent_decode_str(q).decode_utf8_lossy()))
}

/// A random (version 4) UUID from the thread's CSPRNG: request ids need to be unique, and asking
/// the kernel for 16 bytes on every request (`Uuid::new_v4`) was a system call per request.
fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid().to_string()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// The edge of the stack (`http/gate.rs`): everything outside `next`, which runs the rest.
pub async fn edge<F, Fut>(edge: &EdgeConfig, mut req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let started = Instant::now();
    let request_id = req.headers().get(&X_REQUEST_ID).and_then(sane_request_id).map(str::to_owned).unwrap_or_else(new_request_id);
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let client = resolve_client(peer, req.headers(), &edge.trusted_proxies, edge.tls);
    let id_header = HeaderValue::from_str(&request_id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    req.headers_mut().insert(X_REQUEST_ID.clone(), id_header.clone());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    req.extensions_mut().insert(client.clone());

    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    // Only the route template is logged: paths and query strings can carry tokens.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %method,
        route = route.as_deref().unwrap_or("<unmatched>"),
    );

    let mut response = if key_in_query(req.uri().query()) {
        // Refused before any handler: URLs end up in logs, histories and Referer headers.
        span.in_scope(|| tracing::warn!(client_ip = %client.ip, "API key in a query string refused"));
        ApiError::Unauthorized("API keys go in the Authorization header, never in a URL".to_owned()).into_response()
    } else {
        let outcome = AssertUnwindSafe(next(req)).catch_unwind().instrument(span.clone()).await;
        match outcome {
            Ok(response) => response,
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                let _entered = span.enter();
                ApiError::Internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
            }
        }
    };

    if response.extensions().get::<PasswordQueueFull>().is_some() {
        edge.meters.password_queue_refused();
    }
    response = render_problem(response, &request_id);
    set_security_headers(response.headers_mut(), client.https);
    response.headers_mut().insert(X_REQUEST_ID.clone(), id_header);

    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    edge.meters.http_request(method.as_str(), route.as_deref(), status, elapsed);
    if status == 401 && matches!(route.as_deref(), Some(LOGIN_ROUTE | TOKEN_ROUTE)) {
        edge.meters.login_failed();
    }
    let latency_ms = elapsed * 1000.0;
    span.in_scope(|| {
        if status >= 500 {
            tracing::error!(status, latency_ms, client_ip = %client.ip, "request failed");
        } else {
            tracing::info!(status, latency_ms, client_ip = %client.ip, "request");
        }
    });
    response
}

/// Renders the problem attached by [`ApiError`], or turns any other error response (axum's 405,
/// tower-http's 408 and 413, …) into the same problem shape, keeping headers such as `Allow`.
fn render_problem(mut response: Response, request_id: &str) -> Response {
    if let Some(problem) = response.extensions_mut().remove::<Problem>() {
        return problem.render(request_id, response);
    }
    let status = response.status();
    let is_problem =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if (status.is_client_error() || status.is_server_error()) && !is_problem {
        let mut problem = Problem::for_status(status);
        problem.detail = match status.as_u16() {
            405 => Some("this method is not allowed on this path; see the Allow header".to_owned()),
            408 => Some("the request took longer than this server allows".to_owned()),
            413 => Some("the request body is larger than this server accepts".to_owned()),
            _ => None,
        };
        return problem.render(request_id, response);
    }
    response
}

static COOP: HeaderName = HeaderName::from_static("cross-origin-opener-policy");
static PERMISSIONS: HeaderName = HeaderName::from_static("permissions-policy");
static POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");

fn set_security_headers(headers: &mut HeaderMap, https: bool) {
    // Room for all of them at once, instead of the map growing (and rehashing) as they come.
    headers.reserve(10);
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(COOP.clone(), HeaderValue::from_static("same-origin"));
    headers.insert(PERMISSIONS.clone(), HeaderValue::from_static(PERMISSIONS_POLICY));
    // Routes that serve a page (the docs) set a policy that fits it; everything else is API.
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(API_CSP));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if https {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    }
    headers.remove(header::SERVER);
    headers.remove(&POWERED_BY);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_headers_change_nothing() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https")]);
        let c = resolve_client("203.0.113.9".parse().unwrap(), &h, &nets(&["10.0.0.0/8"]), false);
        assert_eq!(c.ip.to_string(), "203.0.113.9");
        assert!(!c.https);
    }

    #[test]
    fn trusted_proxy_gives_the_rightmost_untrusted_hop() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.2"), ("x-forwarded-proto", "https")]);
        let c = resolve_client("10.0.0.1".parse().unwrap(), &h, &nets(&["10.0.0.0/8"]), false);
        assert_eq!(c.ip.to_string(), "198.51.100.7", "the spoofable left-most hop is ignored");
        assert!(c.https);
    }

    #[test]
    fn repeated_headers_and_garbage() {
        let trust = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.9, 10.0.0.3")]);
        let c = resolve_client("::ffff:10.0.0.1".parse().unwrap(), &h, &trust, false);
        assert_eq!(c.ip.to_string(), "198.51.100.9", "repeated headers are one list; trusted hops are walked past");
        let c = resolve_client("10.0.0.1".parse().unwrap(), &HeaderMap::new(), &trust, false);
        assert_eq!(c.ip.to_string(), "10.0.0.1", "no header: the proxy itself");
    }

    #[test]
    fn ipv4_mapped_proxy_nets_trust_the_ipv4_addresses_they_map() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        for peer in ["10.1.2.3", "::ffff:10.1.2.3"] {
            let c = resolve_client(peer.parse().unwrap(), &h, &nets(&["::ffff:10.0.0.0/104"]), false);
            assert_eq!(c.ip.to_string(), "198.51.100.7", "{peer}");
        }
        let c = resolve_client("11.0.0.1".parse().unwrap(), &h, &nets(&["::ffff:10.0.0.0/104"]), false);
        assert_eq!(c.ip.to_string(), "11.0.0.1", "outside the mapped net");
    }

    #[test]
    fn an_unreadable_hop_never_yields_a_trusted_address() {
        let trust = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "garbage, 10.0.0.3")]);
        let c = resolve_client("10.0.0.1".parse().unwrap(), &h, &trust, false);
        assert_eq!(c.ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn non_utf8_bytes_from_the_client_do_not_hide_the_real_hop() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_bytes(b"a\xff, 198.51.100.7").unwrap());
        let c = resolve_client("10.0.0.1".parse().unwrap(), &h, &nets(&["10.0.0.0/8"]), false);
        assert_eq!(c.ip.to_string(), "198.51.100.7");
    }

    #[test]
    fn hops_with_ports_and_brackets() {
        let trust = nets(&["10.0.0.0/8", "fd00::/8"]);
        for (hop, want) in [
            ("203.0.113.5:4711", "203.0.113.5"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("2001:db8::2", "2001:db8::2"),
        ] {
            let h = headers(&[("x-forwarded-for", hop)]);
            let c = resolve_client("fd00::1".parse().unwrap(), &h, &trust, false);
            assert_eq!(c.ip.to_string(), want, "{hop}");
        }
    }

    #[test]
    fn a_key_anywhere_in_the_query_is_found_encoded_or_not() {
        for q in ["api_key=tg_live_abc", "a=1&k=tg_test_x", "k=%74%67%5F%74%65%73%74%5Fx", "k=tg%5Flive%5Fx"] {
            assert!(key_in_query(Some(q)), "{q}");
        }
        for q in [None, Some(""), Some("email=a@example.com"), Some("k=tg_other"), Some("k=%ZZtg")] {
            assert!(!key_in_query(q), "{q:?}");
        }
    }

    #[test]
    fn request_ids() {
        assert_eq!(sane_request_id(&HeaderValue::from_static("abc-123_x.y:z")), Some("abc-123_x.y:z"));
        assert_eq!(sane_request_id(&HeaderValue::from_static("has space")), None);
        assert_eq!(sane_request_id(&HeaderValue::from_static("")), None);
        assert_eq!(sane_request_id(&HeaderValue::from_str(&"a".repeat(129)).unwrap()), None);
    }
}
