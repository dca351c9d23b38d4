//! The Redis readiness probe for `/readyz`: connects as the rate limiter does (`redis://` or
//! `rediss://`, with the URL's credentials and database) and `PING`s, within a time limit.

use std::time::Duration;

pub use crate::ratelimit::RedisError as PingError;

/// `PING`s the server at `url` (`redis[s]://[user:password@]host[:port][/db]`) within `timeout`.
pub async fn ping(url: &str, timeout: Duration) -> Result<(), PingError> {
    ping_with_ca(url, None, timeout).await
}

/// As [`ping`], with `rediss://` trusting only the CA certificate(s) in the PEM file `ca`.
pub async fn ping_with_ca(url: &str, ca: Option<&std::path::Path>, timeout: Duration) -> Result<(), PingError> {
    match tokio::time::timeout(timeout, crate::ratelimit::ping(url, ca)).await {
        Ok(r) => r,
        Err(_) => Err(PingError::TimedOut),
    }
}
