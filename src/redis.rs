//! The Redis readiness probe for `/readyz`: connects as the rate limiter does (`redis://` or
//! `rediss://`, with the URL's credentials and database) and `PING`s, within a time limit.

use std::time::Duration;

pub use crate::ratelimit::RedisError as PingError;

/// `PING`s the server at `url` (`redis[s]://[user:password@]host[:port][/db]`) within `timeout`.
pub async fn ping(url: &str, timeout: Duration) -> Result<(), PingError> {
    match tokio::time::timeout(timeout, crate::ratelimit::ping(url)).await {
        Ok(r) => r,
        Err(_) => Err(PingError::TimedOut),
    }
}
