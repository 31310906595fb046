"""The anomaly scoring deployment: batched GraphSAGE scoring of graph snapshots, hot model/threshold swaps."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import logging
import threading
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from ray import serve

from x0tta6bl4.models.bootstrap import ensure_promoted, load_detector
from x0tta6bl4.models.graphsage import GraphSAGEDetector
from x0tta6bl4.models.inference import (
    GraphInputs,
    score_graphs,
    symmetric_edges,
    window_inputs,
)
from x0tta6bl4.models.registry import LoadedModel, ModelRegistry, RegistryError
from x0tta6bl4.observability import tracing
from x0tta6bl4.observability.metrics import domain_metrics
from x0tta6bl4.security.provenance import ProvenancePolicy
from x0tta6bl4.serve._private.batching import GreedyBatcher
from x0tta6bl4.serve._private.caller import ANONYMOUS
from x0tta6bl4.serve._private.hotswap import HotSwap
from x0tta6bl4.serve._private.streams import StreamTable
from x0tta6bl4.serve.config import AnomalyConfig, AnomalyUserConfig
from x0tta6bl4.serve.errors import ModelChangedError
from x0tta6bl4.serve.schemas import SCORE_DECIMALS
from x0tta6bl4.serve.snapshot import Limits, Snapshot, check_stream_id, stream_key
from x0tta6bl4.telemetry.frame import unlisted_rows
from x0tta6bl4.telemetry.windows import RollingInputs

log = logging.getLogger(__name__)

#: The detector's metrics (recorded per batch).
_METRICS = domain_metrics("detector")

#: Distinct topologies whose symmetric edge index a replica keeps.
EDGE_CACHE_SIZE = 32

#: Threshold used when neither the config nor the model's metrics give one.
FALLBACK_THRESHOLD = 10.0


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A loaded detector version and what it says about itself."""

    detector: GraphSAGEDetector
    loaded: LoadedModel

    @property
    def version(self) -> str:
        return self.loaded.version.version

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.detector.spec.window.feature_names)

    @property
    def suggested_threshold(self) -> float:
        value = self.loaded.metrics.get("score_threshold")
        return float(value) if isinstance(value, int | float) else FALLBACK_THRESHOLD


@dataclasses.dataclass(frozen=True)
class _Thresholds:
    default: float
    per_node: dict[str, float]
    version: int

    def for_nodes(self, node_ids: list[int | str]) -> np.ndarray:
        out = np.full(len(node_ids), self.default, dtype=np.float32)
        if self.per_node:
            for i, node in enumerate(node_ids):
                value = self.per_node.get(str(node))
                if value is not None:
                    out[i] = value
        return out


