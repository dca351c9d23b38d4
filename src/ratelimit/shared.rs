//! The limiter every instance shares when Redis is configured, fail-safe: when Redis errors or
//! does not answer within `REDIS_TIMEOUT`, the check is made by this process's in-memory limiter
//! instead (the limits still hold per instance; never fail-open), a warning is logged once per
//! outage, and Redis is tried again by itself `RETRY_AFTER` later, with no restart. At most
//! `redis::MAX_CONNECTIONS` connections are held; a check that finds them all busy for
//! `redis::PERMIT_WAIT` is made in memory, that once, without calling it an outage.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::limiter::{Decision, Quota, RateLimiter};
use super::memory::MemoryRateLimiter;
use super::observe::record;
use super::redis::{RedisError, RedisRateLimiter};

/// How long one check may wait for Redis before the in-memory limiter decides.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(200);
/// How long after a failure Redis is left alone before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

pub struct SharedRateLimiter {
    redis: RedisRateLimiter,
    memory: MemoryRateLimiter,
    degraded: AtomicBool,
    retry_at: Mutex<Option<Instant>>,
    /// Outages begun and ended (each logged once), for tests and the operator's metrics.
    outages: AtomicU64,
    recoveries: AtomicU64,
    /// Checks made in memory because every Redis connection was busy (not an outage).
    busy: AtomicU64,
}

impl SharedRateLimiter {
    pub fn new(redis: RedisRateLimiter) -> SharedRateLimiter {
        SharedRateLimiter {
            redis,
            memory: MemoryRateLimiter::new(),
            degraded: AtomicBool::new(false),
            retry_at: Mutex::new(None),
            outages: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    /// How many checks were made in memory because every Redis connection was in use, and how
    /// many connections to Redis were opened, since start.
    pub fn busy_checks(&self) -> (u64, u64) {
        (self.busy.load(Ordering::Relaxed), self.redis.connections_opened())
    }

    /// How many outages began and how many ended since start (one warning was logged for each).
    pub fn outages(&self) -> (u64, u64) {
        (self.outages.load(Ordering::Relaxed), self.recoveries.load(Ordering::Relaxed))
    }

    /// Whether the last attempt to reach Redis failed (checks are being made in memory).
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn should_try(&self) -> bool {
        let mut retry_at = self.retry_at.lock().unwrap_or_else(|p| p.into_inner());
        match *retry_at {
            Some(at) if Instant::now() < at => false,
            Some(_) => {
                // One probe at a time: the others stay in memory until it has answered.
                *retry_at = Some(Instant::now() + REDIS_TIMEOUT);
                true
            }
            None => true,
        }
    }

    /// Runs `op` on Redis within the timeout; `None` when it failed (or Redis is being left alone).
    async fn redis<T>(&self, op: impl std::future::Future<Output = Result<T, RedisError>>) -> Option<T> {
        if !self.should_try() {
            return None;
        }
        let outcome = match tokio::time::timeout(REDIS_TIMEOUT, op).await {
            Ok(Ok(v)) => Ok(v),
            // This process had no free connection (a flood here, not an outage there): this one
            // check is made in memory, and Redis stays in use for the next.
            Ok(Err(RedisError::Busy)) => {
                self.busy.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        };
        match outcome {
            Ok(v) => {
                *self.retry_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if self.degraded.swap(false, Ordering::Relaxed) {
                    self.recoveries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("Redis limiter resumed: rate limits are shared between instances again");
                }
                Some(v)
            }
            Err(why) => {
                self.redis.drop_idle();
                *self.retry_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + RETRY_AFTER);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    self.outages.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %why, "Redis limiter unavailable: rate limits are applied per instance, in memory, until it answers again");
                }
                None
            }
        }
    }
}

#[async_trait]
impl RateLimiter for SharedRateLimiter {
    fn degraded(&self) -> bool {
        self.is_degraded()
    }

    async fn hit(&self, key: &str, quota: Quota) -> Decision {
        match self.redis(self.redis.hit(key, quota)).await {
            Some(d) => {
                record(d);
                d
            }
            None => self.memory.hit(key, quota).await,
        }
    }

    async fn peek(&self, key: &str, quota: Quota) -> Decision {
        match self.redis(self.redis.peek(key, quota)).await {
            Some(d) => d,
            None => self.memory.peek(key, quota).await,
        }
    }

    async fn refund(&self, key: &str, quota: Quota) {
        // Given back where it may have been counted: a refund never takes more than one event.
        if self.redis(self.redis.refund(key, quota)).await.is_none() {
            self.memory.refund(key, quota).await;
        }
    }

    async fn hit_window(&self, key: &str, quota: Quota) -> Decision {
        match self.redis(self.redis.hit_window(key, quota)).await {
            Some(d) => {
                record(d);
                d
            }
            None => self.memory.hit_window(key, quota).await,
        }
    }

    async fn refund_window(&self, key: &str) {
        if self.redis(self.redis.refund_window(key)).await.is_none() {
            self.memory.refund_window(key).await;
        }
    }
}
