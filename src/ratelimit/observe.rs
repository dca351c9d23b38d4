//! Which limits a request passed: `observed` runs a future and returns, with its output, the
//! tightest allowed decision (the fewest remaining) any limiter counted while it ran, so the HTTP
//! layer can answer `RateLimit-*` on allowed answers of routes whose limits live in the services.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use super::limiter::Decision;

/// An allowed decision: limit, remaining, reset.
pub type Allowance = (u32, u32, Duration);

tokio::task_local! {
    static SEEN: Cell<Option<Allowance>>;
}

/// Runs `f`; with its output, the tightest allowance counted inside it, if any.
pub async fn observed<F: Future>(f: F) -> (F::Output, Option<Allowance>) {
    SEEN.scope(Cell::new(None), async move {
        let out = f.await;
        (out, SEEN.with(Cell::get))
    })
    .await
}

/// Notes `d` for the enclosing `observed`, when there is one.
pub(crate) fn record(d: Decision) {
    if let Decision::Allowed { limit, remaining, reset } = d {
        let _ = SEEN.try_with(|seen| {
            if seen.get().is_none_or(|(_, r, _)| remaining < r) {
                seen.set(Some((limit, remaining, reset)));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_tightest_allowance_inside_is_returned() {
        let ((), seen) = observed(async {
            record(Decision::Allowed { limit: 10, remaining: 7, reset: Duration::from_secs(3) });
            record(Decision::Allowed { limit: 3, remaining: 1, reset: Duration::from_secs(20) });
            record(Decision::Limited { limit: 2, retry_after: Duration::from_secs(1) });
            record(Decision::Allowed { limit: 50, remaining: 40, reset: Duration::from_secs(72) });
        })
        .await;
        assert_eq!(seen, Some((3, 1, Duration::from_secs(20))));
        record(Decision::Allowed { limit: 1, remaining: 0, reset: Duration::ZERO });
        assert_eq!(observed(async {}).await.1, None, "nothing counted, nothing seen; outside, nothing kept");
    }
}