class AnomalyScorer:
    """Scores snapshots against the served detector (the deployment's logic, usable without Serve).

    Args:
        config: the deployment's configuration.
    """

    def __init__(self, config: AnomalyConfig) -> None:
        self.config = config
        self.registry = ModelRegistry(config.registry)
        self.provenance = ProvenancePolicy(config.provenance)
        self.model: HotSwap[ServedModel] = HotSwap(name="anomaly detector")
        self._user: AnomalyUserConfig | None = None
        self._thresholds = _Thresholds(FALLBACK_THRESHOLD, {}, 0)
        self._thresholds_source = "user_config"
        self._lock = threading.Lock()
        self._edge_cache: collections.OrderedDict[tuple[int, bytes], np.ndarray] = collections.OrderedDict()

    @property
    def limits(self) -> Limits:
        return Limits(self.config.max_nodes, self.config.max_ticks, self.config.max_edges)

    def apply(self, user: AnomalyUserConfig) -> None:
        """Apply a user_config: load the requested version if it changed, then the thresholds.

        A version that fails to load leaves the previous one serving (its error is reported by
        :meth:`describe`); a replica with nothing loaded yet falls back to the promoted version,
        and raises only when that fails too.
        """
        previous = self._user
        if previous == user and self.model.current is not None:
            return  # nothing changed
        if previous is None or user.model_version != previous.model_version or self.model.current is None:
            swapped = self.model.try_swap(lambda: self._load(user.model_version))
            if not swapped and self.model.current is None and user.model_version is not None:
                # A new replica has no previous version to keep: serve the promoted one instead.
                refused = self.model.last_error
                if self.model.try_swap(lambda: self._load(None)):
                    self.model.last_error = refused
            if self.model.current is None:
                raise RegistryError(self.model.last_error or "no detector could be loaded")
        served = self.model.get()
        with self._lock:
            t = user.thresholds
            default = t.default if t.default is not None else served.suggested_threshold
            self._thresholds = _Thresholds(float(default), dict(t.per_node), self._thresholds.version + 1)
            self._thresholds_source = "user_config"
            self._user = user
        _METRICS["threshold_updates"].inc()
        _METRICS["model_loaded"].set(1.0)
        log.info(
            "anomaly: serving %s, default threshold %.3g, %d per-node",
            served.version,
            default,
            len(t.per_node),
        )

    def apply_thresholds(self, default: float, per_node: dict[str, float]) -> None:
        """Replace only the thresholds (the controller's push); the served version stays as it is."""
        with self._lock:
            self._thresholds = _Thresholds(float(default), dict(per_node), self._thresholds.version + 1)
            self._thresholds_source = "controller"
        _METRICS["threshold_updates"].inc()

    def _load(self, version: str | None) -> ServedModel:
        detector, loaded = load_detector(self.registry, version, self.provenance)
        return ServedModel(detector, loaded)

    def inputs(
        self, snapshot: Snapshot, stream: RollingInputs | None, spec_window: Any
    ) -> tuple[GraphInputs, bool, int]:
        """Detector inputs of a snapshot (through its stream's state when it has one)."""
        if stream is None:
            x, y, warm = window_inputs(spec_window, snapshot.window)
            ticks = len(snapshot.window)
        else:
            key = snapshot.node_key()
            for tick in snapshot.window:
                x, y = stream.push(tick, key)
            warm, ticks = stream.warm, stream.ticks
        edges = self._edges(snapshot)
        unlisted = unlisted_nodes(snapshot)
        if unlisted.any():  # a node without a record is not in the graph: its zeros would skew its neighbours
            edges = edges[:, ~(unlisted[edges[0]] | unlisted[edges[1]])]
        return GraphInputs(x, y, edges), warm, ticks

    def _edges(self, snapshot: Snapshot) -> np.ndarray:
        """Both directions of the snapshot's links; meshes repeat their topology, so cached by content."""
        key = (snapshot.num_nodes, hashlib.blake2b(snapshot.pairs.tobytes(), digest_size=16).digest())
        with self._lock:
            edges = self._edge_cache.get(key)
            if edges is not None:
                self._edge_cache.move_to_end(key)
                return edges
        edges = symmetric_edges(snapshot.pairs, snapshot.num_nodes)
        with self._lock:
            self._edge_cache[key] = edges
            while len(self._edge_cache) > EDGE_CACHE_SIZE:
                self._edge_cache.popitem(last=False)
        return edges

    def score_many(self, items: list[tuple[Snapshot, RollingInputs | None]]) -> list[dict[str, Any]]:
        """Score several snapshots in one pass; one ScoreResponse dict each."""
        started = time.perf_counter()
        served = self.model.get()
        thresholds = self._thresholds
        prepared = [self.inputs(s, stream, served.detector.spec.window) for s, stream in items]
        scores = score_graphs(served.detector, [p[0] for p in prepared])
        out = []
        for (snapshot, _), (_, warm, ticks), s in zip(items, prepared, scores, strict=False):
            unlisted = unlisted_nodes(snapshot)
            if unlisted.any():  # no record this tick: no data, so no score and never an alarm
                s = np.where(unlisted, np.float32(0.0), s)
            limit = thresholds.for_nodes(snapshot.node_ids)
            # float32 scores printed as float64 carry ~17 digits of noise; rounding shortens the body.
            # Alarms compare the rounded scores, so an answer never contradicts itself.
            rounded = np.round(s.astype(np.float64), SCORE_DECIMALS)
            above = np.nonzero(rounded > limit)[0]
            above = above[np.argsort(-rounded[above], kind="stable")]
            out.append(
                {
                    "model_version": served.version,
                    "scores": rounded.tolist(),
                    "alarms": [
                        {
                            "node_id": snapshot.node_ids[i],
                            "score": float(rounded[i]),
                            "threshold": float(limit[i]),
                        }
                        for i in above
                    ],
                    "warm": warm,
                    "window_ticks": ticks,
                    "thresholds_version": thresholds.version,
                }
            )
        _METRICS["inference_seconds"].observe(time.perf_counter() - started)
        _METRICS["batch_size"].observe(len(items))
        _METRICS["nodes_scored"].inc(sum(len(s) for s in scores))
        _METRICS["alarms"].inc(sum(len(o["alarms"]) for o in out))
        return out

    def describe(self) -> dict[str, Any]:
        """What is served (the ``GET /v1/anomaly/model`` body)."""
        served = self.model.get()
        mv = served.loaded.version
        spec = served.detector.spec
        return {
            "model": mv.model,
            "version": mv.version,
            "created_at": mv.created_at.isoformat(),
            "feature_names": list(served.features),
            "warmup_ticks": spec.window.warmup_ticks,
            "spec": spec.to_dict(),
            "metrics": {k: v for k, v in served.loaded.metrics.items() if not isinstance(v, list | dict)},
            "default_threshold": self._thresholds.default,
            "per_node_thresholds": len(self._thresholds.per_node),
            "thresholds_version": self._thresholds.version,
            "thresholds_source": self._thresholds_source,
            "last_load_error": self.model.last_error,
            "provenance": {
                "require_signatures": self.config.provenance.require_signatures,
                "model_signers": list(self.config.provenance.model_signers),
            },
        }


