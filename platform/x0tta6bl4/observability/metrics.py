"""Every metric the platform exports, defined in one place: Ray metrics inside Ray, prometheus-client outside.

One catalogue (:data:`CATALOGUE`) names each metric once, with its type, labels and help. A
:class:`Metric` records through Ray's metrics pipeline (``ray.util.metrics``: exported as
``ray_<name>`` on every node's metrics endpoint and in the Ray dashboard) when this process is a
connected Ray driver or worker, and through this module's own prometheus-client registry
(:data:`REGISTRY`, served by :func:`serve_metrics`) otherwise: the mTLS front, the SuperLink side of
``x0tta6bl4 train --deployment``, the command line. Nothing here imports Ray unless Ray is already
imported, and recording never raises: metrics must not fail or slow the workload. Counters are
named without ``_total`` here; both pipelines export them with it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any, Literal

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]

#: Histogram buckets (seconds) for work of a millisecond to a few seconds.
SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
#: Histogram buckets (seconds) for federated rounds and other long steps.
LONG_SECONDS_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: Histogram buckets for batch sizes (items per batch).
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
#: Histogram buckets for durations counted in mesh ticks.
TICKS_BUCKETS = (1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 89.0, 144.0)


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One metric: its name as exported (counters without ``_total``), type, help, labels, buckets."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    domain: str = ""


def _specs(domain: str, *specs: tuple[Any, ...]) -> list[MetricSpec]:
    out = []
    for name, kind, help_, *rest in specs:
        labels = rest[0] if rest else ()
        buckets = rest[1] if len(rest) > 1 else ()
        out.append(MetricSpec(f"x0tta6bl4_{name}", kind, help_, tuple(labels), tuple(buckets), domain))
    return out


#: Every metric, by domain. Labels are bounded: never one value per node id.
CATALOGUE: dict[str, MetricSpec] = {
    s.name: s
    for s in [
        *_specs(
            "mesh",
            ("mesh_ticks", "counter", "Ticks simulated by a MeshShard.", ("region",)),
            (
                "mesh_step_seconds",
                "histogram",
                "Wall time of one MeshShard step.",
                ("region",),
                SECONDS_BUCKETS,
            ),
            (
                "mesh_faulty_nodes",
                "gauge",
                "Nodes with an active fault (simulation ground truth).",
                ("region",),
            ),
            ("mesh_serviceable_nodes", "gauge", "Nodes with a route and < 20 % loss.", ("region",)),
            ("mesh_restores", "counter", "MeshShard restarts that resumed from a checkpoint.", ("region",)),
            ("mesh_actions", "counter", "Remediation actions applied by a MeshShard.", ("region", "action")),
        ),
        *_specs(
            "telemetry",
            ("telemetry_polls", "counter", "Host telemetry polls, by source (ebpf, procfs).", ("source",)),
            ("telemetry_poll_failures", "counter", "Host telemetry polls that failed.", ("source",)),
            (
                "telemetry_poll_seconds",
                "histogram",
                "Wall time of one host telemetry poll (every program and procfs).",
                ("source",),
                SECONDS_BUCKETS,
            ),
            ("ebpf_programs_loaded", "gauge", "eBPF programs loaded and attached on this host."),
            ("ebpf_events", "counter", "Events an eBPF program recorded.", ("program",)),
            (
                "ebpf_lost_events",
                "counter",
                "Events an eBPF program lost (a full map, or the kernel's per-program misses).",
                ("program",),
            ),
            ("ebpf_read_errors", "counter", "Failed reads of an eBPF program's maps.", ("program",)),
            (
                "ebpf_read_seconds",
                "histogram",
                "Wall time of reading and clearing one program's maps.",
                ("program",),
                SECONDS_BUCKETS,
            ),
        ),
        *_specs(
            "detector",
            ("detector_batch_size", "histogram", "Snapshots scored in one detector pass.", (), BATCH_BUCKETS),
            (
                "detector_inference_seconds",
                "histogram",
                "Wall time of one detector pass (inputs, GraphSAGE, alarms).",
                (),
                SECONDS_BUCKETS,
            ),
            ("detector_nodes_scored", "counter", "Nodes scored by the served detector."),
            ("detector_alarms", "counter", "Node scores above their threshold in answers."),
            ("detector_model_loaded", "gauge", "1 while this replica has a model loaded and serves it."),
            ("detector_threshold_updates", "counter", "Threshold sets applied to the served detector."),
        ),
        *_specs(
            "federated",
            (
                "federated_rounds",
                "counter",
                "Federated rounds completed, by stage (train, evaluate).",
                ("stage",),
            ),
            (
                "federated_round_seconds",
                "histogram",
                "Wall time of one federated round, by stage and part (clients, aggregate).",
                ("stage", "part"),
                LONG_SECONDS_BUCKETS,
            ),
            (
                "federated_client_replies",
                "counter",
                "Client replies in federated rounds, by stage and outcome (replied, failed, rejected).",
                ("stage", "outcome"),
            ),
            ("federated_sent_bytes", "counter", "Model bytes the server sent to clients.", ("stage",)),
        ),
        *_specs(
            "rag",
            ("rag_queries", "counter", "Queries the retriever answered (cache hits included)."),
            (
                "rag_retrieval_seconds",
                "histogram",
                "Wall time of one retrieval batch (encode, search, rank).",
                (),
                SECONDS_BUCKETS,
            ),
            ("rag_batch_size", "histogram", "Queries retrieved in one batch.", (), BATCH_BUCKETS),
            (
                "rag_cache_lookups",
                "counter",
                "Cache lookups by tier (edge, exact, semantic) and result (hit, miss).",
                ("tier", "result"),
            ),
            ("rag_index_documents", "gauge", "Documents in the runbook index this replica serves."),
            ("rag_ingested_documents", "counter", "Documents added to the runbook index."),
        ),
        *_specs(
            "gateway",
            (
                "gateway_requests",
                "counter",
                "HTTP requests the gateway answered, by route and status code.",
                ("route", "code"),
            ),
            (
                "gateway_request_seconds",
                "histogram",
                "Wall time the gateway took to answer, by route.",
                ("route",),
                SECONDS_BUCKETS,
            ),
            (
                "gateway_batch_size",
                "histogram",
                "Requests the gateway sent to a backend (anomaly, rag) in one call.",
                ("backend",),
                BATCH_BUCKETS,
            ),
        ),
        *_specs(
            "mapek",
            ("mapek_cycles", "counter", "MAPE-K cycles that analysed telemetry."),
            ("mapek_idle_cycles", "counter", "MAPE-K steps that analysed nothing, by reason.", ("reason",)),
            (
                "mapek_phase_seconds",
                "histogram",
                "Wall time of one MAPE-K phase (monitor, score, analyse, knowledge).",
                ("phase",),
                SECONDS_BUCKETS,
            ),
            ("mapek_mesh_state", "gauge", "1 for the mesh's current state, 0 for the others.", ("state",)),
            ("mapek_nodes", "gauge", "Nodes in each controller state.", ("state",)),
            (
                "mapek_threshold",
                "gauge",
                "The learned anomaly threshold (median over nodes, and p90).",
                ("stat",),
            ),
            ("mapek_open_incidents", "gauge", "Incidents open now."),
            ("mapek_incidents", "counter", "Incidents closed, by outcome.", ("outcome",)),
            (
                "mapek_actions",
                "counter",
                "Remediation attempts judged, by action and verdict (success, failed).",
                ("action", "verdict"),
            ),
            (
                "mapek_time_to_repair_ticks",
                "histogram",
                "Ticks from an incident's opening to its resolution (MTTR = sum / count).",
                (),
                TICKS_BUCKETS,
            ),
            (
                "mapek_time_to_detect_ticks",
                "histogram",
                "Ticks from a fault's start to the controller's first alarm on it (simulation only; MTTD).",
                (),
                TICKS_BUCKETS,
            ),
        ),
        *_specs(
            "security",
            ("security_svids_issued", "counter", "SVIDs the embedded CA issued.", ()),
            ("security_svid_rotations", "counter", "SVIDs a workload renewed before expiry.", ()),
            ("security_ca_rotations", "counter", "Rotations of the embedded CA's signing key.", ()),
            ("security_revocations", "counter", "Certificates revoked by the embedded CA.", ()),
            (
                "security_handshake_failures",
                "counter",
                "mTLS peers the front refused, by reason (TLS alerts it sent, or its own SVID checks).",
                ("reason",),
            ),
            (
                "security_authz_denials",
                "counter",
                "Requests the route policy refused, by the refusing rule's path pattern (none: no rule).",
                ("rule",),
            ),
            (
                "security_front_requests",
                "counter",
                "Requests the mTLS front answered (its refusals and the app's answers), by status code.",
                ("code",),
            ),
        ),
        *_specs(
            "ledger",
            ("ledger_appends", "counter", "Entries appended to the signed audit ledger."),
            (
                "ledger_verifications",
                "counter",
                "Ledger verifications run, by result (ok, failed).",
                ("result",),
            ),
            (
                "ledger_verify_failures",
                "counter",
                "Problems found by ledger verification, by kind.",
                ("kind",),
            ),
        ),
        *_specs(
            "recovery",
            ("recovery_shard_restarts", "counter", "MeshShard actors the run found restarted."),
            (
                "recovery_replayed_ticks",
                "counter",
                "Ticks re-run after a failure: to a shard back from a checkpoint, or by a resumed driver.",
            ),
            (
                "recovery_controller_retries",
                "counter",
                "Controller calls retried after it died or timed out.",
            ),
            ("recovery_host_failures", "counter", "Host telemetry sources that failed or stayed away."),
        ),
    ]
}

#: ``off`` turns every metric of this process into a no-op (``bench observability``'s baseline;
#: an operator who scrapes nothing). Read once, when this module is imported.
METRICS_ENV = "X0TTA6BL4_METRICS"
_recording = os.environ.get(METRICS_ENV, "").strip().lower() not in ("off", "0", "false", "no")


def set_recording(enabled: bool) -> None:
    """Record metrics in this process (True, the default) or drop every recording (False)."""
    global _recording
    _recording = bool(enabled)


def recording() -> bool:
    """Whether this process records metrics."""
    return _recording


#: The registry of everything recorded outside Ray (served by :func:`serve_metrics`).
REGISTRY = CollectorRegistry(auto_describe=True)
_lock = threading.Lock()


def _ray_connected() -> bool:
    """Whether this process is a connected Ray driver or worker (Ray never imported: no)."""
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        return bool(ray.is_initialized())
    except Exception:  # a half-imported Ray
        return False


class Metric:
    """One catalogued metric, recorded through Ray or prometheus-client (see the module docstring).

    The signature is Ray's (``inc(value, tags=...)``), so callers never know which pipeline runs.
    Every label of the spec must be given in ``tags``.
    """

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self._ray: Any = None
        self._prom: Any = None
        self._warned = False

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # A handle pickles by name (Serve pickles the gateway's app with its globals; a Ray actor's
        # arguments may hold one): the receiving process looks the metric up in its own catalogue
        # and records through its own pipeline, never through the sender's registry or locks.
        return (metric, (self.spec.name,))

    def _target(self) -> tuple[bool, Any]:
        if _ray_connected():
            if self._ray is None:
                self._ray = _ray_metric(self.spec)
            return True, self._ray
        if self._prom is None:
            with _lock:
                if self._prom is None:
                    self._prom = _prom_metric(self.spec)
        return False, self._prom

    def _record(self, op: str, value: float, tags: Mapping[str, str] | None) -> None:
        if not _recording:
            return
        try:
            on_ray, target = self._target()
            if on_ray:
                getattr(target, op)(value, tags=dict(tags) if tags else None)
            else:
                child = target.labels(**(tags or {})) if self.spec.labels else target
                getattr(child, op)(value)
        except Exception as exc:  # never fail the workload for a metric
            if not self._warned:
                self._warned = True
                log.warning("metric %s not recorded: %s: %s", self.spec.name, type(exc).__name__, exc)

    def inc(self, value: float = 1.0, tags: Mapping[str, str] | None = None) -> None:
        """Add ``value`` to a counter (or gauge)."""
        if value > 0 or self.spec.kind == "gauge":
            self._record("inc", value, tags)

    def set(self, value: float, tags: Mapping[str, str] | None = None) -> None:
        """Set a gauge."""
        self._record("set", value, tags)

    def observe(self, value: float, tags: Mapping[str, str] | None = None) -> None:
        """Record one observation of a histogram."""
        self._record("observe", value, tags)


def _ray_metric(spec: MetricSpec) -> Any:
    from ray.util.metrics import Counter, Gauge, Histogram

    if spec.kind == "counter":
        return Counter(spec.name, spec.help, tag_keys=spec.labels)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.help, tag_keys=spec.labels)
    return Histogram(spec.name, spec.help, boundaries=list(spec.buckets), tag_keys=spec.labels)


def _prom_metric(spec: MetricSpec) -> Any:
    if spec.kind == "counter":
        return PromCounter(spec.name, spec.help, spec.labels, registry=REGISTRY)
    if spec.kind == "gauge":
        return PromGauge(spec.name, spec.help, spec.labels, registry=REGISTRY)
    return PromHistogram(spec.name, spec.help, spec.labels, registry=REGISTRY, buckets=spec.buckets)


def metric(name: str) -> Metric:
    """The catalogued metric ``name`` (with or without the ``x0tta6bl4_`` prefix); KeyError if unknown.

    One :class:`Metric` per catalogued name, however it is spelt: a registry refuses a name twice.
    """
    return _metric(name if name.startswith("x0tta6bl4_") else f"x0tta6bl4_{name}")


@functools.cache
def _metric(full_name: str) -> Metric:
    return Metric(CATALOGUE[full_name])


def domain_metrics(domain: str) -> dict[str, Metric]:
    """A domain's metrics keyed by their name without ``x0tta6bl4_<domain>_`` (e.g. ``"ticks"``)."""
    prefix = f"x0tta6bl4_{domain}_"
    return {
        s.name.removeprefix(prefix).removeprefix("x0tta6bl4_"): metric(s.name)
        for s in CATALOGUE.values()
        if s.domain == domain
    }


def mesh_metrics() -> dict[str, Metric]:
    """The MeshShard metrics (``ticks``, ``step_seconds``, ``faulty_nodes``, ...)."""
    return domain_metrics("mesh")


def serve_metrics(port: int, host: str = "127.0.0.1") -> int:
    """Serve :data:`REGISTRY` at ``http://host:port/metrics`` on a daemon thread; the port bound.

    For processes outside Ray (inside Ray, each node's metrics agent exports the platform's metrics).
    """
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return int(server.server_port)


def write_textfile(path: str | os.PathLike[str]) -> None:
    """Write :data:`REGISTRY` to ``path`` atomically (for node_exporter's textfile collector)."""
    from prometheus_client import write_to_textfile

    write_to_textfile(str(path), REGISTRY)


def exposition() -> bytes:
    """:data:`REGISTRY` in Prometheus's text format (what :func:`serve_metrics` answers)."""
    from prometheus_client import generate_latest

    return bytes(generate_latest(REGISTRY))
