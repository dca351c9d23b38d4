//! The in-memory rate limiter: GCRA state and sliding-window logs per key, in this process.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::limiter::{gcra, Decision, Quota, RateLimiter, Refusal};
use super::observe::record;

/// GCRA state per key in this process. Expired keys are swept now and then, so memory stays
/// bounded by the keys active within one period.
pub struct MemoryRateLimiter {
    origin: Instant,
    state: Mutex<State>,
}

struct State {
    tats: HashMap<String, Duration>,
    /// Per key, the times of the events counted in its window, oldest first, and the window.
    windows: HashMap<String, (VecDeque<Duration>, Duration)>,
    hits_since_sweep: u32,
}

impl MemoryRateLimiter {
    pub fn new() -> MemoryRateLimiter {
        MemoryRateLimiter {
            origin: Instant::now(),
            state: Mutex::new(State { tats: HashMap::new(), windows: HashMap::new(), hits_since_sweep: 0 }),
        }
    }

    fn decide(&self, key: &str, quota: Quota, record: bool) -> Decision {
        let now = self.origin.elapsed();
        let mut state = self.lock();
        let (decision, new_tat) = gcra(state.tats.get(key).copied(), now, quota);
        if record {
            match new_tat {
                Some(t) => state.count(key, t, now),
                None => state.sweep(now),
            }
        }
        decision
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// One event counted under `key`: its new arrival time is kept (a key's first hit is the only
    /// time it is copied), and expired keys are swept now and then.
    fn count(&mut self, key: &str, tat: Duration, now: Duration) {
        match self.tats.get_mut(key) {
            Some(kept) => *kept = tat,
            None => {
                self.tats.insert(key.to_owned(), tat);
            }
        }
        self.sweep(now);
    }

    fn sweep(&mut self, now: Duration) {
        self.hits_since_sweep += 1;
        if self.hits_since_sweep >= 4096 {
            self.hits_since_sweep = 0;
            self.tats.retain(|_, tat| *tat > now);
            self.windows.retain(|_, (times, period)| times.back().is_some_and(|t| *t + *period > now));
        }
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
        let d = self.decide(key, quota, true);
        record(d);
        d
    }

    async fn peek(&self, key: &str, quota: Quota) -> Decision {
        self.decide(key, quota, false)
    }

    async fn refund(&self, key: &str, quota: Quota) {
        let now = self.origin.elapsed();
        let mut state = self.lock();
        if let Some(tat) = state.tats.get_mut(key) {
            *tat = tat.saturating_sub(quota.interval()).max(now);
        }
    }

    async fn hit_both(&self, first: (&str, Quota), second: (&str, Quota)) -> Result<[Decision; 2], Refusal> {
        debug_assert_ne!(first.0, second.0, "hit_both counts two keys");
        let now = self.origin.elapsed();
        let mut state = self.lock();
        let (a, a_tat) = gcra(state.tats.get(first.0).copied(), now, first.1);
        if let Some(refusal) = a.refusal() {
            return Err(refusal);
        }
        let (b, b_tat) = gcra(state.tats.get(second.0).copied(), now, second.1);
        if let Some(refusal) = b.refusal() {
            return Err(refusal);
        }
        // Both allowed: only now is either counted (nothing to give back on a refusal), each as
        // `hit` counts it.
        for (key, tat) in [(first.0, a_tat), (second.0, b_tat)] {
            if let Some(t) = tat {
                state.count(key, t, now);
            }
        }
        drop(state);
        record(a);
        record(b);
        Ok([a, b])
    }

    async fn hit_window(&self, key: &str, quota: Quota) -> Decision {
        let now = self.origin.elapsed();
        let mut state = self.lock();
        state.sweep(now);
        let (times, period) = state.windows.entry(key.to_owned()).or_insert_with(|| (VecDeque::new(), quota.period));
        *period = quota.period;
        while times.front().is_some_and(|t| *t + quota.period <= now) {
            times.pop_front();
        }
        let limit = usize::try_from(quota.limit).unwrap_or(usize::MAX);
        if times.len() >= limit {
            let oldest = times.front().copied().unwrap_or(now);
            return Decision::Limited { limit: quota.limit, retry_after: (oldest + quota.period).saturating_sub(now) };
        }
        times.push_back(now);
        let remaining = u32::try_from(limit - times.len()).unwrap_or(0);
        let reset = (times.front().copied().unwrap_or(now) + quota.period).saturating_sub(now);
        let d = Decision::Allowed { limit: quota.limit, remaining, reset };
        record(d);
        d
    }

    async fn refund_window(&self, key: &str) {
        if let Some((times, _)) = self.lock().windows.get_mut(key) {
            times.pop_back();
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

    /// Delegates all but `hit_both` to the in-memory limiter, so the trait's own `hit_both` (the
    /// one the Redis limiter uses) is what runs.
    struct TwoCalls(MemoryRateLimiter);

    #[async_trait]
    impl RateLimiter for TwoCalls {
        async fn hit(&self, key: &str, quota: Quota) -> Decision {
            self.0.hit(key, quota).await
        }
        async fn peek(&self, key: &str, quota: Quota) -> Decision {
            self.0.peek(key, quota).await
        }
        async fn refund(&self, key: &str, quota: Quota) {
            self.0.refund(key, quota).await
        }
        async fn hit_window(&self, key: &str, quota: Quota) -> Decision {
            self.0.hit_window(key, quota).await
        }
        async fn refund_window(&self, key: &str) {
            self.0.refund_window(key).await
        }
    }

    /// What the global budget relies on: two quotas counted together or not at all.
    async fn both_or_neither(l: &dyn RateLimiter) {
        let small = Quota { limit: 2, period: Duration::from_secs(60) };
        let large = Quota { limit: 3, period: Duration::from_secs(60) };
        let [a, b] = l.hit_both(("s", small), ("l", large)).await.unwrap();
        assert!(matches!(a, Decision::Allowed { limit: 2, remaining: 1, .. }), "{a:?}");
        assert!(matches!(b, Decision::Allowed { limit: 3, remaining: 2, .. }), "{b:?}");
        assert!(l.hit_both(("s", small), ("l", large)).await.is_ok());
        let refused = l.hit_both(("s", small), ("l", large)).await.unwrap_err();
        assert_eq!(refused.limit, 2, "the first quota refused");
        assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(30));
        assert!(l.peek("l", large).await.is_allowed(), "the second key was not counted for a refused pair");
        // The second quota refuses: the first is not counted either.
        assert!(l.hit("x", small).await.is_allowed());
        assert!(l.hit("x", small).await.is_allowed());
        let refused = l.hit_both(("fresh", large), ("x", small)).await.unwrap_err();
        assert_eq!(refused.limit, 2, "the second quota refused");
        for n in 0..3 {
            assert!(l.hit("fresh", large).await.is_allowed(), "hit {n}: the first key kept its whole burst");
        }
        assert!(!l.hit("fresh", large).await.is_allowed());
    }

    #[tokio::test]
    async fn two_quotas_are_counted_together_or_not_at_all() {
        both_or_neither(&MemoryRateLimiter::new()).await;
        both_or_neither(&TwoCalls(MemoryRateLimiter::new())).await;
    }

    #[tokio::test]
    async fn a_sliding_window_never_holds_more_than_its_limit() {
        let l = MemoryRateLimiter::new();
        let q = Quota { limit: 3, period: Duration::from_millis(300) };
        for _ in 0..3 {
            assert!(l.hit_window("k", q).await.is_allowed());
        }
        let Decision::Limited { retry_after, .. } = l.hit_window("k", q).await else { panic!("the fourth is refused") };
        assert!(retry_after <= Duration::from_millis(300));
        l.refund_window("k").await;
        assert!(l.hit_window("k", q).await.is_allowed(), "a refunded event leaves the window");
        assert!(!l.hit_window("k", q).await.is_allowed());
        tokio::time::sleep(Duration::from_millis(320)).await;
        for _ in 0..3 {
            assert!(l.hit_window("k", q).await.is_allowed(), "the window moved on");
        }
        assert!(!l.hit_window("k", q).await.is_allowed());
        assert!(l.hit_window("other", q).await.is_allowed());
    }
}
