//! The rate-limiter seam: GCRA (generic cell rate algorithm) and exact sliding windows behind one
//! trait (`limiter.rs`). In-memory now (`memory.rs`); a Redis implementation (shared between
//! replicas) plugs in behind the same trait.

mod limiter;
mod memory;

pub use limiter::{client_key, Decision, Quota, RateLimiter};
pub use memory::MemoryRateLimiter;
