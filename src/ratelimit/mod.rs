//! The rate-limiter seam: GCRA (generic cell rate algorithm) and exact sliding windows behind one
//! trait (`limiter.rs`). In memory (`memory.rs`), or on Redis shared between instances
//! (`redis.rs`) with an in-memory fallback while Redis is away (`shared.rs`).

mod limiter;
mod memory;
mod observe;
mod redis;
mod shared;

pub use limiter::{client_key, Decision, Quota, RateLimiter, Refusal};
pub use memory::MemoryRateLimiter;
pub use observe::{observed, Allowance};
pub use redis::{ping, RedisError, RedisRateLimiter, MAX_CONNECTIONS as MAX_REDIS_CONNECTIONS};
pub use shared::{SharedRateLimiter, REDIS_TIMEOUT, RETRY_AFTER};
