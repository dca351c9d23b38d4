//! The stores tollgate connects to: the database and, optionally, Redis.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::layer::Raw;
use super::types::DatabaseConfig;
use super::values::{parse_bool, parse_duration};

pub(super) fn parse(raw: &Raw, errors: &mut Vec<String>) -> DatabaseConfig {
    let url = raw.get("database_url").map(str::trim).unwrap_or_default().to_owned();
    if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        errors.push(raw.bad("database_url", "must start with sqlite:, postgres:// or postgresql://"));
    }
    let max_connections = raw.get("database_max_connections").and_then(|v| v.trim().parse::<u32>().ok()).filter(|n| *n > 0);
    if max_connections.is_none() {
        errors.push(raw.bad("database_max_connections", "must be a positive integer"));
    }
    let ingest_writers =
        raw.get("database_ingest_writers").and_then(|v| v.trim().parse::<u32>().ok()).filter(|n| (1..=64).contains(n));
    if ingest_writers.is_none() {
        errors.push(raw.bad("database_ingest_writers", "must be an integer from 1 to 64"));
    }
    let acquire_timeout = raw.get("database_acquire_timeout").and_then(parse_duration).filter(|d| !d.is_zero());
    if acquire_timeout.is_none() {
        errors.push(raw.bad("database_acquire_timeout", "must be a duration such as 5s or 500ms"));
    }
    let migrate_on_start = parse_bool(raw.get("migrate_on_start"));
    if migrate_on_start.is_none() {
        errors.push(raw.bad("migrate_on_start", "must be true or false"));
    }
    DatabaseConfig {
        url: SecretString::from(url),
        max_connections: max_connections.unwrap_or(10),
        // Two: on two vCPUs, fewer writers make bigger batches (BENCHMARKS.md, issue 13).
        ingest_writers: ingest_writers.unwrap_or(2),
        acquire_timeout: acquire_timeout.unwrap_or(Duration::from_secs(5)),
        migrate_on_start: migrate_on_start.unwrap_or(true),
    }
}

pub(super) fn redis_url(raw: &Raw, errors: &mut Vec<String>) -> Option<SecretString> {
    let redis_url = raw.get("redis_url").map(|v| v.trim().to_owned());
    if let Some(r) = &redis_url {
        if !(r.starts_with("redis://") || r.starts_with("rediss://")) || Url::parse(r).is_err() {
            errors.push(raw.bad("redis_url", "must be a redis:// or rediss:// (TLS) URL"));
        }
    }
    redis_url.map(SecretString::from)
}

/// The CA file for `rediss://` (PEM, at least one certificate); only with a `rediss://` URL.
pub(super) fn redis_ca_file(raw: &Raw, redis_url: Option<&SecretString>, errors: &mut Vec<String>) -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from(raw.get("redis_ca_file")?.trim());
    if !redis_url.is_some_and(|u| u.expose_secret().starts_with("rediss://")) {
        errors.push(raw.bad("redis_ca_file", "is only used with a rediss:// REDIS_URL"));
    }
    match crate::pem::load_ca(&path) {
        Ok(_) => {}
        Err(why) => errors.push(raw.bad("redis_ca_file", &why)),
    }
    Some(path)
}

/// The prefix of every key the Redis rate limiter writes (`<prefix>rl:…`), so one Redis can
/// serve several deployments (or tests) apart.
pub(super) fn redis_key_prefix(raw: &Raw, errors: &mut Vec<String>) -> String {
    let prefix = raw.get("redis_key_prefix").unwrap_or("tollgate:").trim().to_owned();
    if prefix.is_empty() || prefix.len() > 64 || !prefix.chars().all(|c| c.is_ascii_graphic()) {
        errors.push(raw.bad("redis_key_prefix", "must be 1 to 64 printable characters without spaces"));
    }
    prefix
}
