"""Fuzz a running gateway over HTTP from its own OpenAPI schema (schemathesis): counts 5xx answers and hangs.

Public (not under ``_private``) so that benchmarks may call it: the integration tests and
``x0tta6bl4 bench chaos`` (``fuzz_requests``, ``fuzz_5xx``,
``fuzz_max_latency_ms``). Every operation gets the schema's boundary cases (schemathesis'
coverage phase, valid and invalid) and then generated ones (valid and invalid), reproducibly
for a given seed. Schemathesis' response checks run on every answer; their failures are
reported, not raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import requests

#: Schemathesis checks left out: schema-valid snapshots are still refused (their columns must be
#: the detector's features and their edges must name their nodes, which JSON Schema cannot say).
_EXCLUDED_CHECKS = ("positive_data_acceptance",)


@dataclasses.dataclass
class FuzzReport:
    """What a fuzz run saw.

    Args:
        requests: requests sent (answered or not).
        status_5xx: answers with a 5xx status.
        hangs: requests with no answer within the per-request timeout.
        max_latency_ms: slowest answer (a hang counts as the timeout).
        check_failures: requests whose answer failed one of schemathesis' checks.
        failures: the first few problems, one line each (``METHOD path -> what``).
    """

    requests: int = 0
    status_5xx: int = 0
    hangs: int = 0
    max_latency_ms: float = 0.0
    check_failures: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, int | float]:
        """The counts, for benchmark reports."""
        return {
            "requests": self.requests,
            "status_5xx": self.status_5xx,
            "hangs": self.hangs,
            "max_latency_ms": round(self.max_latency_ms, 1),
            "check_failures": self.check_failures,
        }

    def _note(self, line: str, limit: int = 20) -> None:
        if len(self.failures) < limit:
            self.failures.append(line)


def fuzz_gateway(
    base_url: str,
    *,
    max_examples: int = 10,
    max_boundary_cases: int = 40,
    seed: int = 0,
    timeout_s: float = 10.0,
    budget_s: float = 60.0,
    operations: Sequence[str] | None = None,
    headers: dict[str, str] | None = None,
) -> FuzzReport:
    """Fuzz every operation of the gateway at ``base_url`` (its schema from ``/openapi.json``).

    Args:
        base_url: the gateway, e.g. ``http://127.0.0.1:8000``.
        max_examples: generated cases per operation and mode (valid, invalid).
        max_boundary_cases: boundary cases (schemathesis' coverage phase) per operation, at most.
        seed: the generation seed: the same seed and schema give the same requests.
        timeout_s: per-request timeout; no answer within it is a hang.
        budget_s: wall-clock budget for the whole run; operations left when it is spent are skipped.
        operations: only operations whose ``"METHOD /path"`` label is listed (default: all).
        headers: sent with every request (e.g. the front's identity headers).

    Returns:
        The counts; ``failures`` names the first problems.
    """
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as seeded
    from hypothesis.errors import Unsatisfiable
    from schemathesis.core.result import Err
    from schemathesis.generation.modes import GenerationMode

    # npz bodies are bytes: send what the binary schema generates as they are (not skipped).
    schemathesis.serializer.alias("application/x-npz", "application/octet-stream")
    schema = schemathesis.openapi.from_url(
        f"{base_url.rstrip('/')}/openapi.json", timeout=timeout_s, headers=dict(headers or {})
    )
    report = FuzzReport()
    deadline = time.monotonic() + budget_s
    session = requests.Session()
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    try:
        for result in schema.get_all_operations():
            if isinstance(result, Err):  # an operation whose schema cannot be fuzzed is a finding too
                report.check_failures += 1
                report._note(f"unusable operation schema: {result.err()}")
                continue
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            if operations is not None and label not in operations:
                continue
            config = schema.config.generation_for(operation=operation)
            boundary = schema.iter_coverage_cases(operation, generation_modes=modes, generation_config=config)
            for i, case in enumerate(boundary):
                if i >= max_boundary_cases or time.monotonic() > deadline:
                    break
                _send(case, base_url, session, headers, timeout_s, report, label)
            for mode in modes:

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=max_examples,
                    deadline=None,
                    database=None,
                    phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @seeded(seed)
                def run(case: Any) -> None:
                    if time.monotonic() <= deadline:
                        _send(case, base_url, session, headers, timeout_s, report, label)  # noqa: B023

                with contextlib.suppress(Unsatisfiable):  # nothing to make invalid (no input at all)
                    run()
    finally:
        session.close()
    return report


def _send(
    case: Any,
    base_url: str,
    session: requests.Session,
    headers: dict[str, str] | None,
    timeout_s: float,
    report: FuzzReport,
    label: str,
) -> None:
    """Send one case, time it, count its status and run schemathesis' checks on the answer."""
    from schemathesis.checks import CHECKS

    report.requests += 1
    start = time.perf_counter()
    try:
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=timeout_s)
    except requests.Timeout:
        report.hangs += 1
        report.max_latency_ms = max(report.max_latency_ms, timeout_s * 1000)
        report._note(f"{label} -> no answer within {timeout_s} s")
        return
    except requests.RequestException as exc:  # the connection broke: as bad as a 5xx
        report.status_5xx += 1
        report._note(f"{label} -> connection failed: {exc}")
        return
    report.max_latency_ms = max(report.max_latency_ms, (time.perf_counter() - start) * 1000)
    if response.status_code >= 500:
        report.status_5xx += 1
        report._note(f"{label} -> {response.status_code}: {response.content[:300]!r}")
    excluded = [check for check in CHECKS.get_all() if check.__name__ in _EXCLUDED_CHECKS]
    try:
        case.validate_response(response, excluded_checks=excluded, headers=headers)
    except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' failures, alone or grouped
        failures = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
        report.check_failures += 1
        titles = "; ".join(getattr(f, "title", type(f).__name__) for f in failures)
        sent = response.request
        body = sent.body if isinstance(sent.body, bytes) else str(sent.body or "").encode()
        report._note(f"{sent.method} {sent.url} {body[:200]!r} -> {response.status_code}, failed {titles}")
