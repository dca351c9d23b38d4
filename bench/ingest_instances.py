#!/usr/bin/env python3
"""Webhook ingest on PostgreSQL with 1 instance vs N instances on one database.

For each instance count (1, then --instances N): a fresh PostgreSQL database, that many
`tollgate serve` processes on it (the same webhook secret), and the closed-loop load generator
(examples/loadgen.rs) sending every request a new, signed Stripe event, its workers spread evenly
over the instances (worker w sends to instance w mod N). Each instance's pool gets its share of
--concurrency connections (at least 10), so the database sees about as many connections either
way. Every event is verified, stored with its raw bytes and a history row, then acknowledged.
Prints figures and the number of events each database holds; asserts nothing.

On a machine with fewer cores than instances, this measures contention (the instances, the load
generator and PostgreSQL share the cores), not what a second machine would add.

    cargo build --release --bin tollgate --examples
    python3 bench/ingest_instances.py [--instances 3] [--seconds 10] [--concurrency 32] [--postgres postgres://…]
"""
import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from webhook_ingest import REL, TOLLGATE, WHSEC, fresh_postgres, free_port, loadgen, wait_for  # noqa: E402


def run_instances(database_url, n, seconds, concurrency, workdir):
    procs, ports = [], []
    try:
        for _ in range(n):
            port = free_port()
            env = {
                "PATH": os.environ.get("PATH", ""),
                "TOLLGATE_BIND": f"127.0.0.1:{port}",
                "DATABASE_URL": database_url,
                "STRIPE_WEBHOOK_SECRET": WHSEC,
                "TOLLGATE_LOG": "warn",
                "TOLLGATE_DATABASE_MAX_CONNECTIONS": str(max(10, concurrency // n)),
            }
            procs.append(subprocess.Popen([TOLLGATE, "serve"], env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ports.append(port)
            # One at a time: the first migrates the new database.
            wait_for(port, "/readyz")
        urls = ",".join(f"http://127.0.0.1:{p}/api/v1/webhooks/stripe" for p in ports)
        return loadgen("webhook", urls, concurrency, seconds, WHSEC)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def stored_events(database_url):
    out = subprocess.run(["psql", database_url, "-tAc", "SELECT count(*) FROM stripe_events"], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--postgres", default=os.environ.get("TEST_DATABASE_URL"))
    args = ap.parse_args()
    if not args.postgres:
        sys.exit("needs PostgreSQL: --postgres URL or TEST_DATABASE_URL")
    for binary in [TOLLGATE, os.path.join(REL, "examples", "loadgen")]:
        if not os.path.exists(binary):
            sys.exit("build first: cargo build --release --bin tollgate --examples")

    results = []
    with tempfile.TemporaryDirectory() as d:
        for n in sorted({1, args.instances}):
            url, name = fresh_postgres(args.postgres)
            try:
                r = run_instances(url, n, args.seconds, args.concurrency, d)
                r["stored"] = stored_events(url)
                results.append((n, r))
            finally:
                subprocess.run(["psql", args.postgres, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)

    base = results[0][1]["rate"]
    print(f"machine: {os.cpu_count()} cpus; {args.concurrency} concurrent clients, {args.seconds} s each, one PostgreSQL database")
    print(f"{'instances':<11}{'events/s':>10}{'p50':>10}{'p99':>10}{'errors':>8}{'acked':>9}{'stored':>9}{'vs 1':>8}")
    for n, r in results:
        print(
            f"{n:<11}{r['rate']:>10.0f}{r['p50_ms']:>8.2f}ms{r['p99_ms']:>8.2f}ms{r['errors']:>8}"
            f"{r['ok']:>9}{r['stored']:>9}{r['rate'] / base * 100:>7.1f}%"
        )


if __name__ == "__main__":
    main()
