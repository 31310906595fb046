"""OpenTelemetry tracing: one TracerProvider per process from the standard ``OTEL_*`` variables, W3C carriers.

Tracing is off unless ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``); then
:func:`setup_tracing`, called by every component when it starts (driver, actors, Serve replicas),
installs a provider whose resource names the component (and its SPIFFE ID when known). Off,
:func:`span` returns one shared do-nothing context manager: the hot paths pay a function call.

Trace context crosses process boundaries explicitly, as a plain ``dict`` carrier holding the W3C
``traceparent`` (and ``tracestate``) fields: passed as an argument or field on Ray actor calls and
Serve handle calls, and as HTTP headers (the gateway's FastAPI instrumentation reads them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

#: Instrumentation scope of every platform span.
TRACER_NAME = "x0tta6bl4"
#: Exporters ``OTEL_TRACES_EXPORTER`` may name (comma-separated); anything else is ignored with a warning.
EXPORTERS = ("otlp", "console", "none")
#: Resource attribute naming the platform component (``driver``, ``controller``, ``anomaly`` ...).
COMPONENT_ATTRIBUTE = "x0tta6bl4.component"
#: Resource attribute carrying the workload's SPIFFE ID, when the component knows it.
SPIFFE_ATTRIBUTE = "spiffe.id"

Carrier = dict[str, str]

_PROPAGATOR = TraceContextTextMapPropagator()
_lock = threading.Lock()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_component: str | None = None


class _Off(contextlib.AbstractContextManager[trace.Span]):
    """What :func:`span` returns while tracing is off: yields the invalid span, does nothing."""

    def __enter__(self) -> trace.Span:
        return trace.INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_OFF = _Off()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def exporters_from_env(env: Mapping[str, str] | None = None) -> list[str]:
    """The exporters the environment asks for: ``OTEL_TRACES_EXPORTER`` minus ``none``; [] when disabled."""
    env = os.environ if env is None else env
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        log.warning("OTEL_TRACES_EXPORTER: ignoring %s (known: %s)", ", ".join(unknown), ", ".join(EXPORTERS))
    return [n for n in names if n in ("otlp", "console")]


def setup_tracing(
    component: str,
    spiffe_id: str | None = None,
    exporter: SpanExporter | None = None,
) -> bool:
    """Install this process's TracerProvider once (later calls return at once); True when spans are recorded.

    Args:
        component: what this process is (``driver``, ``controller``, ``mesh-shard``, ``anomaly`` ...):
            the resource's ``x0tta6bl4.component`` and, unless ``OTEL_SERVICE_NAME`` is set, its
            ``service.name`` (``x0tta6bl4-<component>``).
        spiffe_id: the workload's SPIFFE ID, recorded as the ``spiffe.id`` resource attribute.
        exporter: export to this exporter synchronously instead of what the environment names
            (tests: the SDK's in-memory exporter). Still off when ``OTEL_SDK_DISABLED`` is true.
    """
    global _provider, _tracer, _component
    if _provider is not None:
        return True
    with _lock:
        if _provider is not None:
            return True
        names = exporters_from_env()
        if exporter is None and not names:
            return False
        if exporter is not None and _truthy(os.environ.get("OTEL_SDK_DISABLED")):
            return False
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        attributes: dict[str, Any] = {
            SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or f"x0tta6bl4-{component}",
            "service.namespace": "x0tta6bl4",
            COMPONENT_ATTRIBUTE: component,
            "process.pid": os.getpid(),
        }
        if spiffe_id:
            attributes[SPIFFE_ATTRIBUTE] = spiffe_id
        provider = TracerProvider(resource=Resource.create(attributes))
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        for name in names if exporter is None else []:
            provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
        _provider, _component = provider, component
        _tracer = provider.get_tracer(TRACER_NAME)
        return True


def _exporter(name: str) -> SpanExporter:
    """The exporter ``name`` stands for, configured by its own ``OTEL_EXPORTER_*`` variables."""
    if name == "otlp":  # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    import sys

    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter(out=sys.stdout)  # stdout as it is now (Ray workers: their log file)


def enabled() -> bool:
    """True once this process records spans."""
    return _tracer is not None


def provider() -> TracerProvider | None:
    """This process's provider (None while tracing is off): for instrumentations that take one."""
    return _provider


def flush(timeout_s: float = 5.0) -> bool:
    """Export every finished span now (before an actor is killed or a process exits); True when done."""
    return _provider.force_flush(int(timeout_s * 1000)) if _provider is not None else True


def shutdown_tracing() -> None:
    """Flush and remove this process's provider; tracing is off until :func:`setup_tracing` runs again."""
    global _provider, _tracer, _component
    with _lock:
        if _provider is not None:
            _provider.shutdown()
        _provider = _tracer = _component = None


def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    parent: Mapping[str, str] | None = None,
    links: Sequence[Mapping[str, str] | None] = (),
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
) -> contextlib.AbstractContextManager[trace.Span]:
    """A span around a block, current inside it (a shared no-op while tracing is off).

    Args:
        name: the span's name (one per phase, tick, batch or request; never one per node).
        attributes: its attributes.
        parent: a carrier whose context becomes the parent (instead of the current span).
        links: carriers of spans this one is linked to (e.g. the requests one batch served).
    """
    tracer = _tracer
    if tracer is None:
        return _OFF
    context = extract(parent) if parent else None
    span_links = [trace.Link(c) for c in (_span_context(carrier) for carrier in links) if c is not None]
    return tracer.start_as_current_span(
        name, context=context, kind=kind, attributes=dict(attributes or {}), links=span_links
    )


