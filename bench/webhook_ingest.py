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


# With --orders: one credits product, a user per client and, for each event the load generator
# may send, a pending order of that product whose checkout session the event names (examples/
# loadgen.rs: worker w's n-th event is about session cs_test_bench{w:03}x{n:010}). Every event then
# takes the whole apply path: the order paid, its grant created, the credits added, the notices
# written. Timestamps as sqlx writes them on each engine.
SEED = """
INSERT INTO products (id, name, description, active, version, amount, currency, stripe_price_id, grant_spec, created_at, updated_at)
VALUES ('prod_bench', 'Bench credits', NULL, {true}, 1, 1999, 'usd', NULL, '{{"kind":"credits","amount":50}}', {now}, {now});
INSERT INTO product_versions (product_id, version, amount, currency, stripe_price_id, grant_spec, created_at)
VALUES ('prod_bench', 1, 1999, 'usd', NULL, '{{"kind":"credits","amount":50}}', {now});
INSERT INTO users (id, email, email_key, password_hash, created_at, updated_at, password_changed_at)
SELECT 'usr_bench' || w, 'bench' || w || '@example.com', 'bench' || w || '@example.com', 'x', {now}, {now}, {now}
  FROM ({workers}) AS ws;
INSERT INTO orders (id, user_id, product_id, product_version, quantity, amount, currency, grant_spec, flow, status, checkout_session_id, created_at, updated_at)
SELECT 'ord_bench_' || w || '_' || n, 'usr_bench' || w, 'prod_bench', 1, 1, 1999, 'usd', '{{"kind":"credits","amount":50}}', 'checkout', 'pending',
       'cs_test_bench' || {pad3} || 'x' || {pad10}, {now}, {now}
  FROM ({workers}) AS ws, ({numbers}) AS ns;
"""


def seed_orders(database_url, concurrency, per_client):
    """Creates what --orders needs (see SEED) in the database the server has just migrated."""
    if database_url.startswith("sqlite://"):
        def series(n, name):
            return f"WITH RECURSIVE s(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM s WHERE x < {n - 1}) SELECT x AS {name} FROM s"
        sql = SEED.format(true=1, now="'2026-12-01T00:00:00.000000+00:00'", workers=series(concurrency, "w"), numbers=series(per_client, "n"),
                          pad3="substr('000' || w, -3)", pad10="substr('0000000000' || n, -10)")
        subprocess.run(["sqlite3", "-cmd", ".timeout 10000", database_url[len("sqlite://"):]], input=sql, text=True, check=True)
    else:
        sql = SEED.format(true="TRUE", now="now()", workers=f"SELECT generate_series(0, {concurrency - 1}) AS w",
                          numbers=f"SELECT generate_series(0, {per_client - 1}) AS n", pad3="lpad(w::text, 3, '0')", pad10="lpad(n::text, 10, '0')")
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", database_url], input=sql, text=True, check=True)


def paid_orders(database_url):
    sql = "SELECT count(*) FROM orders WHERE status = 'paid';"
    if database_url.startswith("sqlite://"):
        out = subprocess.run(["sqlite3", "-cmd", ".timeout 10000", database_url[len("sqlite://"):], sql], capture_output=True, text=True, check=True)
    else:
        out = subprocess.run(["psql", "-tA", database_url, "-c", sql], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


ORDERS_PER_CLIENT = 0


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
    # PostgreSQL's writers side by side, when the caller chose them (`--ingest-writers`).
    if os.environ.get("TOLLGATE_DATABASE_INGEST_WRITERS"):
        env["TOLLGATE_DATABASE_INGEST_WRITERS"] = os.environ["TOLLGATE_DATABASE_INGEST_WRITERS"]
    proc = subprocess.Popen([TOLLGATE, "serve"], env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, "/readyz")
        if ORDERS_PER_CLIENT:
            seed_orders(database_url, concurrency, ORDERS_PER_CLIENT)
        result = loadgen("webhook", f"http://127.0.0.1:{port}/api/v1/webhooks/stripe", concurrency, seconds, WHSEC)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # Once the server is gone: with 128 clients its pool may hold every connection PostgreSQL allows.
    if ORDERS_PER_CLIENT:
        result["paid"] = paid_orders(database_url)
    return result


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
    ap.add_argument("--orders", action="store_true", help="every event pays a pending order of a credits product (see SEED)")
    ap.add_argument("--orders-per-client", type=int, default=0, help="with --orders: orders seeded per client (default: enough for 25,000 events/s)")
    ap.add_argument("--no-sqlite", action="store_true", help="measure PostgreSQL only")
    ap.add_argument("--ingest-writers", type=int, help="TOLLGATE_DATABASE_INGEST_WRITERS for the server (PostgreSQL)")
    args = ap.parse_args()
    if args.ingest_writers:
        os.environ["TOLLGATE_DATABASE_INGEST_WRITERS"] = str(args.ingest_writers)
    if args.orders:
        global ORDERS_PER_CLIENT
        ORDERS_PER_CLIENT = args.orders_per_client or -(-25_000 * args.seconds // args.concurrency)
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
        if not args.no_sqlite:
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
        paid = f"  (orders paid: {r['paid']})" if "paid" in r else ""
        print(f"{name:<{width}}{r['rate']:>10.0f}{r['p50_ms']:>8.2f}ms{r['p99_ms']:>8.2f}ms{r['errors']:>8}{r['rate'] / base * 100:>9.1f}%{paid}")


def main():
    side_by_side("tollgate webhook", run_tollgate)


if __name__ == "__main__":
    main()
