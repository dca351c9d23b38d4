//! Microseconds per rate-limit check through the `RateLimiter` trait: the in-memory limiter, and the
//! Redis one as the server uses it (`SharedRateLimiter`: the atomic GCRA script on Redis, with its
//! in-memory fallback, which must stay unused). `concurrency` tasks each make their share of
//! `checks` checks back to back, spread over 1000 client keys, with a quota nothing reaches. Prints
//! one JSON line per (limiter, concurrency); asserts nothing. `bench/limiter.py` drives it.
//!
//! cargo run --release --example limiter_bench -- REDIS_URL MEMORY_CHECKS REDIS_CHECKS CONCURRENCY...

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::ratelimit::{MemoryRateLimiter, Quota, RateLimiter, RedisRateLimiter, SharedRateLimiter};

/// `checks` checks by `concurrency` tasks; (seconds, checks allowed).
async fn run(limiter: Arc<dyn RateLimiter>, checks: usize, concurrency: usize) -> (f64, usize) {
    let quota = Quota { limit: 1_000_000_000, period: Duration::from_secs(3600) };
    let per_task = checks / concurrency;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let mut allowed = 0;
                for i in 0..per_task {
                    let key = format!("bench:client:{}", (t * per_task + i) % 1000);
                    if limiter.hit(&key, quota).await.is_allowed() {
                        allowed += 1;
                    }
                }
                allowed
            })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        allowed += t.await.unwrap();
    }
    (started.elapsed().as_secs_f64(), allowed)
}

fn report(limiter: &str, concurrency: usize, checks: usize, (seconds, allowed): (f64, usize), degraded: bool) {
    let done = checks / concurrency * concurrency;
    println!(
        "{{\"limiter\":\"{limiter}\",\"concurrency\":{concurrency},\"checks\":{done},\"allowed\":{allowed},\"seconds\":{seconds:.3},\
         \"us_per_check\":{:.3},\"checks_per_s\":{:.0},\"degraded\":{degraded}}}",
        // Wall time per check and task: what one request waits for its check.
        seconds * 1e6 * concurrency as f64 / done as f64,
        done as f64 / seconds,
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: limiter_bench REDIS_URL MEMORY_CHECKS REDIS_CHECKS CONCURRENCY...";
    let url = args.get(1).expect(usage).clone();
    let memory_checks: usize = args.get(2).and_then(|s| s.parse().ok()).expect(usage);
    let redis_checks: usize = args.get(3).and_then(|s| s.parse().ok()).expect(usage);
    let levels: Vec<usize> = args[4..].iter().map(|s| s.parse().expect(usage)).collect();
    let prefix = format!("tollgate-bench:{}:", uuid::Uuid::new_v4().simple());
    for &c in &levels {
        let memory: Arc<dyn RateLimiter> = Arc::new(MemoryRateLimiter::new());
        run(memory.clone(), memory_checks / 10, c).await; // warm-up
        report("memory", c, memory_checks, run(memory, memory_checks, c).await, false);

        let shared = Arc::new(SharedRateLimiter::new(RedisRateLimiter::new(&url, &prefix).expect("REDIS_URL")));
        let redis: Arc<dyn RateLimiter> = shared.clone();
        run(redis.clone(), redis_checks / 10, c).await; // warm-up: connections and the script loaded
        let result = run(redis, redis_checks, c).await;
        // A check the fallback made in memory would flatter Redis: say so.
        report("redis", c, redis_checks, result, shared.is_degraded() || shared.outages().0 > 0);
    }
}
