#!/usr/bin/env python3
"""The bandit step of ``make lint``: high-severity findings fail it unless allow-listed with a reason.

Runs bandit (pinned in requirements/lock.txt) in two passes, with ``--ignore-nosec`` so that an inline
``# nosec`` cannot hide a finding from the allow-list review:

* ``platform jobs`` -- every test;
* ``tests`` -- without B101 (assert: it is how pytest checks) and the subprocess tests B404/B603/B607
  (tests start the CLI and tools with fixed argument lists by design).

High severity (any confidence) fails unless ``.bandit-allowlist.toml`` has an entry for it, naming the
bandit test id, the file and why it is safe. Every entry must still match a finding (a stale entry fails
too, so the list only holds what is reviewed and current). Medium and low findings are reported (each
medium on one line, lows as counts per test id; ``--verbose`` lists them all) and do not fail.

Usage: ``.venv/bin/python scripts/bandit_gate.py [--verbose]`` (about 5 s).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ALLOWLIST = ROOT / ".bandit-allowlist.toml"
PASSES: list[tuple[list[str], list[str]]] = [
    (["platform", "jobs"], []),
    (["tests"], ["B101", "B404", "B603", "B607"]),
]
REQUIRED = ("test", "file", "reason", "reviewed")
Entry = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Finding:
    test: str
    file: str
    line: int
    severity: str
    confidence: str
    text: str
    code: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.test} [{self.severity}/{self.confidence}] {self.text}"


def run_bandit(paths: list[str], skips: list[str]) -> list[Finding]:
    bandit = Path(sys.executable).parent / "bandit"
    command = [str(bandit), "-r", *paths, "-f", "json", "-q", "--ignore-nosec"]
    if skips:
        command += ["--skip", ",".join(skips)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # 1 = findings
        sys.exit(f"bandit failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    if report.get("errors"):
        sys.exit(f"bandit could not scan: {report['errors']}")
    return [
        Finding(
            r["test_id"],
            r["filename"].removeprefix("./"),
            r["line_number"],
            r["issue_severity"],
            r["issue_confidence"],
            r["issue_text"],
            r.get("code", ""),
        )
        for r in report["results"]
    ]


def load_allowlist(path: Path) -> list[Entry]:
    """The ``[[allow]]`` entries; each must name test, file, reason and reviewed (all non-empty)."""
    if not path.exists():
        return []
    entries: list[Entry] = tomllib.loads(path.read_text()).get("allow", [])
    for entry in entries:
        missing = [k for k in REQUIRED if not str(entry.get(k, "")).strip()]
        if missing:
            sys.exit(f"{path.name}: entry {entry} lacks {', '.join(missing)}")
    return entries


def allows(entry: Entry, finding: Finding) -> bool:
    """An entry covers a finding of its test in its file (and, if it gives ``code``, on that code)."""
    return (
        entry["test"] == finding.test
        and entry["file"] == finding.file
        and str(entry.get("code", "")) in finding.code
    )


def gate(findings: list[Finding], entries: list[Entry]) -> tuple[list[Finding], list[Entry]]:
    """(high findings no entry covers, entries that cover no finding)."""
    high = [f for f in findings if f.severity == "HIGH"]
    unexplained = [f for f in high if not any(allows(e, f) for e in entries)]
    stale = [e for e in entries if not any(allows(e, f) for f in high)]
    return unexplained, stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="list every medium and low finding")
    args = parser.parse_args()

    findings = [f for paths, skips in PASSES for f in run_bandit(paths, skips)]
    entries = load_allowlist(ALLOWLIST)
    unexplained, stale = gate(findings, entries)
    counts = collections.Counter(f.severity for f in findings)
    low = collections.Counter(f.test for f in findings if f.severity == "LOW")

    for f in findings:
        if f.severity == "MEDIUM" or (f.severity == "LOW" and args.verbose):
            print(f"bandit: {f}")
    if low and not args.verbose:
        print("bandit: low (reported, not failing): " + ", ".join(f"{t}x{n}" for t, n in sorted(low.items())))
    allowed = counts["HIGH"] - len(unexplained)
    print(
        f"bandit: {counts['HIGH']} high ({allowed} allow-listed), {counts['MEDIUM']} medium, "
        f"{counts['LOW']} low"
    )
    for f in unexplained:
        print(f"bandit: HIGH, not in {ALLOWLIST.name}: {f}\n    {f.code.strip()}", file=sys.stderr)
    for e in stale:
        print(f"bandit: stale {ALLOWLIST.name} entry (matches no finding): {e}", file=sys.stderr)
    return 1 if unexplained or stale else 0


if __name__ == "__main__":
    sys.exit(main())
