#!/usr/bin/env python3
"""The statements one verified Stripe event costs, counted and timed from sqlx's own log.

Starts tollgate (`TOLLGATE_BIN`, default target/release/tollgate) with `sqlx::query=debug` on a
fresh SQLite file and, when TEST_DATABASE_URL (or --postgres URL) names a server, on a fresh
PostgreSQL database, then sends events one at a time and prints every statement each one caused,
with the time sqlx measured for it:

- the load generator's event (examples/loadgen.rs: a `checkout.session.completed` naming an order
  nobody has), the one `bench/webhook_ingest.py` sends;
- the same event about a pending order of a credits product (`bench/webhook_ingest.py --orders`
  seeds such orders): the order paid, its grant created, the credits added, the notices written;
- that event again (a redelivery).

Events are sent one at a time, so each is a batch of one: the batch's own statements (the events'
INSERT, the statuses' UPDATE and the history's INSERT; on PostgreSQL also BEGIN and COMMIT) are
shared by every event of a batch under load. Prints figures; asserts nothing.

    cargo build --release --bin tollgate
    python3 bench/ingest_statements.py [--postgres postgres://…] [--rounds 3]
"""
import argparse
import hashlib
import hmac
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from webhook_ingest import TOLLGATE, WHSEC, free_port, fresh_postgres, seed_orders, wait_for  # noqa: E402

BATCH = ("INSERT INTO stripe_events (event_id, type, livemode, api_version, created, received_at, updated_at, status, payload, provider) VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9), (",
         "INSERT INTO stripe_events (event_id, type, livemode, api_version, created, received_at, updated_at, status, payload, provider) VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9) ON CONFLICT (event_id) DO NOTHING RETURNING",
         "UPDATE stripe_events SET status = v.", "INSERT INTO stripe_event_history", "BEGIN", "COMMIT")
# The outbox's dispatchers (here: the buyer's receipt email) and the change feed's heartbeat (PostgreSQL).
BACKGROUND = ("SELECT pg_notify", "SELECT id FROM outbox", "UPDATE outbox SET", "SELECT COALESCE(MAX(attempt)", "INSERT INTO outbox_attempts", "SELECT kind, recipient")


def event(worker, n):
    """examples/loadgen.rs's `event_body(worker, n)`, byte for byte."""
    return (
        f'{{"id":"evt_bench{worker:03}x{n:010}","object":"event","api_version":"2024-06-20","created":1700000000,"livemode":false,'
        f'"pending_webhooks":1,"request":{{"id":null,"idempotency_key":null}},"type":"checkout.session.completed","data":{{"object":'
        f'{{"id":"cs_test_bench{worker:03}x{n:010}","object":"checkout.session","amount_total":1999,"currency":"usd",'
        f'"client_reference_id":"ord_bench","metadata":{{}},"mode":"payment","payment_status":"paid","status":"complete"}}}}}}'
    ).encode()


def send(port, body):
    t = int(time.time())
    mac = hmac.new(WHSEC.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/api/v1/webhooks/stripe", body, {"content-type": "application/json", "stripe-signature": f"t={t},v1={mac}"})
    r = c.getresponse()
    r.read()
    return r.status


def statements(log_path, offset):
    """The sqlx statement lines written to `log_path` after `offset`: (text, µs), and the new offset."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        data = f.read()
    found = []
    for line in data.decode(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("target") != "sqlx::query":
            continue
        text = (entry.get("db.statement") or "").strip() or entry.get("summary", "")
        found.append((" ".join(text.split()), float(entry.get("elapsed_secs", 0)) * 1e6))
    return found, offset + len(data)


def measure(label, database_url, rounds, workdir):
    port = free_port()
    log_path = os.path.join(workdir, f"{label}.log")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TOLLGATE_BIND": f"127.0.0.1:{port}",
        "DATABASE_URL": database_url,
        "STRIPE_WEBHOOK_SECRET": WHSEC,
        "TOLLGATE_LOG": "warn,sqlx::query=debug",
        "TOLLGATE_LOG_FORMAT": "json",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([TOLLGATE, "serve"], env=env, cwd=workdir, stdout=log, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, "/readyz")
        # Worker 0's events 0..rounds find an order; worker 1's find none.
        seed_orders(database_url, 1, rounds)
        time.sleep(0.5)
        _, offset = statements(log_path, 0)
        cases = []
        for n in range(rounds):
            cases.append((f"no such order (the load generator's event), #{n}", event(1, n)))
            cases.append((f"credits order paid, #{n}", event(0, n)))
            cases.append((f"credits order paid, redelivered, #{n}", event(0, n)))
        for name, body in cases:
            status = send(port, body)
            time.sleep(0.3)
            found, offset = statements(log_path, offset)
            found = [s for s in found if not s[0].startswith(BACKGROUND)]
            per_event = [s for s in found if not s[0].startswith(BATCH)]
            print(f"\n{label}: {name}: HTTP {status}, {len(found)} statements ({len(per_event)} of the event's own), "
                  f"{sum(t for _, t in found):.0f} µs in all ({sum(t for _, t in per_event):.0f} µs the event's own)")
            for text, us in found:
                mark = " " if text.startswith(BATCH) else "*"
                print(f"  {mark} {us:8.1f} µs  {text[:100]}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--postgres", default=os.environ.get("TEST_DATABASE_URL"))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not os.path.exists(TOLLGATE):
        sys.exit("build first: cargo build --release --bin tollgate")
    print("* the event's own statements; the others are its batch's (shared by every event of a batch under load);")
    print("  the outbox dispatchers' statements (sending the receipt email) are left out")
    with tempfile.TemporaryDirectory() as d:
        measure("SQLite", f"sqlite://{d}/tollgate.db", args.rounds, d)
        if args.postgres:
            url, name = fresh_postgres(args.postgres)
            try:
                measure("PostgreSQL", url, args.rounds, d)
            finally:
                subprocess.run(["psql", args.postgres, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)


if __name__ == "__main__":
    main()
