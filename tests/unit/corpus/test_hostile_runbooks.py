"""Runbook text comes from HTTP requests: parsing it takes time linear in its size, whatever it holds."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.corpus import RunbookError, parse_runbook
from x0tta6bl4.corpus.runbooks import (
    _FRONT_RE,
    _ITEM_RE,
    MAX_FRONT_MATTER_CHARS,
    _heading,
    _sections,
    chunk_text,
)

#: The heading pattern parse_runbook used before: the reference for short lines only (it backtracks
#: cubically: one line of 2,000 spaces took seconds).
_OLD_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")

FRONT = """---
id: demo
title: Demo runbook
fault_type: congestion
action: rate_limit
preconditions: [ingress identified]
severity: high
tags: [demo]
---
"""


def _timed(fn: object, *args: object) -> float:
    start = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - start


@given(st.text(alphabet="# \t\u00a0\u2003ab#", max_size=24))
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_headings_are_parsed_as_the_old_pattern_did(line: str) -> None:
    m = _OLD_HEADING_RE.match(line)
    assert _heading(line) == (m.group(2) if m else None)


@pytest.mark.parametrize("spaces", [2_000, 100_000])
def test_a_line_of_spaces_in_a_heading_is_parsed_in_linear_time(spaces: int) -> None:
    body = "\n".join(
        [
            "# a" + " " * spaces + "b",  # the cubic case of the old pattern
            "#" + " " * spaces,
            " " * spaces,
            "#" * spaces + " x",
            "1" * spaces + "x",  # a list-item prefix that never ends
            "Some text.",
        ]
    )
    assert _timed(chunk_text, "Demo", body, 120, 20) < 1.0
    doc = FRONT + body
    assert _timed(parse_runbook, doc) < 1.0
    headings = [heading for heading, _ in _sections(body)]
    assert [len(h) for h in headings] == [0, spaces + 2, 0]  # "", "a  ...  b", "" (as before)
    assert _timed(parse_runbook(doc).summary) < 1.0


@pytest.mark.parametrize(
    "text",
    [
        "---\n" + "\n---" + " \t" * 100_000 + "x",  # a closing line that never ends
        "---\n" + "\n--- \t x" * 30_000,  # many almost-closing lines
        "---" + " \t" * 100_000,  # an opening line that never ends
        "---\r\n" + "\r\n---\r" * 50_000,
        "---\n" + "a: b\n" * 40_000,  # no closing line at all
    ],
)
def test_the_front_matter_pattern_is_linear_on_hostile_text(text: str) -> None:
    assert _timed(_FRONT_RE.match, text) < 1.0
    start = time.perf_counter()
    with pytest.raises(RunbookError):
        parse_runbook(text)
    assert time.perf_counter() - start < 1.0


def test_list_items_pattern_is_linear() -> None:
    for text in ("1" * 200_000 + "x", " " * 200_000, "   " + "9" * 200_000 + ")"):
        assert _timed(_ITEM_RE.match, text) < 0.5


def test_front_matter_is_bounded_before_yaml_parses_it() -> None:
    big = FRONT.replace("tags: [demo]", "tags: [" + ", ".join(["demo"] * MAX_FRONT_MATTER_CHARS) + "]")
    start = time.perf_counter()
    with pytest.raises(RunbookError, match="front matter has"):
        parse_runbook(big + "## Summary\n\nText.\n")
    assert time.perf_counter() - start < 0.5
