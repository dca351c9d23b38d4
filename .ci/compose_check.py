#!/usr/bin/env python3
"""Checks docker-compose.yml against tollgate itself (no container engine needed).

For each service built from this repository (`build: .`): every variable its environment sets
(the Dockerfile's ENV, then the service's `environment`) that looks like tollgate's (TOLLGATE_*,
STRIPE_*, DATABASE_URL*, REDIS_URL*) is a setting of src/config/settings.rs (or `<NAME>_FILE` of a
secret one); every `/run/secrets/<name>` it reads is a secret the service mounts and the file
declares; then `tollgate check-config` runs with exactly that environment, the secrets written
fresh the way RUNBOOK.md makes them and DATABASE_URL pointed at a test database, and must say
"verdict: ok".

    python3 .ci/compose_check.py [--binary target/debug/tollgate] [--database-url URL]
"""
import argparse
import os
import re
import secrets
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = re.compile(r"^(TOLLGATE_|STRIPE_|DATABASE_URL|REDIS_URL)")


def settings():
    """{env name: secret?} for every name in src/config/settings.rs (aliases included)."""
    text = open(os.path.join(ROOT, "src/config/settings.rs")).read()
    out = {}
    for m in re.finditer(r"env: &\[([^\]]*)\],\s*default: .*?,\s*secret: (true|false)", text, re.S):
        names = re.findall(r'"([^"]+)"', m.group(1))
        for i, n in enumerate(names):
            out[n] = m.group(2) == "true"
        if m.group(2) == "true":
            out[names[0] + "_FILE"] = False  # only the canonical name has a _FILE form
    return out


def dockerfile_env():
    """The ENV of the Dockerfile's last stage."""
    env, stage = {}, None
    text = open(os.path.join(ROOT, "Dockerfile")).read().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line.upper().startswith("FROM "):
            env, stage = {}, line
        elif line.upper().startswith("ENV "):
            for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', line[4:]):
                env[k] = v.strip('"')
    assert stage, "the Dockerfile has no FROM"
    return env


def interpolate(value):
    """Compose's ${VAR:-default} and ${VAR-default}, with the defaults (nothing here is set)."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", str(value))


def environment_of(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: interpolate(v) for k, v in env.items()}


def fresh_secret(name, database_url):
    """A value for secret `name` as RUNBOOK.md makes it (Stripe's keys: shaped like Stripe's)."""
    if name == "database_url":
        return database_url
    if name == "licence_key":
        return subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519"], check=True, capture_output=True, text=True).stdout
    if name == "stripe_secret_key":
        return "sk_test_" + secrets.token_hex(24)
    if name == "stripe_webhook_secret":
        return "whsec_" + secrets.token_hex(24)
    return secrets.token_urlsafe(48)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/debug/tollgate"))
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    # Absolute: the binary runs with another working directory (a temporary one).
    args.binary = os.path.abspath(args.binary)

    compose = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yml")))
    known = settings()
    image_env = dictionary_checked("Dockerfile ENV", dockerfile_env(), known)
    declared = compose.get("secrets") or {}
    problems, checked = [], 0
    for name, service in (compose.get("services") or {}).items():
        if service.get("build") not in (".", "./"):
            continue
        checked += 1
        env = dict(image_env)
        env.update(environment_of(service))
        for k in env:
            if OURS.match(k) and k not in known:
                problems.append(f"{name}: {k} is not a tollgate setting")
        mounted = [s if isinstance(s, str) else s.get("source") for s in service.get("secrets") or []]
        with tempfile.TemporaryDirectory() as tmp:
            run_env = {"PATH": os.environ.get("PATH", "")}
            for k, v in env.items():
                m = re.fullmatch(r"/run/secrets/(\w+)", v)
                if k.endswith("_FILE") and m:
                    secret = m.group(1)
                    if secret not in mounted:
                        problems.append(f"{name}: {k} reads secret {secret}, which the service does not mount")
                    if secret not in declared:
                        problems.append(f"{name}: secret {secret} is not declared at the top level")
                    path = os.path.join(tmp, secret)
                    with open(path, "w") as f:
                        f.write(fresh_secret(secret, args.database_url).rstrip("\n") + "\n")
                    v = path
                run_env[k] = v
            out = subprocess.run([args.binary, "check-config"], env=run_env, cwd=tmp, capture_output=True, text=True)
            text = out.stdout + out.stderr
            if out.returncode != 0 or "verdict: ok" not in text:
                problems.append(f"{name}: tollgate check-config refuses its environment:\n{text}")
            elif "environment: production" not in text or "database:    postgres" not in text:
                problems.append(f"{name}: expected a production instance on PostgreSQL:\n{text}")
    if checked == 0:
        problems.append("no service in docker-compose.yml is built from this repository")
    for p in problems:
        print(f"docker-compose.yml: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"docker-compose.yml: {checked} tollgate instance(s) pass check-config in production; every variable is a setting")


def dictionary_checked(what, env, known):
    for k in env:
        if OURS.match(k) and k not in known:
            print(f"{what}: {k} is not a tollgate setting", file=sys.stderr)
            sys.exit(1)
    return env


if __name__ == "__main__":
    main()
