//! The rate-limiter seam: GCRA (generic cell rate algorithm) behind one trait. In-memory now; a
//! Redis implementation (shared between replicas) plugs in behind the same trait.

mod memory;

use std::time::Duration;

use async_trait::async_trait;

pub use memory::MemoryRateLimiter;

/// `limit` events per `period`, allowed in a burst: GCRA lets `limit` through at once, then one
/// more every `period / limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub period: Duration,
}

impl Quota {
    pub(crate) fn interval(&self) -> Duration {
        self.period / self.limit.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed { limit: u32, remaining: u32, reset: Duration },
    Limited { limit: u32, retry_after: Duration },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one event under `key` if the quota allows it.
    async fn hit(&self, key: &str, quota: Quota) -> Decision;
    /// Whether one more event would be allowed, without counting it.
    async fn peek(&self, key: &str, quota: Quota) -> Decision;
    /// Gives back one event counted by `hit` (an attempt reserved up front that turned out fine).
    async fn refund(&self, key: &str, quota: Quota);
}

/// The GCRA step: given the stored theoretical arrival time (as an offset from a fixed origin),
/// `now` on the same scale, decide and return the new arrival time to store when allowed.
pub(crate) fn gcra(tat: Option<Duration>, now: Duration, quota: Quota) -> (Decision, Option<Duration>) {
    let interval = quota.interval();
    let tat = tat.map_or(now, |t| t.max(now));
    let new_tat = tat + interval;
    let horizon = new_tat - now;
    if horizon > quota.period {
        let retry_after = horizon - quota.period;
        return (Decision::Limited { limit: quota.limit, retry_after }, None);
    }
    let remaining = ((quota.period - horizon).as_nanos() / interval.as_nanos().max(1)) as u32;
    (Decision::Allowed { limit: quota.limit, remaining, reset: horizon }, Some(new_tat))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_limit_then_one_per_interval() {
        let q = Quota { limit: 3, period: Duration::from_secs(30) };
        let mut tat = None;
        let now = Duration::from_secs(100);
        for expected_remaining in [2, 1, 0] {
            let (d, t) = gcra(tat, now, q);
            assert_eq!(d, Decision::Allowed { limit: 3, remaining: expected_remaining, reset: t.unwrap() - now });
            tat = t;
        }
        let (d, t) = gcra(tat, now, q);
        assert_eq!(d, Decision::Limited { limit: 3, retry_after: Duration::from_secs(10) });
        assert!(t.is_none());
        let (d, _) = gcra(tat, now + Duration::from_secs(10), q);
        assert!(d.is_allowed(), "one more after an interval");
    }
}
