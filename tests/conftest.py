"""Settings every test shares: models load from the packaged files only, never from a hub; tiers by marker."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that gets the session's Ray, directly or through another fixture, is a Ray test
    # whatever its module says, so `make test-fast` (-m "not ray ...") never starts Ray.
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ebpf_host() -> None:
    """Skip (saying why and how to fix it) when this host refuses eBPF; the tests need it to run."""
    from x0tta6bl4.telemetry.source import ebpf_blockers

    blockers = ebpf_blockers()
    if blockers:
        reasons = "; ".join(f"[{b.check}] {b.reason} (fix: {b.fix})" for b in blockers)
        pytest.skip(f"this host refuses eBPF: {reasons}")


@pytest.fixture
def prometheus_client_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Metrics recorded in this test go to the prometheus-client registry, where the test reads them.

    The suite's pytest process joins the session's Ray for the integration tests and stays
    connected: a metric recorded afterwards would take Ray's pipeline (exported by the node's
    agent), not the registry these tests read back.
    """
    from x0tta6bl4.observability import metrics

    monkeypatch.setattr(metrics, "_ray_connected", lambda: False)
