#!/usr/bin/env python3
"""Outbox delivery throughput: messages per second that one `tollgate serve` delivers, signed, to a
local HTTP receiver answering 204, each with its attempt recorded.

N pending webhook messages for one endpoint are written straight into a migrated database (as if
N facts had just committed), then the server starts and the receiver counts until it has them all.
SQLite always; PostgreSQL too when TEST_DATABASE_URL (or --postgres URL) names a server (needs
`psql`). Prints figures; asserts nothing.

    cargo build --release --bin tollgate
    python3 bench/outbox_throughput.py [--messages 2000] [--postgres postgres://…]
"""
import argparse
import datetime
import http.server
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLLGATE = os.environ.get("TOLLGATE_BIN", os.path.join(ROOT, "target", "release", "tollgate"))


class Counter:
    def __init__(self, want):
        self.want, self.n, self.first, self.last = want, 0, None, None
        self.lock = threading.Lock()
        self.done = threading.Event()

    def hit(self):
        with self.lock:
            now = time.monotonic()
            self.first = self.first or now
            self.n += 1
            self.last = now
            if self.n >= self.want:
                self.done.set()


def receiver(counter):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            counter.hit()
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def rows(n, url):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    endpoint = ("we_bench", url, '["ping"]', None, False, "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=", now, now)
    messages = []
    for i in range(n):
        body = json.dumps({"type": "ping", "timestamp": now, "data": {"n": i}})
        messages.append((f"msg_bench{i:08d}", "webhook", "we_bench", "ping", body, f"bench:{uuid.uuid4()}", now, "pending", 0, now, now))
    return endpoint, messages


def run(database_url, n, workdir, load):
    env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": database_url, "TOLLGATE_LOG": "warn"}
    subprocess.run([TOLLGATE, "migrate"], env=env, cwd=workdir, check=True, capture_output=True)
    counter = Counter(n)
    srv = receiver(counter)
    load(*rows(n, f"http://127.0.0.1:{srv.server_address[1]}/hook"))
    env["TOLLGATE_BIND"] = "127.0.0.1:0"
    proc = subprocess.Popen([TOLLGATE, "serve"], env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ok = counter.done.wait(600)
    finally:
        proc.terminate()
        proc.wait()
        srv.shutdown()
    if not ok:
        sys.exit(f"only {counter.n} of {n} delivered")
    span = counter.last - counter.first
    return {"messages": n, "seconds": round(span, 2), "per_second": round(n / span, 1) if span else None}


def sqlite_load(path):
    def load(endpoint, messages):
        db = sqlite3.connect(path)
        db.execute("INSERT INTO webhook_endpoints (id, url, events, description, disabled, secret, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)", endpoint)
        db.executemany(
            "INSERT INTO outbox (id, kind, recipient, event_type, payload, fact_key, occurred_at, status, attempts, next_attempt_at, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            messages,
        )
        db.commit()
        db.close()

    return load


def pg_load(url):
    def q(v):
        if v is None:
            return "NULL"
        if isinstance(v, bool):
            return "TRUE" if v else "FALSE"
        if isinstance(v, int):
            return str(v)
        return "'" + str(v).replace("'", "''") + "'"

    def load(endpoint, messages):
        sql = ["BEGIN;"]
        sql.append("INSERT INTO webhook_endpoints (id, url, events, description, disabled, secret, created_at, updated_at) VALUES (" + ",".join(map(q, endpoint)) + ");")
        for m in messages:
            sql.append("INSERT INTO outbox (id, kind, recipient, event_type, payload, fact_key, occurred_at, status, attempts, next_attempt_at, created_at) VALUES (" + ",".join(map(q, m)) + ");")
        sql.append("COMMIT;")
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url], input="\n".join(sql), text=True, check=True, capture_output=True)

    return load


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--postgres", default=os.environ.get("TEST_DATABASE_URL"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.db")
        print("sqlite", json.dumps(run(f"sqlite://{path}", a.messages, d, sqlite_load(path))))
    if a.postgres and shutil.which("psql"):
        name = f"tollgate_bench_{uuid.uuid4().hex[:8]}"
        subprocess.run(["psql", "-q", a.postgres, "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True)
        base = a.postgres.rsplit("/", 1)[0]
        try:
            with tempfile.TemporaryDirectory() as d:
                print("postgres", json.dumps(run(f"{base}/{name}", a.messages, d, pg_load(f"{base}/{name}"))))
        finally:
            subprocess.run(["psql", "-q", a.postgres, "-c", f"DROP DATABASE {name} WITH (FORCE)"], capture_output=True)


if __name__ == "__main__":
    main()
