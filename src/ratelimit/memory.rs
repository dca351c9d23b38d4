use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{gcra, Decision, Quota, RateLimiter};

/// GCRA state per key in this process. Expired keys are swept now and then, so memory stays
/// bounded by the keys active within one period.
pub struct MemoryRateLimiter {
    origin: Instant,
    state: Mutex<State>,
}

struct State {
    tats: HashMap<String, Duration>,
    hits_since_sweep: u32,
}

impl MemoryRateLimiter {
    pub fn new() -> MemoryRateLimiter {
        MemoryRateLimiter { origin: Instant::now(), state: Mutex::new(State { tats: HashMap::new(), hits_since_sweep: 0 }) }
    }

    fn decide(&self, key: &str, quota: Quota, record: bool) -> Decision {
        let now = self.origin.elapsed();
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (decision, new_tat) = gcra(state.tats.get(key).copied(), now, quota);
        if record {
            if let Some(t) = new_tat {
                state.tats.insert(key.to_owned(), t);
            }
            state.hits_since_sweep += 1;
            if state.hits_since_sweep >= 4096 {
                state.hits_since_sweep = 0;
                state.tats.retain(|_, tat| *tat > now);
            }
        }
        decision
    }
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        MemoryRateLimiter::new()
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn hit(&self, key: &str, quota: Quota) -> Decision {
        self.decide(key, quota, true)
    }

    async fn peek(&self, key: &str, quota: Quota) -> Decision {
        self.decide(key, quota, false)
    }

    async fn refund(&self, key: &str, quota: Quota) {
        let now = self.origin.elapsed();
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(tat) = state.tats.get_mut(key) {
            *tat = tat.saturating_sub(quota.interval()).max(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_independent_and_peek_counts_nothing() {
        let l = MemoryRateLimiter::new();
        let q = Quota { limit: 2, period: Duration::from_secs(60) };
        assert!(l.peek("a", q).await.is_allowed());
        assert!(l.hit("a", q).await.is_allowed());
        assert!(l.hit("a", q).await.is_allowed());
        assert!(!l.peek("a", q).await.is_allowed());
        assert!(!l.hit("a", q).await.is_allowed());
        assert!(l.hit("b", q).await.is_allowed());
        l.refund("a", q).await;
        assert!(l.hit("a", q).await.is_allowed(), "a refunded event can be used again");
        assert!(!l.hit("a", q).await.is_allowed());
    }
}