def start_span(name: str, attributes: Mapping[str, Any] | None = None) -> trace.Span:
    """A child of the current span, not made current, that the caller ends (off: the invalid span)."""
    tracer = _tracer
    if tracer is None:
        return trace.INVALID_SPAN
    return tracer.start_span(name, attributes=dict(attributes or {}))


def inject(carrier: Carrier | None = None) -> Carrier:
    """The current span's W3C context written into ``carrier`` (a new dict by default); {} while off."""
    carrier = {} if carrier is None else carrier
    if _tracer is not None:
        _PROPAGATOR.inject(carrier)
    return carrier


def carrier_of(span: trace.Span) -> Carrier | None:
    """A span's context as a new carrier, current or not; None for the invalid span (tracing off)."""
    if not span.get_span_context().is_valid:
        return None
    carrier: Carrier = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def current_carrier() -> Carrier | None:
    """The current span's context as a new carrier, or None (tracing off, or no span is current)."""
    if _tracer is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    return inject()


def extract(carrier: Mapping[str, str] | None) -> otel_context.Context | None:
    """The context a carrier (or HTTP headers) holds, as a parent for new spans; None when it holds none."""
    if not carrier:
        return None
    ctx = _PROPAGATOR.extract(carrier)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def _span_context(carrier: Mapping[str, str] | None) -> trace.SpanContext | None:
    ctx = extract(carrier)
    return trace.get_current_span(ctx).get_span_context() if ctx is not None else None


@contextlib.contextmanager
def attached(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Make a carrier's context current for a block (spans started inside become its children)."""
    ctx = extract(carrier) if _tracer is not None else None
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def otel_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``OTEL_*`` variables of this process: what a worker needs to trace like its driver."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if k.startswith("OTEL_")}


def instrument_fastapi(app: Any, excluded_urls: str = "healthz") -> bool:
    """Server spans for every request of a FastAPI ``app``, parented by the caller's ``traceparent`` header.

    Needs this process's provider (call :func:`setup_tracing` first); does nothing while tracing is
    off or when ``app`` is already instrumented. True when the app is instrumented now.
    """
    if _provider is None or getattr(app, "_is_instrumented_by_opentelemetry", False):
        return False
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=_provider, excluded_urls=excluded_urls, exclude_spans=["receive", "send"]
    )
    if getattr(app, "middleware_stack", None) is not None:  # built already: rebuilt on the next call
        app.middleware_stack = None
    return True
