"""Tracing set-up and W3C context carriers, recorded by the SDK's in-memory exporter."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from x0tta6bl4.observability import tracing


@pytest.fixture
def spans(monkeypatch):
    """Tracing on in this process, exported to memory; off again afterwards."""
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    tracing.shutdown_tracing()
    exporter = InMemorySpanExporter()
    assert tracing.setup_tracing("test", spiffe_id="spiffe://x0tta6bl4.mesh/test", exporter=exporter)
    yield exporter
    tracing.shutdown_tracing()


def _by_name(exporter):
    return {s.name: s for s in exporter.get_finished_spans()}


def test_tracing_is_off_by_default_and_costs_a_shared_no_op(monkeypatch):
    tracing.shutdown_tracing()
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert not tracing.setup_tracing("test")
    assert not tracing.enabled()
    first, second = tracing.span("a"), tracing.span("b", {"k": 1})
    assert first is second  # nothing is allocated per call
    with first as span:
        assert not span.is_recording()
        assert tracing.inject() == {}
        assert tracing.current_carrier() is None
    assert tracing.flush()


def test_exporters_follow_the_standard_variables():
    assert tracing.exporters_from_env({}) == []
    assert tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "otlp"}) == ["otlp"]
    assert tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "console, otlp"}) == ["console", "otlp"]
    assert tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "jaeger"}) == []
    disabled = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}
    assert tracing.exporters_from_env(disabled) == []
    assert tracing.otel_env({"OTEL_A": "1", "PATH": "/bin"}) == {"OTEL_A": "1"}


def test_sdk_disabled_wins_over_an_explicit_exporter(monkeypatch):
    tracing.shutdown_tracing()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.setup_tracing("test", exporter=InMemorySpanExporter())
    assert not tracing.enabled()


def test_console_exporter_is_chosen_by_the_environment(monkeypatch, capfd):
    tracing.shutdown_tracing()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    try:
        assert tracing.setup_tracing("console-test")
        with tracing.span("printed.span", {"tick": 3}):
            pass
        assert tracing.flush()
    finally:
        tracing.shutdown_tracing()
    out = capfd.readouterr().out
    assert '"name": "printed.span"' in out and "x0tta6bl4-console-test" in out


def test_resource_names_the_component_and_its_spiffe_id(spans):
    with tracing.span("x"):
        pass
    resource = spans.get_finished_spans()[0].resource.attributes
    assert resource["service.name"] == "x0tta6bl4-test"
    assert resource["x0tta6bl4.component"] == "test"
    assert resource["spiffe.id"] == "spiffe://x0tta6bl4.mesh/test"


def test_setup_runs_once_per_process(spans):
    other = InMemorySpanExporter()
    assert tracing.setup_tracing("again", exporter=other)  # already set up: kept as it is
    with tracing.span("x"):
        pass
    assert len(spans.get_finished_spans()) == 1 and not other.get_finished_spans()


def test_nested_spans_are_parent_and_child_with_their_attributes(spans):
    with tracing.span("mapek.tick", {"tick": 7}) as tick, tracing.span("mapek.analyze"):
        assert tick.is_recording()
    got = _by_name(spans)
    assert got["mapek.analyze"].parent.span_id == got["mapek.tick"].context.span_id
    assert got["mapek.tick"].attributes["tick"] == 7


def test_context_round_trips_through_a_dict_carrier(spans):
    with tracing.span("sender"):
        carrier = tracing.current_carrier()
    assert carrier is not None and set(carrier) == {"traceparent"}
    assert carrier["traceparent"].startswith("00-")
    # Elsewhere (another process gets the same dict as an argument):
    with tracing.span("receiver", parent=carrier):
        pass
    with tracing.attached(carrier), tracing.span("attached.child"):
        pass
    got = _by_name(spans)
    sender = got["sender"].context
    for name in ("receiver", "attached.child"):
        assert got[name].context.trace_id == sender.trace_id
        assert got[name].parent.span_id == sender.span_id


def test_links_point_at_every_carrier_given(spans):
    carriers = []
    for i in range(3):
        with tracing.span(f"request.{i}"):
            carriers.append(tracing.inject())
    with tracing.span("batch", parent=carriers[0], links=[*carriers, None, {}]):
        pass
    got = _by_name(spans)
    linked = {link.context.span_id for link in got["batch"].links}
    assert linked == {got[f"request.{i}"].context.span_id for i in range(3)}
    assert got["batch"].parent.span_id == got["request.0"].context.span_id


def test_a_bad_carrier_starts_a_new_trace(spans):
    assert tracing.extract({"traceparent": "garbage"}) is None
    with tracing.span("orphan", parent={"traceparent": "garbage"}):
        pass
    assert _by_name(spans)["orphan"].parent is None


def test_traceparent_header_parents_the_fastapi_server_span(spans):
    app = FastAPI()

    @app.get("/v1/thing")
    def thing() -> dict[str, str]:
        with tracing.span("inside.handler"):
            return tracing.inject()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {}

    assert tracing.instrument_fastapi(app)
    assert not tracing.instrument_fastapi(app)  # once
    with tracing.span("client") as client:
        headers = tracing.inject()
    # Another process would send them: outside this process's current span.
    answer = TestClient(app).get("/v1/thing", headers=headers).json()
    TestClient(app).get("/healthz", headers=headers)
    got = _by_name(spans)
    server = got["GET /v1/thing"]
    assert server.kind is trace.SpanKind.SERVER
    assert server.parent.span_id == client.get_span_context().span_id
    assert got["inside.handler"].parent.span_id == server.context.span_id
    assert answer["traceparent"].split("-")[1] == format(client.get_span_context().trace_id, "032x")
    assert not [s for s in spans.get_finished_spans() if "healthz" in s.name]
