"""Schemathesis fuzzes every operation of the OpenAPI schema: boundary and generated input, valid and
invalid; no 5xx, no hangs, answers match the documented schemas.

Schema-valid input may still be refused (a snapshot's columns must be the detector's
features and its edges must name its nodes, which JSON Schema cannot say), so the
"valid data is accepted" check is left out; every other default check runs.
"""

from __future__ import annotations

import pytest

from x0tta6bl4.serve.fuzz import fuzz_gateway

pytestmark = pytest.mark.ray


def test_every_operation_survives_boundary_and_generated_input(deployed) -> None:  # type: ignore[no-untyped-def]
    report = fuzz_gateway(deployed.base, max_examples=10, max_boundary_cases=40, seed=24, budget_s=50)
    assert report.requests >= 7 * 20, report.as_dict()
    assert (report.status_5xx, report.hangs) == (0, 0), report.failures
    assert report.check_failures == 0, report.failures
