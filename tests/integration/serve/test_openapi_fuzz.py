"""Schemathesis fuzzes every operation of the OpenAPI schema: no 5xx, answers match the documented schemas.

Schema-valid input may still be refused (a snapshot's columns must be the detector's
features and its edges must name its nodes, which JSON Schema cannot say), so the
"valid data is accepted" check is left out; every other default check runs.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

pytestmark = pytest.mark.ray


def test_every_operation_survives_generated_input(deployed) -> None:  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_url(f"{deployed.base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(timeout=60, excluded_checks=[positive_data_acceptance])

        fuzz()
