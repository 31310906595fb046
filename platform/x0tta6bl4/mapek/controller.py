"""MapeKController: the MAPE-K loop as one detached, named, restartable Ray actor."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import numpy as np

from x0tta6bl4 import RAY_NAMESPACE
from x0tta6bl4.connect import platform_actor_options
from x0tta6bl4.mapek.config import ControllerConfig
from x0tta6bl4.mapek.core import ControllerCore
from x0tta6bl4.mapek.interfaces import MeshView, StepResult
from x0tta6bl4.mapek.knowledge import KnowledgeStore
from x0tta6bl4.mesh.topology import Topology, TopologySpec
from x0tta6bl4.observability import tracing
from x0tta6bl4.observability.metrics import domain_metrics
from x0tta6bl4.telemetry.frame import FEATURES

log = logging.getLogger(__name__)

#: Ray actor name of the controller (in the platform's namespace).
CONTROLLER_NAME = "mapek-controller"

#: Ticks between polls of the real hosts' telemetry sources (their frames are reused in between).
HOST_POLL_EVERY_TICKS = 10

#: The controller's metrics (the monitor phase is timed here, the others in ControllerCore).
_METRICS = domain_metrics("mapek")


def mesh_view(topology: Topology, num_hosts: int) -> MeshView:
    """The controller's view: simulated nodes, then real hosts, each host linked to a gateway.

    Host ``i`` is node ``topology.num_nodes + i``, linked to the ``i``-th gateway (as the run
    report places it); hosts are watched and scored but never remediated.
    """
    n = topology.num_nodes
    gateways = np.flatnonzero(topology.gateways)
    host_links = [(int(gateways[i % gateways.size]), n + i) for i in range(num_hosts)]
    pairs = np.concatenate([topology.edges, np.asarray(host_links, dtype=np.int64).reshape(-1, 2)]).astype(
        np.int32
    )
    return MeshView(
        num_nodes=n + num_hosts,
        pairs=pairs,
        gateways=np.concatenate([topology.gateways.astype(bool), np.zeros(num_hosts, dtype=bool)]),
        actionable=np.concatenate([np.ones(n, dtype=bool), np.zeros(num_hosts, dtype=bool)]),
    )


class MapeKController:
    """Ray actor body around :class:`ControllerCore`: pulls telemetry itself, reaches Serve by handle.

    Monitor pulls each tick's frame from every named ``MeshShard`` and, every
    :data:`HOST_POLL_EVERY_TICKS`, from every ``EbpfSource``; scores come from the served
    anomaly app, plans from the served RAG app. Everything it learns is in the SQLite
    knowledge store, so a restarted controller resumes where its last checkpoint left it.

    Args:
        run_id: the run it controls (its key in the knowledge store).
        topology_spec: how the shards built the mesh.
        host_sources: names of the EbpfSource actors, in mesh order (host ``i`` = node ``N + i``).
        config: ControllerConfig fields.
        serve_config: the ServeConfig the apps were deployed with.
    """

    def __init__(
        self,
        run_id: str,
        topology_spec: TopologySpec,
        host_sources: list[str],
        config: dict[str, Any],
        serve_config: dict[str, Any],
    ) -> None:
        from x0tta6bl4.mapek.clients import CONTROLLER_ID, ServedRunbooks, ServedScorer

        tracing.setup_tracing("controller", spiffe_id=CONTROLLER_ID)
        self.config = ControllerConfig.model_validate(config)
        self.topology = topology_spec.build()
        self.host_sources = host_sources
        self.view = mesh_view(self.topology, len(host_sources))
        self.scorer = ServedScorer(serve_config)
        self.runbooks = ServedRunbooks(self.scorer.config.app_name)
        self.knowledge = KnowledgeStore(self.config.knowledge_path or "knowledge.sqlite")
        self.core = self._build_core(run_id)
        self._host_rows = np.full((len(host_sources), len(FEATURES)), np.nan, dtype=np.float32)
        self._shards: list[Any] = []
        self.monitor_errors: list[str] = []

    def _build_core(self, run_id: str) -> ControllerCore:
        deadline = time.monotonic() + 120.0
        while True:  # the apps may still be starting (or restarting) when the controller comes up
            try:
                return ControllerCore(
                    self.view, self.config, self.scorer, self.runbooks, self.knowledge, run_id
                )
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("anomaly app not ready (%s); retrying", exc)
                time.sleep(1.0)

    def _shard_handles(self) -> list[Any]:
        import ray

        from x0tta6bl4.mesh.shard import shard_name

        if not self._shards:
            self._shards = [
                ray.get_actor(shard_name(r), namespace=RAY_NAMESPACE)
                for r in range(self.topology.num_regions)
            ]
        return self._shards

    def _monitor(self, tick: int) -> np.ndarray:
        """The mesh's features at ``tick``: every shard's frame, then the hosts' last frames."""
        import ray

        from x0tta6bl4.telemetry.frame import TelemetryFrame

        with tracing.span("mapek.monitor", {"tick": tick}):
            frames = ray.get([s.frame.remote(tick) for s in self._shard_handles()], timeout=30)
            merged = TelemetryFrame.concat(frames)
            if self.host_sources and (tick % HOST_POLL_EVERY_TICKS == 0 or np.isnan(self._host_rows).all()):
                self._poll_hosts()
        return np.concatenate([merged.features, self._host_rows]) if self.host_sources else merged.features

    def _poll_hosts(self) -> None:
        import ray

        for i, name in enumerate(self.host_sources):
            try:
                source = ray.get_actor(name, namespace=RAY_NAMESPACE)
                frame = ray.get(source.poll.remote(tracing.current_carrier()), timeout=10)
                row = np.full(len(FEATURES), np.nan, dtype=np.float32)
                for j, feature in enumerate(frame.feature_names):
                    if feature in FEATURES:
                        row[FEATURES.index(feature)] = frame.features[0, j]
                self._host_rows[i] = row
            except Exception as exc:  # a host source restarting: keep its last frame
                self._note(f"host source {name}: poll failed ({type(exc).__name__}: {exc})")

    def _note(self, message: str) -> None:
        log.warning(message)
        self.monitor_errors.append(message)
        del self.monitor_errors[:-100]

    def step(
        self,
        tick: int,
        unserviceable_share: float = 0.0,
        applied: list[tuple[int, str, int, int | None]] | None = None,
        trace: dict[str, str] | None = None,
    ) -> StepResult:
        """Monitor, analyse, plan and execute for ``tick``; returns the actions for the next tick.

        ``applied``: what the mesh applied since the last step that answered (the acknowledgement
        of earlier actions; see :meth:`ControllerCore.acknowledge`). ``trace``: the caller's W3C
        trace context; the tick's ``mapek.tick`` span continues it.
        """
        with tracing.span("mapek.tick", {"tick": tick, "run_id": self.core.run_id}, parent=trace):
            return self._step(tick, unserviceable_share, applied)

    def _step(
        self, tick: int, unserviceable_share: float, applied: list[tuple[int, str, int, int | None]] | None
    ) -> StepResult:
        self.core.acknowledge(applied)
        started = time.perf_counter()
        try:
            features = self._monitor(tick)
        except Exception as exc:  # a shard restarting: keep the last thresholds, act on nothing
            self._shards = []
            msg = f"tick {tick}: telemetry unavailable ({type(exc).__name__}: {exc})"
            self._note(msg)
            _METRICS["idle_cycles"].inc(tags={"reason": "telemetry_unavailable"})
            return self.core.idle(tick, (msg,))
        _METRICS["phase_seconds"].observe(time.perf_counter() - started, tags={"phase": "monitor"})
        return self.core.step(tick, features, unserviceable_share)

    def flush_traces(self) -> bool:
        """Export this actor's finished spans now (the driver asks before it kills the actor)."""
        return tracing.flush()

    def incidents(self) -> list[dict[str, Any]]:
        return [i.to_dict() for i in self.core.incidents]

    def summary(self) -> dict[str, Any]:
        out = self.core.summary()
        out["monitor_errors"] = len(self.monitor_errors)
        out["errors_sample"] = (self.core.errors + self.monitor_errors)[-5:]
        out["thresholds_pushed"] = self.scorer.pushed
        return out

    def status(self) -> dict[str, Any]:
        """Where the controller stands (what the dashboard's actor view can call)."""
        import os

        return {
            "run_id": self.core.run_id,
            "tick": self.core.last_tick,
            "mesh_state": self.core.mesh_state.name,
            "open_incidents": self.core.open_incidents(),
            "restored_tick": self.core.restored_tick,
            "pid": os.getpid(),
        }


def start_controller(
    run_id: str,
    topology_spec: TopologySpec,
    host_sources: list[str],
    config: ControllerConfig,
    serve_config: dict[str, Any],
) -> Any:
    """Create the detached, named controller actor (replacing one left over from an earlier run)."""
    import ray

    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=RAY_NAMESPACE))
    remote = ray.remote(MapeKController)
    return remote.options(**platform_actor_options(CONTROLLER_NAME, max_task_retries=0)).remote(
        run_id, topology_spec, host_sources, config.model_dump(mode="json"), serve_config
    )
