#!/usr/bin/env python3
"""Checks that RUNBOOK.md names only what exists.

- Every `tollgate <command> …` in a code block or inline code is a real command: `tollgate <command>
  --help` succeeds (a command with subcommands needs one), and every `--flag` written after it is in
  that help text.
- Every metric name (in the alert rules' expressions and in `tollgate_…` inline code) is one
  src/meters.rs exports (histogram suffixes allowed).

    python3 .ci/runbook_check.py [--binary target/debug/tollgate]
"""
import argparse
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORD = re.compile(r"^[a-z][a-z-]*$")
STOP = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>&1"}


def command_lines(text):
    """Lines of fenced code blocks, and inline code spans starting with `tollgate `."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            out.append(line)
        else:
            out += re.findall(r"`(tollgate [^`]+)`", line)
    return out


def invocations(line):
    """(subcommand words, flags) of each `tollgate …` on a line."""
    line = re.sub(r"\s#.*$", "", line)
    try:
        tokens = shlex.split(line)
    except ValueError:
        tokens = line.split()
    found = []
    for i, tok in enumerate(tokens):
        if os.path.basename(tok.split("=")[-1]) != "tollgate" or i + 1 >= len(tokens):
            continue
        rest = tokens[i + 1 :]
        if not WORD.match(rest[0]) or rest[0] == "tollgate":
            continue
        words = []
        for t in rest:
            if not WORD.match(t):
                break
            words.append(t)
        flags = []
        for t in rest:
            if t in STOP:
                break
            if t.startswith("--"):
                flags.append(t.split("=")[0])
        found.append((words, flags))
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/debug/tollgate"))
    args = parser.parse_args()
    # Absolute: the binary runs with another working directory (a temporary one).
    args.binary = os.path.abspath(args.binary)
    text = open(os.path.join(ROOT, "RUNBOOK.md")).read()
    problems, seen = [], set()
    for line in command_lines(text):
        for words, flags in invocations(line):
            # The longest prefix of the words that is a command.
            best = None
            for n in range(len(words), 0, -1):
                out = subprocess.run([args.binary, *words[:n], "--help"], capture_output=True, text=True)
                if out.returncode == 0:
                    best = (words[:n], out.stdout)
                    break
            if best is None:
                problems.append(f"`tollgate {' '.join(words)}` is not a tollgate command ({line.strip()})")
                continue
            path, help_text = best
            if re.search(r"^Commands:", help_text, re.M):
                problems.append(f"`tollgate {' '.join(path)}` needs a subcommand ({line.strip()})")
            for flag in flags:
                if not re.search(re.escape(flag) + r"\b", help_text):
                    problems.append(f"`tollgate {' '.join(path)}` has no {flag} ({line.strip()})")
            seen.add(" ".join(path))
    meters = open(os.path.join(ROOT, "src/meters.rs")).read()
    exported = set(re.findall(r'pub const \w+: &str = "(tollgate_[a-z_]+)"', meters))
    # Metric names: in the alert rules' expressions, and in inline code that starts with one.
    named = set()
    for line in text.splitlines():
        if re.match(r"\s*(expr:|-? ?alert:|and |or )", line) or line.startswith("          "):
            named |= set(re.findall(r"\btollgate_[a-z_]+", line))
        named |= set(re.findall(r"`(tollgate_[a-z_]+)", line))
    for name in sorted(named):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base not in exported and name not in exported:
            problems.append(f"metric {name} is not exported by src/meters.rs")
    for p in problems:
        print(f"RUNBOOK.md: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"RUNBOOK.md: {len(seen)} tollgate commands exist with the flags used; every metric named is exported")
    print("  " + ", ".join(sorted(seen)))


if __name__ == "__main__":
    main()
