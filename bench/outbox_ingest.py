#!/usr/bin/env python3
"""What writing outbox rows adds to webhook ingest: `checkout.session.completed` events that each
pay a real pending order (so each applies a fact, creates a grant and writes its messages), sent
by 16 concurrent clients to one `tollgate serve` on SQLite, with 0 and then 2 webhook endpoints
subscribed to every type. With 0, each payment still writes one row (the buyer's receipt email);
with 2, five (order.paid and entitlement.granted per endpoint, and the receipt), and the
dispatcher delivers them to a local receiver meanwhile. Prints figures; asserts nothing.

    cargo build --release --bin tollgate
    python3 bench/outbox_ingest.py [--orders 3000]
"""
import argparse
import concurrent.futures
import datetime
import hashlib
import hmac
import http.client
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from outbox_throughput import Counter, receiver  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLLGATE = os.environ.get("TOLLGATE_BIN", os.path.join(ROOT, "target", "release", "tollgate"))
WHSEC = "whsec_bench_0123456789abcdef0123456789abcdef"
ALL = ["order.paid", "order.partially_refunded", "order.refunded", "order.disputed", "order.dispute_closed",
       "entitlement.granted", "entitlement.suspended", "entitlement.restored", "entitlement.revoked", "credits.changed"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(path, n, endpoints):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    grant = json.dumps({"kind": "access", "feature": "pro"})
    db = sqlite3.connect(path)
    db.execute("INSERT INTO users (id, email, email_key, password_hash, role, created_at, updated_at, password_changed_at) VALUES ('usr_bench', 'buyer@example.com', 'buyer@example.com', 'x', 'user', ?, ?, ?)", (now, now, now))
    db.execute("INSERT INTO products (id, name, active, version, amount, currency, grant_spec, created_at, updated_at) VALUES ('pr_bench', 'Pro', 1, 1, 1500, 'usd', ?, ?, ?)", (grant, now, now))
    db.execute("INSERT INTO product_versions (product_id, version, amount, currency, grant_spec, created_at) VALUES ('pr_bench', 1, 1500, 'usd', ?, ?)", (grant, now))
    db.executemany(
        "INSERT INTO orders (id, user_id, product_id, product_version, quantity, amount, currency, grant_spec, flow, status, checkout_session_id, created_at, updated_at) "
        "VALUES (?, 'usr_bench', 'pr_bench', 1, 1, 1500, 'usd', ?, 'checkout', 'pending', ?, ?, ?)",
        [(f"ord_bench{i:07d}", grant, f"cs_bench{i:07d}", now, now) for i in range(n)],
    )
    for i, url in enumerate(endpoints):
        db.execute("INSERT INTO webhook_endpoints (id, url, events, disabled, secret, created_at, updated_at) VALUES (?, ?, ?, 0, ?, ?, ?)",
                   (f"we_bench{i}", url, json.dumps(ALL), "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=", now, now))
    db.commit()
    db.close()


def event(i):
    order = f"ord_bench{i:07d}"
    obj = {"id": f"cs_bench{i:07d}", "object": "checkout.session", "client_reference_id": order, "metadata": {"order_id": order},
           "status": "complete", "payment_status": "paid", "amount_total": 1500, "currency": "usd", "payment_intent": f"pi_bench{i:07d}"}
    return json.dumps({"id": f"evt_bench{i:07d}", "object": "event", "type": "checkout.session.completed", "created": int(time.time()),
                       "livemode": False, "api_version": "2024-06-20", "data": {"object": obj}}).encode()


def send(port, bodies):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    bad = 0
    for body in bodies:
        t = int(time.time())
        sig = hmac.new(WHSEC.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        c.request("POST", "/api/v1/webhooks/stripe", body=body, headers={"stripe-signature": f"t={t},v1={sig}", "content-type": "application/json"})
        r = c.getresponse()
        r.read()
        bad += r.status != 200
    return bad


def run(n, endpoints, clients=16):
    counter = Counter(n * 2 * endpoints if endpoints else 1)
    srv = receiver(counter)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.db")
        env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": f"sqlite://{path}", "TOLLGATE_LOG": "warn", "STRIPE_WEBHOOK_SECRET": WHSEC}
        subprocess.run([TOLLGATE, "migrate"], env=env, cwd=d, check=True, capture_output=True)
        seed(path, n, [f"http://127.0.0.1:{srv.server_address[1]}/hook"] * endpoints)
        port = free_port()
        env["TOLLGATE_BIND"] = f"127.0.0.1:{port}"
        proc = subprocess.Popen([TOLLGATE, "serve"], env=env, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(400):
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                    c.request("GET", "/readyz")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    time.sleep(0.025)
            bodies = [event(i) for i in range(n)]
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                bad = sum(pool.map(lambda k: send(port, bodies[k::clients]), range(clients)))
            took = time.monotonic() - started
            delivered = None
            if endpoints:
                counter.done.wait(300)
                delivered = counter.n
            rows = sqlite3.connect(path).execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        finally:
            proc.terminate()
            proc.wait()
            srv.shutdown()
    return {"endpoints": endpoints, "events": n, "errors": bad, "events_per_second": round(n / took, 1), "outbox_rows": rows, "webhooks_received": delivered}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=3000)
    a = ap.parse_args()
    for endpoints in (0, 2):
        print(json.dumps(run(a.orders, endpoints)))


if __name__ == "__main__":
    main()
