#!/usr/bin/env python3
"""The rate limiter in memory vs on Redis: microseconds per check, and requests/s on a limited route.

1. examples/limiter_bench.rs: checks through the `RateLimiter` trait, back to back, by 1, 16 and 64
   concurrent tasks over 1000 client keys (the Redis one as the server uses it: the atomic GCRA
   script, with the in-memory fallback reported if it was ever used).
2. tollgate serving GET /api/v1/products (SQLite), a route the global per-client budget applies to
   (two checks a request: the hourly and the daily budget), with TOLLGATE_API_HOURLY_LIMIT and
   TOLLGATE_API_DAILY_LIMIT out of reach so nothing is refused: without REDIS_URL (in memory), then
   with it. Every request comes from 127.0.0.1, so every check is on one key: the hot-key case.
   The closed-loop load generator (examples/loadgen.rs) drives it.

Prints figures; asserts nothing.

    cargo build --release --bin tollgate --examples
    python3 bench/limiter.py [--redis redis://127.0.0.1:6379] [--seconds 10] [--concurrency 32]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from webhook_ingest import REL, TOLLGATE, free_port, loadgen, wait_for  # noqa: E402


def limiter_checks(redis_url, memory_checks, redis_checks, levels):
    out = subprocess.run(
        [os.path.join(REL, "examples", "limiter_bench"), redis_url, str(memory_checks), str(redis_checks), *map(str, levels)],
        capture_output=True, text=True, check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def limited_route(redis_url, seconds, concurrency):
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "TOLLGATE_BIND": f"127.0.0.1:{port}",
            "DATABASE_URL": f"sqlite://{d}/tollgate.db",
            "TOLLGATE_LOG": "warn",
            "TOLLGATE_DATABASE_MAX_CONNECTIONS": str(max(10, concurrency)),
            "TOLLGATE_API_HOURLY_LIMIT": "1000000000",
            "TOLLGATE_API_DAILY_LIMIT": "1000000000",
        }
        if redis_url:
            env["REDIS_URL"] = redis_url
            env["TOLLGATE_REDIS_KEY_PREFIX"] = f"tollgate-bench:{uuid.uuid4().hex}:"
        proc = subprocess.Popen([TOLLGATE, "serve"], env=env, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(port, "/readyz")
            result = loadgen("get", f"http://127.0.0.1:{port}/api/v1/products", concurrency, seconds)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
        # The fallback would flatter Redis: a run during which it was used is not a Redis figure.
        result["fell_back"] = "Redis limiter unavailable" in err
        return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", default=os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--memory-checks", type=int, default=2_000_000)
    ap.add_argument("--redis-checks", type=int, default=100_000)
    args = ap.parse_args()
    for binary in [TOLLGATE, os.path.join(REL, "examples", "limiter_bench"), os.path.join(REL, "examples", "loadgen")]:
        if not os.path.exists(binary):
            sys.exit("build first: cargo build --release --bin tollgate --examples")

    print(f"machine: {os.cpu_count()} cpus; Redis at {args.redis}")
    print("\n1. one check through the RateLimiter trait (1000 client keys, nothing refused)")
    print(f"{'limiter':<10}{'tasks':>6}{'checks':>10}{'µs/check':>10}{'checks/s':>12}  note")
    for r in limiter_checks(args.redis, args.memory_checks, args.redis_checks, [1, 16, 64]):
        note = "FELL BACK TO MEMORY" if r["degraded"] else ""
        if r["allowed"] != r["checks"]:
            note += f" {r['checks'] - r['allowed']} refused"
        print(f"{r['limiter']:<10}{r['concurrency']:>6}{r['checks']:>10}{r['us_per_check']:>10.2f}{r['checks_per_s']:>12.0f}  {note}")

    print(f"\n2. GET /api/v1/products (SQLite, global budget: 2 checks a request), {args.concurrency} clients, {args.seconds} s")
    print(f"{'limiter':<10}{'req/s':>10}{'p50':>10}{'p99':>10}{'errors':>8}  note")
    for name, url in [("memory", None), ("redis", args.redis)]:
        r = limited_route(url, args.seconds, args.concurrency)
        note = "FELL BACK TO MEMORY" if r["fell_back"] else ""
        print(f"{name:<10}{r['rate']:>10.0f}{r['p50_ms']:>8.2f}ms{r['p99_ms']:>8.2f}ms{r['errors']:>8}  {note}")


if __name__ == "__main__":
    main()
