"""Query expansion: the telemetry values an incident text quotes, read out in the runbooks' words.

Alerts and metric dumps say ``cpu_util 1.00``, ``mem 0.93`` or ``loss_ratio 1.0`` where the
runbooks say "pinned", "swapping" or "everything lost"; neither BM25 nor MiniLM relates the
number to the word. :func:`expand_query` appends those readings (thresholds of the
:data:`~x0tta6bl4.telemetry.frame.FEATURES` the runbooks are written around) to the text that
is embedded and scored. Queries come from HTTP requests, so every pattern runs on
whitespace-collapsed text in time linear in its length.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_NUM = r"(\d{1,6}(?:\.\d{1,6})?)"
_CHAIN = rf"{_NUM} ?(%?)(?: ?(?:->|→|to) ?{_NUM} ?(%?))?"  # "0.44 -> 0.81": the later value counts
_LINK = r"(?: ?(?:[=:~]|at|is|of|now|was))* ?"  # "cpu=1.0", "memory is at 95%"


def _fraction(number: str, percent: str) -> float:
    """A utilisation or ratio as a fraction: ``"93", "%"`` and ``"93", ""`` are 0.93, ``"0.93"`` too."""
    value = float(number)
    return value / 100.0 if percent or value > 1.5 else value


def _metric(names: str) -> re.Pattern[str]:
    return re.compile(rf"\b(?:{names})\b{_LINK}{_CHAIN}|\b{_NUM} ?% (?:{names})\b")


_CPU = _metric(r"cpu_util|cpu|processor")
_MEM = _metric(r"mem_util|mem|memory|ram")
_LOSS = _metric(r"loss_ratio|loss")
_QUEUE = re.compile(rf"\bqueue(?:_depth_pkts|_depth| depth)?{_LINK}(\d{{1,4}})(?: ?/ ?(\d{{1,4}}))?")
_TIMEOUT = re.compile(r"\b3000 ?ms\b|\b(?:latency\w*|lat\w*|rtt)(?: ?[=:])? ?3000\b")
_MULTIPLE = re.compile(rf"\b{_NUM} ?(?:x|times)\b|\bx ?{_NUM}\b")


def _values(pattern: re.Pattern[str], text: str) -> list[float]:
    """Every value ``pattern`` quotes in ``text``, as a fraction (the last of an ``a -> b`` chain)."""
    out = []
    for m in pattern.finditer(text):
        first, first_pct, later, later_pct, before = m.groups()
        if before is not None:
            out.append(_fraction(before, "%"))
        elif later is not None:
            out.append(_fraction(later, later_pct))
        else:
            out.append(_fraction(first, first_pct))
    return out


def _loss(value: float) -> str | None:
    if value >= 0.95:
        return "loss 1.0, everything lost"
    return "partial packet loss" if value >= 0.1 else None


_READINGS: tuple[tuple[re.Pattern[str], Callable[[float], str | None]], ...] = (
    (_CPU, lambda v: "CPU pinned at 1.0" if v >= 0.95 else None),
    (_MEM, lambda v: "memory near full, swapping" if v >= 0.85 else None),
    (_LOSS, _loss),
)


def telemetry_readings(text: str) -> list[str]:
    """Plain-language readings of the telemetry values quoted in ``text``, without repeats.

    ``cpu 1.0`` reads "CPU pinned at 1.0"; ``mem 0.93`` "memory near full, swapping"; a loss
    of 0.95 or more "loss 1.0, everything lost", of 0.1 or more "partial packet loss";
    ``3000 ms`` "latency at the 3000 ms timeout"; a queue of 80 packets or a full ``n/n`` one
    "queue full"; ``8x`` or ``x8`` (3 or more) "a multiple of normal". Percentages count
    as fractions (``93%`` is 0.93).
    """
    t = " ".join(text.lower().split())
    out: list[str] = []
    for pattern, read in _READINGS:
        out.extend(r for v in _values(pattern, t) if (r := read(v)) is not None)
    if _TIMEOUT.search(t):
        out.append("latency at the 3000 ms timeout")
    for m in _QUEUE.finditer(t):
        depth, limit = int(m.group(1)), m.group(2)
        if depth >= 80 or (limit is not None and depth == int(limit) > 0):
            out.append("queue full")
    if any(float(m.group(1) or m.group(2)) >= 3 for m in _MULTIPLE.finditer(t)):
        out.append("a multiple of normal")
    return list(dict.fromkeys(out))


def expand_query(text: str) -> str:
    """``text`` followed by its :func:`telemetry_readings` in parentheses (unchanged without any)."""
    readings = telemetry_readings(text)
    return f"{text} ({'; '.join(readings)})" if readings else text
