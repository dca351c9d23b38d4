#!/usr/bin/env python3
"""SECURITY.md's table names, for each control, the tests that prove it (`path :: test_fn`).
Fails when a named file or test no longer exists, so a control cannot lose its proof silently.
Run from the repository root (CI does: .ci/run)."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF = re.compile(r"`((?:tests|src)/[\w/]+\.rs) :: (\w+)`")


def is_test(source: str, name: str) -> bool:
    """Whether `name` is a test function that runs: its attributes (the lines just above the
    `fn`) hold #[test] or #[tokio::test…] and no #[ignore]."""
    m = re.search(rf"^[ \t]*(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?fn {re.escape(name)}\s*[(<]", source, re.M)
    if not m:
        return False
    attributes = []
    for line in reversed(source[: m.start()].splitlines()):
        stripped = line.strip()
        if stripped.startswith("#[") or stripped.startswith("///") or stripped.startswith("//"):
            attributes.append(stripped)
            continue
        break
    has_test = any(re.match(r"#\[(tokio::)?test\b", a) for a in attributes)
    ignored = any(a.startswith("#[ignore") for a in attributes)
    return has_test and not ignored


def main() -> int:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    section = text.split("## Controls and the tests that prove them", 1)[-1].split("\n## ", 1)[0]
    # The controls table: its rows after the header and the separator line.
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    refs = [ref for row in rows for ref in REF.findall(row)]
    if not refs:
        print("SECURITY.md: no `file :: test` references found in the controls table", file=sys.stderr)
        return 1
    missing = []
    sources = {}
    for path, name in refs:
        if path not in sources:
            file = ROOT / path
            sources[path] = file.read_text(encoding="utf-8") if file.is_file() else None
        source = sources[path]
        if source is None:
            missing.append(f"{path} :: {name} (no such file)")
        elif not is_test(source, name):
            missing.append(f"{path} :: {name} (no such test, or not run: #[ignore], or not a #[test])")
    # A row whose proof cell names nothing would be a claim without a test.
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 2 or not REF.search(cells[-1]):
            missing.append(f"a row without a test: {cells[0][:80]}")
    if missing:
        print("SECURITY.md names tests that do not exist:", file=sys.stderr)
        for m in missing:
            print(f"  {m}", file=sys.stderr)
        return 1
    print(f"SECURITY.md: {len(refs)} tests named for {len(rows)} controls, all present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
