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
import http.client
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from webhook_ingest import TOLLGATE, free_port, loadgen, side_by_side, wait_for  # noqa: E402


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
        return loadgen("get", url, concurrency, seconds, bearer=key)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    side_by_side("entitlements by key", run_tollgate)


if __name__ == "__main__":
    main()
