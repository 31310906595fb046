"""How the controller reaches the served apps: Serve deployment handles, or in-process for benchmarks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from x0tta6bl4.errors import X0tta6bl4Error
from x0tta6bl4.observability import tracing
from x0tta6bl4.security.identity import WorkloadKind, workload_id
from x0tta6bl4.serve.config import AnomalyUserConfig, ServeConfig
from x0tta6bl4.serve.errors import ModelChangedError, RequestError, deployment_error
from x0tta6bl4.serve.snapshot import Snapshot, stream_key

#: The controller's identity: its scoring stream belongs to it, so no HTTP caller can touch it.
CONTROLLER_ID = str(workload_id(WorkloadKind.CONTROLLER))

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


class LocalScorer:
    """The anomaly app's scoring logic in this process (no Serve hop): benchmarks and unit tests."""

    def __init__(self, registry: str | None = None) -> None:
        from x0tta6bl4.models.bootstrap import ensure_promoted
        from x0tta6bl4.serve.anomaly import AnomalyScorer
        from x0tta6bl4.serve.config import AnomalyConfig
        from x0tta6bl4.telemetry.windows import RollingInputs

        config = AnomalyConfig() if registry is None else AnomalyConfig(registry=registry)
        self._scorer = AnomalyScorer(config)
        ensure_promoted(self._scorer.registry, None, self._scorer.provenance)
        self._scorer.apply(AnomalyUserConfig())
        self._streams: dict[str, RollingInputs] = {}
        self._window = self._scorer.model.get().detector.spec.window
        self.pushed: list[tuple[float, int]] = []

    def contract(self) -> tuple[tuple[str, ...], float]:
        served = self._scorer.model.get()
        return served.features, served.suggested_threshold

    def score(
        self, node_ids: Sequence[int], window: F32, pairs: npt.NDArray[np.int32], stream_id: str
    ) -> F32:
        from x0tta6bl4.telemetry.windows import RollingInputs

        stream = self._streams.setdefault(stream_id, RollingInputs(self._window))
        snapshot = Snapshot(list(node_ids), window, pairs)
        out = self._scorer.score_many([(snapshot, stream)])[0]
        return np.asarray(out["scores"], dtype=np.float32)

    def push_thresholds(self, default: float, per_node: dict[str, float]) -> None:
        self._scorer.apply_thresholds(default, per_node)
        self.pushed.append((default, len(per_node)))


class LocalRunbooks:
    """The RAG app's retriever in this process.

    Args:
        data_dir: the retriever's store (default: the retriever's default directory).
        model: the loaded default embedder, shared between instances (default: load it).
    """

    def __init__(self, data_dir: str | None = None, model: Any = None) -> None:
        from x0tta6bl4.rag.config import RetrieverConfig
        from x0tta6bl4.rag.retriever import Retriever

        self._retriever = Retriever.open(
            RetrieverConfig() if data_dir is None else RetrieverConfig(data_dir=Path(data_dir)), model=model
        )

    def query(self, text: str, k: int) -> dict[str, Any]:
        result: dict[str, Any] = self._retriever.query(text, k).to_dict()
        return result

    def ingest(self, documents: list[dict[str, Any]]) -> None:
        self._retriever.ingest(documents)

    def signatures(self, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
        return self._retriever.signatures(doc_ids)


class ServedScorer:
    """The served anomaly app through its deployment handle (numpy arrays travel, no JSON).

    Thresholds are published on the app's threshold board (:mod:`x0tta6bl4.serve.thresholds`),
    which every replica follows: a push never redeploys the app.

    Args:
        serve_config: the config the app was deployed with (its name and handles).
        timeout_s: how long one scoring call may take.
    """

    def __init__(self, serve_config: dict[str, Any], timeout_s: float = 30.0) -> None:
        from ray import serve

        self.config = ServeConfig.model_validate(serve_config)
        self.timeout_s = timeout_s
        self._handle = serve.get_deployment_handle("AnomalyDetector", app_name=self.config.app_name)
        self._contract: tuple[tuple[str, ...], Any] | None = None
        self._board: Any = None
        self.pushed = 0

    def contract(self) -> tuple[tuple[str, ...], float]:
        features, _ = self._handle.contract.remote().result(timeout_s=self.timeout_s)
        self._contract = (tuple(features), None)
        described = self._handle.describe.remote().result(timeout_s=self.timeout_s)
        return tuple(features), float(described["default_threshold"])

    def score(
        self, node_ids: Sequence[int], window: F32, pairs: npt.NDArray[np.int32], stream_id: str
    ) -> F32:
        import json

        if self._contract is None:
            self.contract()
        assert self._contract is not None
        snapshot = Snapshot(list(node_ids), np.ascontiguousarray(window, dtype=np.float32), pairs)
        try:
            body = (
                self._handle.options(multiplexed_model_id=stream_key(CONTROLLER_ID, stream_id))
                .score.remote(
                    snapshot, self._contract[0], stream_id, CONTROLLER_ID, trace=tracing.current_carrier()
                )
                .result(timeout_s=self.timeout_s)
            )
        except RequestError as exc:
            if isinstance(exc, ModelChangedError):
                self._contract = None  # the served model changed its features: ask again next tick
            raise RuntimeError(f"anomaly app answered {exc.status}: {exc.body()!r}"[:300]) from None
        return np.asarray(json.loads(body)["scores"], dtype=np.float32)

    def push_thresholds(self, default: float, per_node: dict[str, float]) -> None:
        """Publish thresholds on the app's board; every replica applies them, nothing is redeployed.

        The served version, replica counts and whatever else an operator set stay as they are.
        """
        from x0tta6bl4.serve.thresholds import open_board

        if self._board is None:
            self._board = open_board(self.config.app_name)
        try:
            self._board.publish.remote(float(default), {str(k): float(v) for k, v in per_node.items()})
        except Exception as exc:  # the board is restarting: the next push carries newer values
            self._board = None
            log.warning("publishing thresholds failed: %s", exc)
            return
        self.pushed += 1


class ServedRunbooks:
    """The served RAG app through its deployment handle."""

    def __init__(self, app_name: str, timeout_s: float = 30.0) -> None:
        from ray import serve

        self.timeout_s = timeout_s
        self._handle = serve.get_deployment_handle("RunbookRetriever", app_name=app_name)

    def query(self, text: str, k: int) -> dict[str, Any]:
        try:
            body = self._handle.query.remote(text, k, trace=tracing.current_carrier()).result(
                timeout_s=self.timeout_s
            )
        except X0tta6bl4Error as exc:
            raise RuntimeError(f"RAG app refused the query: {deployment_error(exc)}"[:300]) from None
        return dict(body)

    def ingest(self, documents: list[dict[str, Any]]) -> None:
        try:
            self._handle.ingest.remote(documents).result(timeout_s=self.timeout_s)
        except X0tta6bl4Error as exc:
            raise RuntimeError(f"RAG app refused the documents: {deployment_error(exc)}"[:300]) from None

    def signatures(self, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
        try:
            return dict(self._handle.signatures.remote(doc_ids).result(timeout_s=self.timeout_s))
        except X0tta6bl4Error as exc:
            raise RuntimeError(
                f"RAG app refused the signature lookup: {deployment_error(exc)}"[:300]
            ) from None
