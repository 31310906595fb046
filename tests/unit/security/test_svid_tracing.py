"""SVID issue and rotation are traced: one span each, named by what happened, with the workload's ID."""

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from x0tta6bl4.observability import tracing
from x0tta6bl4.security.ca import EmbeddedCA
from x0tta6bl4.security.source import EmbeddedSource


@pytest.fixture
def spans(monkeypatch):
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    tracing.shutdown_tracing()
    exporter = InMemorySpanExporter()
    assert tracing.setup_tracing("test", exporter=exporter)
    yield exporter
    tracing.shutdown_tracing()


def test_the_first_svid_and_each_rotation_are_spans_with_the_serial(spans, tmp_path):
    ca = EmbeddedCA.open(tmp_path / "ca", ca_ttl_s=6 * 3600)
    source = EmbeddedSource("spiffe://x0tta6bl4.local/workload", ca.directory, ttl_s=600)
    try:
        rotated = source.renew_now()
    finally:
        source.close()
    issued, rotation = (s for s in spans.get_finished_spans() if s.name.startswith("svid."))
    assert (issued.name, rotation.name) == ("svid.issue", "svid.rotate")
    assert rotation.attributes["spiffe.id"] == "spiffe://x0tta6bl4.local/workload"
    assert rotation.attributes["serial"] == f"{rotated.serial:x}"