#: One snapshot waiting for a batch: the snapshot, its stream's baselines, its request's trace context.
_Item = tuple[Snapshot, RollingInputs | None, dict[str, str] | None]


@serve.deployment(
    name="AnomalyDetector",
    ray_actor_options={"num_cpus": 0.5},
    health_check_period_s=10.0,
    health_check_timeout_s=30.0,
    graceful_shutdown_timeout_s=10.0,
)
class AnomalyDetector:
    """Serve deployment around :class:`AnomalyScorer`: batches snapshots, keeps live streams' baselines."""

    def __init__(self, config: dict[str, Any]) -> None:
        torch.set_num_threads(1)  # replicas share the node's cores with the proxy and each other
        tracing.setup_tracing("anomaly")
        self.config = AnomalyConfig.model_validate(config)
        self.scorer = AnomalyScorer(self.config)
        self._batcher: GreedyBatcher[_Item, bytes] = GreedyBatcher(
            self._score_batch, self.config.max_batch_size, self.config.batch_wait_timeout_s
        )
        self._streams: StreamTable[RollingInputs] = StreamTable(
            self.config.max_streams_per_owner, self.config.max_stream_owners
        )
        self._board_revision = 0
        self._board_follower: asyncio.Task[None] | None = None

    async def _follow_board(self) -> None:
        """Apply the thresholds the controller publishes on the app's board (see serve.thresholds)."""
        from x0tta6bl4.serve.thresholds import BOARD_POLL_S, find_board

        app_name = serve.get_replica_context().app_name
        board = None
        while True:
            await asyncio.sleep(BOARD_POLL_S)
            try:
                board = board or find_board(app_name)
                if board is None:
                    continue
                newer = await board.since.remote(self._board_revision)
            except Exception as exc:  # the board restarting or removed: look it up again next time
                log.debug("threshold board unavailable: %s", exc)
                board = None
                continue
            if newer is not None:
                self._board_revision, default, per_node = newer
                self.scorer.apply_thresholds(default, per_node)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's user_config hook: the model version and thresholds, applied in place.

        Serve calls it once after the constructor and again on every user_config change;
        loading runs off the event loop, so requests keep being answered meanwhile.
        """
        user = AnomalyUserConfig.model_validate(user_config)
        if self.config.bootstrap and user.model_version is None and self.scorer.model.current is None:
            await asyncio.to_thread(ensure_promoted, self.scorer.registry, None, self.scorer.provenance)
        await asyncio.to_thread(self.scorer.apply, user)
        if self._board_follower is None:
            self._board_follower = asyncio.create_task(self._follow_board())

    def check_health(self) -> None:
        """Unhealthy only when no detector is loaded (a refused new version keeps the old one serving)."""
        loaded = _METRICS["model_loaded"]
        try:
            self.scorer.model.get()
        except Exception:
            loaded.set(0.0)
            raise
        loaded.set(1.0)

    @serve.multiplexed(max_num_models_per_replica=64)  # type: ignore[untyped-decorator]
    async def _stream(self, key: str) -> RollingInputs:
        # Multiplexing routes a stream's calls to the replica that holds its baselines; the state
        # itself lives in the owner-bounded table, so Serve's own eviction loses nothing.
        return self._streams.get(key, lambda: RollingInputs(self.scorer.model.get().detector.spec.window))

    def contract(self) -> tuple[tuple[str, ...], Limits]:
        """The feature order and limits the gateway checks snapshots against before sending them."""
        return self.scorer.model.get().features, self.scorer.limits

    async def score(
        self,
        snapshot: Snapshot,
        features: tuple[str, ...],
        stream_id: str | None = None,
        owner: str = ANONYMOUS,
        trace: dict[str, str] | None = None,
    ) -> bytes:
        """Score one checked snapshot (batched with concurrent ones).

        Args:
            snapshot: parsed and checked by the gateway against ``features``.
            features: the column order the gateway used.
            stream_id: live stream whose baselines to use and update.
            owner: the identity the stream belongs to (the front-verified caller, or the calling
                workload's SPIFFE ID in the cluster); the same name under another owner is
                another stream. Callers route with ``multiplexed_model_id=stream_key(owner, stream_id)``.
            trace: the caller's W3C trace context; the ``anomaly.batch`` span that scores this
                snapshot continues it (and links every other request of its batch).

        Returns:
            The ScoreResponse as JSON bytes (encoded here, so the gateway passes them on untouched).

        Raises:
            ModelChangedError: the served model now expects other features; the gateway re-parses.
            RequestError: ``stream_id`` is not a valid stream name.
        """
        served = self.scorer.model.get()
        if tuple(features) != served.features:
            raise ModelChangedError()
        name = check_stream_id(stream_id)
        stream = await self._stream(stream_key(owner, name)) if name else None
        return await self._batcher.submit((snapshot, stream, trace))

    async def score_batch(self, items: list[tuple[Any, ...]]) -> list[bytes | BaseException]:
        """Score several stateless snapshots sent as one call; each gets what :meth:`score` gives.

        The gateway sends the snapshots that arrived together in one call, so the hop from the
        gateway to this replica is paid once per batch, not once per request.

        Each item is ``(snapshot, features)``, or ``(snapshot, features, trace)`` with its HTTP
        request's W3C trace context.

        Returns:
            Per snapshot, its answer or the exception :meth:`score` raised for it (which fails
            that snapshot alone).
        """
        return await asyncio.gather(
            *(self.score(item[0], item[1], trace=item[2] if len(item) > 2 else None) for item in items),
            return_exceptions=True,
        )

    async def _score_batch(self, items: list[_Item]) -> list[bytes]:
        # On the replica's event loop. The retriever computes on a thread of its own (ThreadBatcher);
        # the anomaly targets are met without one, so this stays until a benchmark says otherwise.
        traces = [t for _, _, t in items if t]
        attributes = {"batch.size": len(items), "nodes": sum(s.num_nodes for s, _, _ in items)}
        with tracing.span("anomaly.batch", attributes, parent=traces[0] if traces else None, links=traces):
            scored = self.scorer.score_many([(s, stream) for s, stream, _ in items])
        return [json.dumps(r, separators=(",", ":")).encode() for r in scored]

    def describe(self) -> dict[str, Any]:
        """The ``GET /v1/anomaly/model`` body, with how well this replica's snapshots were batched."""
        batcher = self._batcher
        batching = {
            "batches": batcher.batches,
            "snapshots": batcher.items,
            "mean_batch_size": batcher.mean_batch_size,
        }
        return {**self.scorer.describe(), "batching": batching}


def unlisted_nodes(snapshot: Snapshot) -> npt.NDArray[np.bool_]:
    """Nodes whose newest row is entirely NaN: no record (not a mesh member), so no data to score."""
    return unlisted_rows(snapshot.window[-1])
