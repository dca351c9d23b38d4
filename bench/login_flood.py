#!/usr/bin/env python3
"""Does a flood of password work starve the rest of the API, or its memory?

Starts the release binary on a fresh SQLite database with the login limiters opened wide (so every
guess really costs an argon2id hash; `--default-limits` keeps them), then measures GET /healthz and an authenticated GET /api/v1/me
(bearer token) while idle, and again while 200 concurrent clients (each its own address, through a
trusted proxy header) attack:

- `--attack login` (default): wrong-password logins;
- `--attack register`: registrations whose password is the review's 128-character string of
  look-alike symbols, which makes zxcvbn slow (judged on its first 64 characters).

Prints p50/p99 latencies for both phases, the attack requests answered per second by status, and the
server's resident memory (VmRSS) at start, after registering and one login, after 5 and after 25
more wrong-password logins, at the end of the flood and 2 s after it. Asserts nothing.

    cargo build --release && python3 bench/login_flood.py [--seconds 15] [--clients 200] [--attack register]
        [--queue N] [--default-limits] [--bin path/to/tollgate]
"""
import argparse
import http.client
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "tollgate")
PASSWORD = "correct horse battery staple 42"
LOOKALIKE = ("4@8({[</369&#!1/|0$5+7%2/" * 6)[:128]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, headers=None, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body)
        h["content-type"] = "application/json"
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    payload = r.read()
    c.close()
    return r.status, payload


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def probe(port, token, stop, out):
    """Alternates /healthz and /me, one at a time, recording latencies in ms."""
    while not stop.is_set():
        for name, path, headers in (("healthz", "/healthz", {}), ("me", "/api/v1/me", {"authorization": f"Bearer {token}"})):
            t = time.perf_counter()
            status, _ = request(port, "GET", path, headers=headers)
            out[name].append((time.perf_counter() - t) * 1000)
            if status != 200:
                sys.exit(f"{path} answered {status}")
        time.sleep(0.01)


def flood_main(port, clients, stop, handled, statuses, attack):
    def attacker(i):
        n = 0
        headers = {"x-forwarded-for": f"10.{i // 250}.{i % 250}.{n % 250 + 1}"}
        while not stop.is_set():
            n += 1
            if attack == "register":
                body = {"email": f"flood{i}-{n}@example.com", "password": LOOKALIKE}
                s, _ = request(port, "POST", "/api/v1/auth/register", body, headers=headers)
            else:
                body = {"email": "bench@example.com", "password": f"wrong guess number {i}"}
                s, _ = request(port, "POST", "/api/v1/auth/login", body, headers=headers)
            with handled.get_lock():
                handled.value += 1
            with statuses.get_lock():
                statuses[min(s, 599) - 100] += 1

    threads = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    stop.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--attack", choices=["login", "register"], default="login")
    ap.add_argument("--queue", type=int, default=None, help="TOLLGATE_PASSWORD_QUEUE (default: the server's, 32)")
    ap.add_argument("--bin", default=BIN, help="the tollgate binary (default: target/release/tollgate)")
    ap.add_argument("--default-limits", action="store_true", help="keep the login limits' defaults instead of opening them wide")
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        sys.exit("build first: cargo build --release")
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "TOLLGATE_BIND": f"127.0.0.1:{port}",
            "DATABASE_URL": f"sqlite://{d}/tollgate.db",
            "TOLLGATE_LOG": "warn",
            "TOLLGATE_REQUEST_TIMEOUT": "120s",
            "TOLLGATE_TRUSTED_PROXIES": "127.0.0.1/32",
        }
        if not args.default_limits:
            env.update({
                "TOLLGATE_LOGIN_IP_LIMIT": "100000000",
                "TOLLGATE_LOGIN_MAX_FAILURES": "100000000",
                "TOLLGATE_LOGIN_ACCOUNT_CEILING": "100000000",
            })
        if args.queue is not None:
            env["TOLLGATE_PASSWORD_QUEUE"] = str(args.queue)
        proc = subprocess.Popen([args.bin, "serve"], env=env, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    if request(port, "GET", "/readyz")[0] == 200:
                        break
                except OSError:
                    time.sleep(0.05)
            time.sleep(0.5)
            rss = {"at start": rss_mib(proc.pid)}
            assert request(port, "POST", "/api/v1/auth/register", {"email": "bench@example.com", "password": PASSWORD})[0] == 201
            status, body = request(port, "POST", "/api/v1/auth/token", {"email": "bench@example.com", "password": PASSWORD})
            token = json.loads(body)["access_token"]
            time.sleep(1.0)
            rss["after registering and one login"] = rss_mib(proc.pid)
            for n in (5, 25):
                for _ in range(n):
                    request(port, "POST", "/api/v1/auth/login", {"email": "bench@example.com", "password": "a wrong password"})
                time.sleep(0.5)
                rss[f"after {5 if n == 5 else 30} wrong logins"] = rss_mib(proc.pid)

            idle = {"healthz": [], "me": []}
            stop = threading.Event()
            t = threading.Thread(target=probe, args=(port, token, stop, idle))
            t.start()
            time.sleep(min(5.0, args.seconds / 3))
            stop.set()
            t.join()

            flood = {"healthz": [], "me": []}
            # The guessers run in another process, so the probe here never waits on their GIL.
            stop_flood = multiprocessing.Event()
            handled = multiprocessing.Value("i", 0)
            statuses = multiprocessing.Array("i", 500)
            flooder = multiprocessing.Process(target=flood_main, args=(port, args.clients, stop_flood, handled, statuses, args.attack))
            flooder.start()
            time.sleep(2.0)  # let the queue form
            before = handled.value
            started = time.perf_counter()
            stop = threading.Event()
            t = threading.Thread(target=probe, args=(port, token, stop, flood))
            t.start()
            time.sleep(args.seconds)
            stop.set()
            t.join()
            elapsed = time.perf_counter() - started
            handled = handled.value - before
            rss["end of the flood"] = rss_mib(proc.pid)
            stop_flood.set()
            flooder.join(timeout=120)
            time.sleep(2.0)
            rss["2 s after the flood"] = rss_mib(proc.pid)
            by_status = ", ".join(f"{i + 100}: {n}" for i, n in enumerate(statuses[:]) if n)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    what = "wrong-password logins" if args.attack == "login" else "registrations with 128 look-alike symbols"
    queue = args.queue if args.queue is not None else "default (32)"
    queue = f"{queue}; login limits {'default' if args.default_limits else 'opened wide'}"
    print(f"machine: {os.cpu_count()} cpus; {args.clients} concurrent clients sending {what} for {args.seconds:.0f} s; password queue {queue}")
    print(f"attack requests answered: {handled} ({handled / elapsed:.1f}/s); by status over the whole flood: {by_status}")
    print("server RSS: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in rss.items()))
    print(f"{'route':<10}{'idle p50':>10}{'idle p99':>10}{'flood p50':>11}{'flood p99':>11}{'p99 ratio':>11}  samples idle/flood")
    for name in ("healthz", "me"):
        i, f = idle[name], flood[name]
        print(f"{name:<10}{statistics.median(i):>9.2f}ms{pct(i, 99):>8.2f}ms{statistics.median(f):>9.2f}ms{pct(f, 99):>9.2f}ms{pct(f, 99) / pct(i, 99):>10.2f}x  {len(i)}/{len(f)}")


if __name__ == "__main__":
    main()
