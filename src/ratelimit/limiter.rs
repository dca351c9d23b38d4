//! The limiter's vocabulary: quotas, decisions, the `RateLimiter` trait, and the GCRA step its
//! implementations share.

use std::time::Duration;

use async_trait::async_trait;

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

/// The part of a client address a per-IP limit is keyed on: the address for IPv4, the /64 for
/// IPv6 (one subscriber usually holds a whole /64 and could rotate through it).
pub fn client_key(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        _ => ip.to_owned(),
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

    /// The refusal, when this is one.
    pub fn refusal(self) -> Option<Refusal> {
        match self {
            Decision::Limited { limit, retry_after } => Some(Refusal { limit, retry_after }),
            Decision::Allowed { .. } => None,
        }
    }
}

/// What refused an event: the refusing quota's limit, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub limit: u32,
    pub retry_after: Duration,
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one event under `key` if the quota allows it.
    async fn hit(&self, key: &str, quota: Quota) -> Decision;
    /// Whether one more event would be allowed, without counting it.
    async fn peek(&self, key: &str, quota: Quota) -> Decision;
    /// Gives back one event counted by `hit` (an attempt reserved up front that turned out fine).
    async fn refund(&self, key: &str, quota: Quota);
    /// Counts one event under each of two keys (GCRA, as `hit`; the keys differ) when both quotas
    /// allow it: both decisions, or the refusal (the first key's when both refuse). The in-memory
    /// limiter decides the pair at once (one lock) and counts nothing for a refused pair. This
    /// default, which the Redis limiter uses, counts the first, then the second, and gives the
    /// first back when the second refuses: meanwhile the first is held, and a failure between the
    /// two can leave it counted (refused too soon, never allowed too much).
    async fn hit_both(&self, first: (&str, Quota), second: (&str, Quota)) -> Result<[Decision; 2], Refusal> {
        let a = self.hit(first.0, first.1).await;
        if let Some(refusal) = a.refusal() {
            return Err(refusal);
        }
        let b = self.hit(second.0, second.1).await;
        if let Some(refusal) = b.refusal() {
            self.refund(first.0, first.1).await;
            return Err(refusal);
        }
        Ok([a, b])
    }
    /// A sliding window, exact: counts one event under `key` if fewer than `quota.limit` were
    /// counted in the last `quota.period` (GCRA would let up to twice that through in a window
    /// that straddles a burst). `retry_after` is when the oldest counted event leaves the window.
    async fn hit_window(&self, key: &str, quota: Quota) -> Decision;
    /// Gives back the newest event counted by `hit_window` under `key`.
    async fn refund_window(&self, key: &str);
    /// Whether the limiter is not making its checks where it is meant to (the Redis one while it
    /// falls back to memory). Readiness reports it.
    fn degraded(&self) -> bool {
        false
    }
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
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(client_key("2001:db8:1:2:aaaa::1"), client_key("2001:db8:1:2:bbbb::9"));
        assert_ne!(client_key("2001:db8:1:2::1"), client_key("2001:db8:1:3::1"));
        assert_eq!(client_key("192.0.2.1"), "192.0.2.1");
    }

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
