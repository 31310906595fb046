"""Unit tests run without Ray, even after the suite's integration tests connected this process to it."""

import pytest


@pytest.fixture(autouse=True)
def _metrics_outside_ray(prometheus_client_pipeline: None) -> None:
    """Every unit test reads its metrics from the prometheus-client registry (see the fixture)."""
