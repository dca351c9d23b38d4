#!/usr/bin/env python3
"""Fails when the files under src/ import each other in a cycle, or a layer imports one it must
not (ARCHITECTURE.md: the pure domain files import no store/, http/, stripe/; store/ imports no
domain service, http/ or stripe/; stripe/ no store/ or http/; http/ never app.rs; config/ and
ratelimit/ only themselves).

A file depends on another when it names an item of that file's module: `use crate::a::b::…`,
`crate::…`/`$crate::…` paths in code (macro bodies count for the file that defines the macro),
`super::…` and `self::…`, with `use` trees (`crate::store::{ledger::X, Y}`) expanded. Comments and
string literals are ignored; `mod x;` declarations are not dependencies. A path is charged to the
deepest module file it names (`crate::store::ledger::EventRow` -> src/store/ledger.rs; a name
re-exported by src/store/mod.rs is charged to mod.rs, whose `pub use` is in turn an import).

    python3 .ci/acyclic.py            # prints the cycles and layer breaches, exits 1 if there is any
    python3 .ci/acyclic.py --graph    # also prints every file's dependencies
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip(text):
    """Removes comments, string and char literals (keeping line structure irrelevant)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not re.match(r"[A-Za-z0-9_]", text[i - 1])):
            m = re.match(r'r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + len(m.group(0)))
            i = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:]):
            i += len(re.match(r"'(\\.[^']*|[^\\'])'", text[i:]).group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def module_of(path):
    """src/a/b.rs -> ['a', 'b']; src/a/mod.rs -> ['a']; src/lib.rs -> []."""
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return rel


def file_of(mod):
    """The file defining module `mod`, or None."""
    if not mod:
        return os.path.join(ROOT, "lib.rs")
    for cand in (os.path.join(ROOT, *mod) + ".rs", os.path.join(ROOT, *mod, "mod.rs")):
        if os.path.exists(cand):
            return cand
    return None


def resolve(segments, current, inline=0):
    """The deepest module file a path names, or None for paths outside the crate. `inline` is how
    many inline `mod x { … }` blocks of the file the path sits in: their `super` is the file."""
    if not segments:
        return None
    head, rest = segments[0], segments[1:]
    if head in ("super", "self") and inline:
        while rest and rest[0] == "super" and inline > 1:
            inline, rest = inline - 1, rest[1:]
        if not rest or rest[0] != "super":
            return None
        head, rest = rest[0], rest[1:]
    if head in ("crate", "$crate"):
        base = []
    elif head == "super":
        base = current[:-1]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    elif head == "self":
        base = current
    elif file_of(current + [head]):
        # A child module named without `self::` (2018 paths: `use ledger::X` in store/mod.rs).
        base, rest = current, segments
    else:
        return None
    mod = list(base)
    for seg in rest:
        if file_of(mod + [seg]):
            mod.append(seg)
        else:
            break
    return file_of(mod)


def use_paths(tree, prefix):
    """Expands a use tree (`a::{b::C, d}`) into full segment lists."""
    tree = tree.strip()
    depth, split = 0, None
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0 and split is None:
                split = i
            depth += 1
        elif ch == "}":
            depth -= 1
    if split is None:
        segs = [s.strip() for s in tree.split("::") if s.strip()]
        segs = [s.split(" as ")[0].strip() for s in segs]
        return [prefix + [s for s in segs if s not in ("*",)]]
    head = [s.strip() for s in tree[:split].split("::") if s.strip()]
    inner = tree[split + 1 : tree.rfind("}")]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    out = []
    for p in parts:
        if p.strip() in ("", "self"):
            out.append(prefix + head)
        elif p.strip():
            out.extend(use_paths(p, prefix + head))
    return out


def inline_modules(text):
    """(start, end) of every inline `mod x { … }` block."""
    spans = []
    for m in re.finditer(r"\bmod\s+" + IDENT + r"\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        spans.append((m.start(), i))
    return spans


def dependencies(path):
    text = strip(open(path, encoding="utf-8").read())
    current = module_of(path)
    spans = inline_modules(text)
    depth_at = lambda pos: sum(1 for a, b in spans if a <= pos < b)
    deps = set()
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        for segs in use_paths(m.group(1), []):
            f = resolve(segs, current, depth_at(m.start()))
            if f:
                deps.add(f)
    for m in re.finditer(r"(?<![A-Za-z0-9_:$])(\$crate|" + IDENT + r")((?:::" + IDENT + r")+)", text):
        segs = [m.group(1)] + [s for s in m.group(2).split("::") if s]
        f = resolve(segs, current, depth_at(m.start()))
        if f:
            deps.add(f)
    deps.discard(path)
    # A module's own parent declaring it (`mod x;`) is not a dependency; a child naming `super`
    # (its parent module) is.
    return deps


def cycles(graph):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


PURE_DOMAIN = ["domain/mod.rs", "domain/account.rs", "domain/password.rs", "domain/jwt.rs", "domain/crypto.rs",
               "domain/catalog.rs", "domain/orders.rs", "domain/ledger.rs", "domain/apikeys.rs", "domain/licence.rs"]
SERVICES = ["domain/auth.rs", "domain/payments.rs", "domain/keys.rs", "domain/licensing.rs"]
PURE_DOMAIN += ["domain/credits.rs"]
PURE_DOMAIN += ["domain/notifications.rs"]

# (files the rule is about, what they must not import), as paths under src/ (a trailing / is a folder).
RULES = [
    (PURE_DOMAIN, ["store/", "http/", "stripe/", "nowpayments/", "app.rs", "config/", "ratelimit/"] + SERVICES),
    (["store/"], ["http/", "stripe/", "nowpayments/", "app.rs", "ratelimit/"] + SERVICES),
    (["stripe/"], ["store/", "http/", "app.rs"] + SERVICES),
    (["nowpayments/"], ["store/", "http/", "app.rs"] + SERVICES),
    (["http/"], ["app.rs"]),
    (["config/"], ["domain/", "store/", "http/", "stripe/", "app.rs", "ratelimit/"]),
    (["ratelimit/"], ["domain/", "store/", "http/", "stripe/", "app.rs", "config/"]),
]


def under(rel, patterns):
    return any(rel.startswith(p) if p.endswith("/") else rel == p for p in patterns)


def breaches(graph):
    out = []
    rel = lambda f: os.path.relpath(f, ROOT)
    for f, deps in graph.items():
        for about, forbidden in RULES:
            if not under(rel(f), about):
                continue
            for d in sorted(deps):
                if under(rel(d), forbidden) and not under(rel(d), about):
                    out.append(f"src/{rel(f)} must not import src/{rel(d)}")
    return out


def main():
    files = []
    for d, _, names in os.walk(ROOT):
        files += [os.path.join(d, n) for n in names if n.endswith(".rs")]
    graph = {f: dependencies(f) for f in sorted(files)}
    rel = lambda f: os.path.relpath(f, os.path.dirname(ROOT))
    if "--graph" in sys.argv:
        for f, ds in graph.items():
            print(f"{rel(f)} -> {', '.join(sorted(rel(d) for d in ds))}")
    found = cycles(graph)
    for comp in found:
        members = set(comp)
        print(f"cycle among {len(comp)} files:")
        for f in comp:
            inside = sorted(rel(d) for d in graph[f] if d in members)
            print(f"  {rel(f)} -> {', '.join(inside)}")
    wrong = breaches(graph)
    for line in wrong:
        print(line)
    if found or wrong:
        sys.exit(1)
    print(f"no import cycles among {len(files)} files, and every layer imports only what it may")


if __name__ == "__main__":
    main()
