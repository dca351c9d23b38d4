#!/usr/bin/env python3
"""Checks docker-compose.yml against tollgate itself (no container engine needed).

For each service built from this repository (`build: .`): every variable its environment sets
(the Dockerfile's ENV, then the service's `environment`) that looks like tollgate's (TOLLGATE_*,
STRIPE_*, DATABASE_URL*, REDIS_URL*) is a setting of src/config/settings.rs (or `<NAME>_FILE` of a
secret one); every `/run/secrets/<name>` it reads is a secret the service mounts and the file
declares; then `tollgate check-config` runs with exactly that environment, the secrets written
fresh the way RUNBOOK.md makes them and DATABASE_URL pointed at a test database, and must say
"verdict: ok"; and it stops within `stop_grace_period`, which must exceed
TOLLGATE_SHUTDOWN_TIMEOUT.

The load balancer (the service mounting a Caddyfile at /etc/caddy/Caddyfile, with no `command` to
bypass it): its `reverse_proxy` lists exactly the tollgate services on their TOLLGATE_BIND port,
health-checks them on /readyz with the other settings RUNBOOK.md's rolling restart needs, and its
fixed address is the one each instance trusts as a proxy, inside the network's subnet and outside
the range other containers are given addresses from.

    python3 .ci/compose_check.py [--binary target/debug/tollgate] [--database-url URL]
"""
import argparse
import ipaddress
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


def seconds(text):
    """Compose's and tollgate's durations ("30s", "1m30s", "500ms", "20"), in seconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return float(text)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text}"
    return sum(float(n) * units[u] for n, u in parts)


def shutdown_default():
    text = open(os.path.join(ROOT, "src/config/settings.rs")).read()
    m = re.search(r'env: &\["TOLLGATE_SHUTDOWN_TIMEOUT"\],\s*default: Some\("([^"]+)"\)', text)
    assert m, "TOLLGATE_SHUTDOWN_TIMEOUT has no default in settings.rs"
    return m.group(1)


# What the rolling restart in RUNBOOK.md needs of the balancer: only ready instances get traffic.
CADDY_REQUIRED = {
    "health_uri": "/readyz",
    "health_interval": None,
    "lb_policy": "round_robin",
    "lb_try_duration": None,
    "fail_duration": None,
}


def check_balancer(compose, tollgates, problems):
    """The Caddy service: its Caddyfile, its address. tollgates: {service name: its env}."""
    balancers = []
    for name, service in (compose.get("services") or {}).items():
        for volume in service.get("volumes") or []:
            text = volume if isinstance(volume, str) else f"{volume.get('source')}:{volume.get('target')}"
            parts = text.split(":")
            if len(parts) >= 2 and parts[1] == "/etc/caddy/Caddyfile":
                balancers.append((name, service, parts[0], parts[2:]))
    if len(balancers) != 1:
        problems.append(f"expected one service mounting a Caddyfile at /etc/caddy/Caddyfile, found {len(balancers)}")
        return
    name, service, source, options = balancers[0]
    if "ro" not in options:
        problems.append(f"{name}: mount the Caddyfile read-only (:ro)")
    if service.get("command") or service.get("entrypoint"):
        problems.append(f"{name}: a command or entrypoint would bypass the mounted Caddyfile")
    path = os.path.join(ROOT, source)
    if not os.path.isfile(path):
        problems.append(f"{name}: {source} does not exist")
        return
    caddyfile = re.sub(r"#.*", "", open(path).read())
    m = re.search(r"^\s*reverse_proxy\s+([^{\n]*)\{(.*?)^\s*\}", caddyfile, re.M | re.S)
    if not m:
        problems.append(f"{name}: {source} has no reverse_proxy block")
        return
    upstreams = set(m.group(1).split())
    expected = set()
    for tname, env in tollgates.items():
        port = env.get("TOLLGATE_BIND", "127.0.0.1:8080").rsplit(":", 1)[-1]
        expected.add(f"{tname}:{port}")
    if upstreams != expected:
        problems.append(f"{name}: reverse_proxy sends to {sorted(upstreams)}, the tollgate services listen on {sorted(expected)}")
    block = dict((line.split() + [""])[:2] for line in m.group(2).splitlines() if line.strip())
    for key, value in CADDY_REQUIRED.items():
        if key not in block:
            problems.append(f"{name}: {source}: reverse_proxy has no {key}")
        elif value is not None and block[key] != value:
            problems.append(f"{name}: {source}: {key} is {block[key]}, expected {value}")
    # Its address: fixed, trusted by every instance, outside the range handed out to others.
    address = ((service.get("networks") or {}).get("default") or {}).get("ipv4_address")
    if not address:
        problems.append(f"{name}: no fixed ipv4_address on the default network")
        return
    address = ipaddress.ip_address(address)
    for tname, env in tollgates.items():
        trusted = [ipaddress.ip_network(p.strip(), strict=False) for p in env.get("TOLLGATE_TRUSTED_PROXIES", "").split(",") if p.strip()]
        if trusted != [ipaddress.ip_network(f"{address}/32")]:
            problems.append(f"{tname}: TOLLGATE_TRUSTED_PROXIES should be exactly {address}/32, the balancer's address")
    configs = ((compose.get("networks") or {}).get("default") or {}).get("ipam", {}).get("config") or []
    for config in configs:
        subnet = ipaddress.ip_network(config["subnet"])
        if address not in subnet:
            problems.append(f"{name}: {address} is outside the subnet {subnet}")
        if "ip_range" not in config:
            problems.append(f"networks.default: subnet {subnet} has no ip_range: another container may be given {address}")
        elif address in ipaddress.ip_network(config["ip_range"]):
            problems.append(f"{name}: {address} is inside ip_range {config['ip_range']}: another container may be given it")
    if not configs:
        problems.append("networks.default has no ipam subnet: the balancer's fixed address needs one")


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
    problems, checked, tollgates = [], 0, {}
    default_shutdown = shutdown_default()
    for name, service in (compose.get("services") or {}).items():
        if service.get("build") not in (".", "./"):
            continue
        checked += 1
        env = dict(image_env)
        env.update(environment_of(service))
        tollgates[name] = env
        for k in env:
            if OURS.match(k) and k not in known:
                problems.append(f"{name}: {k} is not a tollgate setting")
        shutdown = env.get("TOLLGATE_SHUTDOWN_TIMEOUT", default_shutdown)
        grace = service.get("stop_grace_period", "10s")
        if seconds(grace) <= seconds(shutdown):
            problems.append(f"{name}: stop_grace_period {grace} does not exceed TOLLGATE_SHUTDOWN_TIMEOUT {shutdown}: SIGKILL cuts requests in flight")
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
    else:
        check_balancer(compose, tollgates, problems)
    for p in problems:
        print(f"docker-compose.yml: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"docker-compose.yml: {checked} tollgate instance(s) pass check-config in production; every variable is a setting;")
    print("  each stops within its stop_grace_period; the balancer health-checks exactly them on /readyz from the one trusted address")


def dictionary_checked(what, env, known):
    for k in env:
        if OURS.match(k) and k not in known:
            print(f"{what}: {k} is not a tollgate setting", file=sys.stderr)
            sys.exit(1)
    return env


if __name__ == "__main__":
    main()
