//! The HTTP server's settings: CORS, trusted proxies, limits and timeouts.

use std::time::Duration;

use ipnet::IpNet;
use url::Url;

use super::layer::Raw;
use super::types::{CorsOrigins, HttpConfig};
use super::values::{parse_duration, split_list};

pub(super) fn parse(raw: &Raw, errors: &mut Vec<String>) -> HttpConfig {
    let cors_raw = split_list(raw.get("cors_origins").unwrap_or(""));
    let cors_origins = if cors_raw.iter().any(|o| o == "*") {
        CorsOrigins::Any
    } else {
        let mut list = Vec::new();
        for o in &cors_raw {
            match parse_origin(o) {
                Some(origin) => list.push(origin),
                None => errors.push(format!(
                    "TOLLGATE_CORS_ORIGINS: {o:?} is not an origin (scheme://host[:port], no path or trailing slash)"
                )),
            }
        }
        CorsOrigins::List(list)
    };
    let mut trusted_proxies = Vec::new();
    for p in split_list(raw.get("trusted_proxies").unwrap_or("")) {
        match parse_proxy(&p) {
            Some(net) => trusted_proxies.push(net.trunc()),
            None => errors.push(format!("TOLLGATE_TRUSTED_PROXIES: {p:?} is not an IP address or CIDR")),
        }
    }
    let body_limit = raw.get("body_limit").and_then(|v| v.trim().parse::<usize>().ok()).filter(|n| *n > 0);
    if body_limit.is_none() {
        errors.push(raw.bad("body_limit", "must be a positive number of bytes"));
    }
    let request_timeout = raw.get("request_timeout").and_then(parse_duration).filter(|d| !d.is_zero());
    if request_timeout.is_none() {
        errors.push(raw.bad("request_timeout", "must be a duration such as 30s"));
    }
    let shutdown_timeout = raw.get("shutdown_timeout").and_then(parse_duration);
    if shutdown_timeout.is_none() {
        errors.push(raw.bad("shutdown_timeout", "must be a duration such as 20s"));
    }
    let metrics_token = raw.get("metrics_token").filter(|t| !t.is_empty()).map(|t| secrecy::SecretString::from(t.to_owned()));
    if metrics_token.as_ref().is_some_and(|t| secrecy::ExposeSecret::expose_secret(t).chars().count() < 32) {
        errors.push("TOLLGATE_METRICS_TOKEN: must be at least 32 characters".to_owned());
    }
    HttpConfig {
        metrics_token,
        body_limit: body_limit.unwrap_or(1024 * 1024),
        request_timeout: request_timeout.unwrap_or(Duration::from_secs(30)),
        shutdown_timeout: shutdown_timeout.unwrap_or(Duration::from_secs(20)),
        cors_origins,
        trusted_proxies,
        max_connections: raw.count("max_connections", errors),
        api_hourly_limit: raw.count("api_hourly_limit", errors),
        api_daily_limit: raw.count("api_daily_limit", errors),
        webhook_limit: raw.count("webhook_limit", errors),
        header_read_timeout: raw.duration("header_read_timeout", errors),
        idle_timeout: raw.duration("idle_timeout", errors),
    }
}

/// An exact CORS origin: `scheme://host[:port]` with nothing after it.
fn parse_origin(text: &str) -> Option<String> {
    let url = Url::parse(text).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    let origin = url.origin().ascii_serialization();
    // A path, query or trailing slash means it is not an origin; never silently fix it.
    (origin == text.trim_end_matches('/') && !text.ends_with('/')).then_some(origin)
}

fn parse_proxy(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>().ok().or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
