#!/usr/bin/env python3
"""Startup-to-ready time and idle memory of `tollgate serve` on SQLite.

Starts the release binary N times (a fresh database each time, so migrations run, and again on the
now-existing database), measures the time from spawn until GET /readyz answers 200, then reads the
resident set size (VmRSS) after some requests and a second of idle. Prints figures; asserts nothing.

    cargo build --release && python3 bench/startup.py [--runs 20]
"""
import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "tollgate")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        c.request("GET", "/readyz")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def one_run(db_dir, warm_requests):
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TOLLGATE_BIND": f"127.0.0.1:{port}",
        "DATABASE_URL": f"sqlite://{db_dir}/tollgate.db",
        "TOLLGATE_LOG": "warn",
    }
    start = time.perf_counter()
    proc = subprocess.Popen([BIN, "serve"], env=env, cwd=db_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not ready(port):
            if proc.poll() is not None:
                sys.exit(f"tollgate exited with {proc.returncode}")
            if time.perf_counter() - start > 10:
                sys.exit("not ready after 10 s")
            time.sleep(0.001)
        ready_ms = (time.perf_counter() - start) * 1000
        rss = None
        if warm_requests:
            for path in ["/healthz", "/readyz", "/openapi.json", "/docs", "/nowhere"] * (warm_requests // 5):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", path)
                c.getresponse().read()
                c.close()
            time.sleep(1.0)
            rss = rss_kib(proc.pid)
        return ready_ms, rss
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    fresh, warm, rss = [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as d:
            ms, _ = one_run(d, 0)  # new database: migrations run
            fresh.append(ms)
            ms, r = one_run(d, 200)  # existing database, then 200 requests and 1 s idle
            warm.append(ms)
            rss.append(r)
    print(f"machine: {os.cpu_count()} cpus, {os.uname().sysname} {os.uname().release}")
    print(f"runs: {args.runs}")
    for name, xs in [("startup to ready, new database (ms)", fresh), ("startup to ready, existing database (ms)", warm)]:
        print(f"{name}: p50 {statistics.median(xs):.1f}  p90 {pct(xs, 90):.1f}  max {max(xs):.1f}")
    print(f"idle RSS after 200 requests (MiB): p50 {statistics.median(rss) / 1024:.1f}  max {max(rss) / 1024:.1f}")


if __name__ == "__main__":
    main()
