#!/usr/bin/env python3
"""Verified-and-stored Stripe webhook events per second, beside a bare axum hello-world.

In one run on the same machine: the hello-world example answering GET /, then tollgate's
POST /api/v1/webhooks/stripe with every request a new, signed event (verified, stored with its raw
bytes and a history row, then acknowledged) on SQLite and, when TEST_DATABASE_URL (or
--postgres URL) names a server, on PostgreSQL. The load generator (examples/loadgen.rs) is a
closed loop of N concurrent clients. Prints figures; asserts nothing.

    cargo build --release --bin tollgate --examples
    python3 bench/webhook_ingest.py [--seconds 10] [--concurrency 32] [--postgres postgres://…]
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
TOLLGATE = os.environ.get("TOLLGATE_BIN", os.path.join(REL, "tollgate"))
WHSEC = "whsec_bench_0123456789abcdef0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port, path):
    for _ in range(400):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.025)
    sys.exit(f"nothing answered on {port}{path}")


def loadgen(*args, bearer=None):
    """examples/loadgen with `args`; `bearer` is sent as every request's Authorization."""
    env = dict(os.environ)
    if bearer:
        env["LOADGEN_BEARER"] = bearer
    out = subprocess.run(
        [os.path.join(REL, "examples", "loadgen"), *map(str, args)], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_tollgate(database_url, seconds, concurrency, workdir):
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TOLLGATE_BIND": f"127.0.0.1:{port}",
        "DATABASE_URL": database_url,
        "STRIPE_WEBHOOK_SECRET": WHSEC,
        "TOLLGATE_LOG": "warn",
        "TOLLGATE_DATABASE_MAX_CONNECTIONS": str(max(10, concurrency)),
    }
    proc = subprocess.Popen([TOLLGATE, "serve"], env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, "/readyz")
        return loadgen("webhook", f"http://127.0.0.1:{port}/api/v1/webhooks/stripe", concurrency, seconds, WHSEC)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def fresh_postgres(admin_url):
    name = f"tollgate_bench_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", admin_url, "-qc", f"CREATE DATABASE {name}"], check=True)
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def side_by_side(label, run):
    """Parses the common options, then measures the hello-world and `run(database_url, seconds,
    concurrency, workdir)` on SQLite (and PostgreSQL with --postgres) in one run; prints the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--postgres", default=os.environ.get("TEST_DATABASE_URL"))
    args = ap.parse_args()
    for binary in [TOLLGATE, os.path.join(REL, "examples", "hello"), os.path.join(REL, "examples", "loadgen")]:
        if not os.path.exists(binary):
            sys.exit("build first: cargo build --release --bin tollgate --examples")

    results = []
    port = free_port()
    hello = subprocess.Popen([os.path.join(REL, "examples", "hello"), f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL)
    try:
        wait_for(port, "/")
        results.append(("axum hello-world GET /", loadgen("get", f"http://127.0.0.1:{port}/", args.concurrency, args.seconds)))
    finally:
        hello.terminate()
        hello.wait()

    with tempfile.TemporaryDirectory() as d:
        results.append((f"{label}, SQLite", run(f"sqlite://{d}/tollgate.db", args.seconds, args.concurrency, d)))
        if args.postgres:
            url, name = fresh_postgres(args.postgres)
            try:
                results.append((f"{label}, PostgreSQL", run(url, args.seconds, args.concurrency, d)))
            finally:
                subprocess.run(["psql", args.postgres, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)

    base = results[0][1]["rate"]
    width = max(len(name) for name, _ in results) + 2
    print(f"machine: {os.cpu_count()} cpus; {args.concurrency} concurrent clients, {args.seconds} s each")
    print(f"{'target':<{width}}{'req/s':>10}{'p50':>10}{'p99':>10}{'errors':>8}{'vs hello':>10}")
    for name, r in results:
        print(f"{name:<{width}}{r['rate']:>10.0f}{r['p50_ms']:>8.2f}ms{r['p99_ms']:>8.2f}ms{r['errors']:>8}{r['rate'] / base * 100:>9.1f}%")


def main():
    side_by_side("tollgate webhook", run_tollgate)


if __name__ == "__main__":
    main()
