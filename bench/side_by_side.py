#!/usr/bin/env python3
"""Issue 13's side-by-side benchmark: in ONE run on the same machine, a bare axum hello-world,
`GET /api/v1/me` and `GET /api/v1/me/entitlements` with a bearer token, and webhook ingest (every
request a new, signed `checkout.session.completed`, verified, stored, applied and committed before
its 200), on SQLite and, when TEST_DATABASE_URL (or --postgres URL) names a server, on PostgreSQL.

Every row is measured with the project's closed-loop load generator (examples/loadgen.rs, N
concurrent clients, p50/p99 over every answered request). When `wrk` is installed the GET rows are
measured with it too (2 threads, the same N connections), the tool the issue's own figures used.
Prints a Markdown table (paste it into BENCHMARKS.md with the date and machine it prints) and
asserts nothing: speed is never a test's assertion.

    cargo build --release --bin tollgate --examples
    python3 bench/side_by_side.py [--seconds 10] [--concurrency 32] [--ingest-concurrency 32 64] [--postgres URL]

The server is started with TOLLGATE_LOG=warn and with the per-user API budget set out of reach
(TOLLGATE_API_HOURLY_LIMIT / TOLLGATE_API_DAILY_LIMIT), as a product would size it for its own app.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from webhook_ingest import REL, TOLLGATE, WHSEC, free_port, fresh_postgres, loadgen, wait_for  # noqa: E402

PASSWORD = "a long bench passphrase 4711"


def call(port, method, path, body=None, token=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    c.request(method, path, json.dumps(body) if body is not None else None, headers)
    r = c.getresponse()
    data = r.read()
    return r.status, (json.loads(data) if data else None)


def token_for(port, email):
    status, pair = call(port, "POST", "/api/v1/auth/token", {"email": email, "password": PASSWORD})
    if status != 200:
        sys.exit(f"token for {email}: {status} {pair}")
    return pair["access_token"]


def prepare_user(port, env, workdir):
    """A user with 500 credits (an admin's adjustment) and a bearer token for them."""
    status, user = call(port, "POST", "/api/v1/auth/register", {"email": "bench@example.com", "password": PASSWORD})
    if status != 201:
        sys.exit(f"register: {status} {user}")
    subprocess.run(
        [TOLLGATE, "admin", "create", "--email", "admin@example.com"],
        input=PASSWORD + "\n", env=env, cwd=workdir, capture_output=True, text=True, check=True,
    )
    admin = token_for(port, "admin@example.com")
    status, body = call(
        port, "POST", f"/api/v1/admin/users/{user['id']}/credits/adjustments",
        {"amount": 500, "reason": "benchmark"}, token=admin,
    )
    if status not in (200, 201):
        sys.exit(f"credits adjustment: {status} {body}")
    token = token_for(port, "bench@example.com")
    for path in ("/api/v1/me", "/api/v1/me/entitlements"):
        status, body = call(port, "GET", path, token=token)
        if status != 200:
            sys.exit(f"{path}: {status} {body}")
    return token


def wrk(url, concurrency, seconds, bearer=None):
    """wrk's rate and p50/p99 (ms), in loadgen's shape; None when wrk is not installed."""
    if not shutil.which("wrk"):
        return None
    cmd = ["wrk", "-t2", f"-c{concurrency}", f"-d{seconds}s", "--latency", url]
    if bearer:
        cmd[1:1] = ["-H", f"Authorization: Bearer {bearer}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def ms(label):
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms("50%"), "p99_ms": ms("99%"), "errors": errors,
    }


def engine_rows(label, database_url, args, workdir):
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TOLLGATE_BIND": f"127.0.0.1:{port}",
        "DATABASE_URL": database_url,
        "STRIPE_WEBHOOK_SECRET": WHSEC,
        "TOLLGATE_LOG": "warn",
        "TOLLGATE_DATABASE_MAX_CONNECTIONS": str(max(10, args.concurrency)),
        "TOLLGATE_API_HOURLY_LIMIT": "1000000000",
        "TOLLGATE_API_DAILY_LIMIT": "1000000000",
    }
    rows = []
    proc = subprocess.Popen([TOLLGATE, "serve"], env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, "/readyz")
        token = prepare_user(port, env, workdir)
        base = f"http://127.0.0.1:{port}"
        # /healthz: tollgate's whole middleware stack (request id, security headers, CORS, timeout,
        # body limits, metrics, access log) with no authentication and no database: the ceiling
        # the authenticated reads are measured against, beside the hello-world's.
        for path, bearer in (("/healthz", None), ("/api/v1/me", token), ("/api/v1/me/entitlements", token)):
            rows.append((f"GET {path}, {label}", "loadgen", loadgen("get", base + path, args.concurrency, args.seconds, bearer=bearer)))
            w = wrk(base + path, args.concurrency, args.seconds, bearer=bearer)
            if w:
                rows.append((f"GET {path}, {label}", "wrk", w))
        for n in args.ingest_concurrency:
            r = loadgen("webhook", base + "/api/v1/webhooks/stripe", n, args.seconds, WHSEC)
            rows.append((f"webhook ingest, {label}, {n} clients", "loadgen", r))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return rows


def loadavg():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--ingest-concurrency", type=int, nargs="+", default=[32])
    ap.add_argument("--postgres", default=os.environ.get("TEST_DATABASE_URL"))
    args = ap.parse_args()
    for binary in [TOLLGATE, os.path.join(REL, "examples", "hello"), os.path.join(REL, "examples", "loadgen")]:
        if not os.path.exists(binary):
            sys.exit("build first: cargo build --release --bin tollgate --examples")

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = loadavg()
    rows = []
    port = free_port()
    hello = subprocess.Popen([os.path.join(REL, "examples", "hello"), f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL)
    try:
        wait_for(port, "/")
        url = f"http://127.0.0.1:{port}/"
        rows.append(("axum hello-world GET /", "loadgen", loadgen("get", url, args.concurrency, args.seconds)))
        w = wrk(url, args.concurrency, args.seconds)
        if w:
            rows.append(("axum hello-world GET /", "wrk", w))
    finally:
        hello.terminate()
        hello.wait()

    with tempfile.TemporaryDirectory() as d:
        rows += engine_rows("SQLite", f"sqlite://{d}/tollgate.db", args, d)
        if args.postgres:
            url, name = fresh_postgres(args.postgres)
            try:
                rows += engine_rows("PostgreSQL", url, args, d)
            finally:
                subprocess.run(["psql", args.postgres, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)

    hello_rate = {tool: r["rate"] for name, tool, r in rows if name.startswith("axum hello-world")}
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"{started:%Y-%m-%d %H:%M} UTC, tollgate {rev}, {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}")
    print(f"{args.concurrency} concurrent clients for reads, {args.seconds} s per row; load average before {load_before}, after {loadavg()}")
    print()
    print("| target | tool | req/s | p50 | p99 | errors | vs hello-world (same tool) |")
    print("|---|---|---|---|---|---|---|")
    for name, tool, r in rows:
        ratio = r["rate"] / hello_rate[tool] * 100 if tool in hello_rate else float("nan")
        print(f"| {name} | {tool} | {r['rate']:,.0f} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['errors']} | {ratio:.1f} % |")


if __name__ == "__main__":
    main()
