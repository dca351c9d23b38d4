#!/usr/bin/env python3
"""GET /api/v1/users/{id}/entitlements with an API key, requests/s and p50/p99, beside a bare axum
hello-world.

In one run on the same machine: the hello-world example answering GET /, then tollgate answering
a merchant's server that asks what a user owns (the key found by its prefix and checked by hash,
the per-key limit, the user looked up, the grants read: what every such call costs) on SQLite and,
when TEST_DATABASE_URL (or --postgres URL) names a server, on PostgreSQL. The key is made with
`tollgate api-key create` and TOLLGATE_API_KEY_LIMIT is set out of reach. The load generator
(examples/loadgen.rs) is a closed loop of N concurrent clients. Prints figures; asserts nothing.

    cargo build --release --bin tollgate --examples
    python3 bench/apikey_read.py [--seconds 10] [--concurrency 32] [--postgres postgres://…]
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from webhook_ingest import REL, TOLLGATE, free_port, fresh_postgres, wait_for  # noqa: E402


def loadgen(url, concurrency, seconds, bearer=None):
    env = dict(os.environ)
    if bearer:
        env["LOADGEN_BEARER"] = bearer
    out = subprocess.run(
        [os.path.join(REL, "examples", "loadgen"), "get", url, str(concurrency), str(seconds)],
        capture_output=True, text=True, check=True, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_tollgate(database_url, seconds, concurrency, workdir):
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TOLLGATE_BIND": f"127.0.0.1:{port}",
        "DATABASE_URL": database_url,
        "TOLLGATE_LOG": "warn",
        "TOLLGATE_DATABASE_MAX_CONNECTIONS": str(max(10, concurrency)),
        "TOLLGATE_API_KEY_LIMIT": "1000000000",
    }
    proc = subprocess.Popen([TOLLGATE, "serve"], env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, "/readyz")
        key = subprocess.run(
            [TOLLGATE, "api-key", "create", "--name", "bench", "--scope", "entitlements:read"],
            env=env, cwd=workdir, capture_output=True, text=True, check=True,
        ).stdout.strip()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = json.dumps({"email": "bench@example.com", "password": "a long bench passphrase 4711"})
        c.request("POST", "/api/v1/auth/register", body, {"content-type": "application/json"})
        r = c.getresponse()
        user = json.loads(r.read())
        if r.status != 201:
            sys.exit(f"register: {r.status} {user}")
        url = f"http://127.0.0.1:{port}/api/v1/users/{user['id']}/entitlements"
        c.request("GET", f"/api/v1/users/{user['id']}/entitlements", headers={"authorization": f"Bearer {key}"})
        r = c.getresponse()
        if r.status != 200:
            sys.exit(f"entitlements by key: {r.status} {r.read()!r}")
        r.read()
        return loadgen(url, concurrency, seconds, key)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
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
        results.append(("axum hello-world GET /", loadgen(f"http://127.0.0.1:{port}/", args.concurrency, args.seconds)))
    finally:
        hello.terminate()
        hello.wait()

    with tempfile.TemporaryDirectory() as d:
        results.append(("entitlements by key, SQLite", run_tollgate(f"sqlite://{d}/tollgate.db", args.seconds, args.concurrency, d)))
        if args.postgres:
            url, name = fresh_postgres(args.postgres)
            try:
                results.append(("entitlements by key, PostgreSQL", run_tollgate(url, args.seconds, args.concurrency, d)))
            finally:
                subprocess.run(["psql", args.postgres, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)

    base = results[0][1]["rate"]
    print(f"machine: {os.cpu_count()} cpus; {args.concurrency} concurrent clients, {args.seconds} s each")
    print(f"{'target':<34}{'req/s':>10}{'p50':>10}{'p99':>10}{'errors':>8}{'vs hello':>10}")
    for name, r in results:
        print(f"{name:<34}{r['rate']:>10.0f}{r['p50_ms']:>8.2f}ms{r['p99_ms']:>8.2f}ms{r['errors']:>8}{r['rate'] / base * 100:>9.1f}%")


if __name__ == "__main__":
    main()
