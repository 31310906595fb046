"""ControllerCore with routing knowledge: a lossy uplink is fixed at its root and judged once it settled.

A stand-in scorer replays chosen scores over the small tree of ``test_rootcause`` (gateway 0,
0 <- 1 <- 3 <- {5, 6}); the uplink 3-1 degrades, so 3, 5 and 6 alarm and 5 alarms loudest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from x0tta6bl4.mapek.config import ControllerConfig
from x0tta6bl4.mapek.core import ControllerCore
from x0tta6bl4.mapek.knowledge import KnowledgeStore
from x0tta6bl4.rag.provenance import document_claim
from x0tta6bl4.rag.store import Document
from x0tta6bl4.security.provenance import RUNBOOK_CONTEXT, ProvenancePolicy
from x0tta6bl4.telemetry.frame import FEATURE_INDEX, FEATURES

from .test_rootcause import HEALTHY, N, _view


class _Scorer:
    def __init__(self) -> None:
        self.scores = np.full(N, 0.1, dtype=np.float32)

    def contract(self) -> tuple[tuple[str, ...], float]:
        return FEATURES, 1.0

    def score(
        self, node_ids: Sequence[int], window: npt.NDArray[np.float32], pairs: Any, stream_id: str
    ) -> npt.NDArray[np.float32]:
        return self.scores.copy()

    def push_thresholds(self, default: float, per_node: dict[str, float]) -> None:
        return None


class _Runbooks:
    def query(self, text: str, k: int) -> dict[str, Any]:
        return {"action": "reroute", "passages": [{"action": "reroute", "runbook_id": "r"}]}

    def ingest(self, documents: list[dict[str, Any]]) -> None:
        return None

    def signatures(self, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Its one runbook, signed by an operator: the controller acts only on signed runbooks."""
        claim = document_claim(Document("r", "stand-in", "stand-in runbook", None, "reroute"))
        signature = ProvenancePolicy().signer("operator/test").sign(claim, RUNBOOK_CONTEXT)
        return {"r": {"claim": claim.decode(), "signature": signature.to_dict()}} if "r" in doc_ids else {}


def _features(lossy: bool) -> npt.NDArray[np.float32]:
    f = np.array([[HEALTHY[name] for name in FEATURES] for _ in range(N)], dtype=np.float32)
    if lossy:
        f[[3, 5, 6], FEATURE_INDEX["loss_ratio"]] = 0.3
        f[[3, 5, 6], FEATURE_INDEX["latency_mean_ms"]] = 120.0
    return f


def test_a_lossy_uplink_is_rerouted_at_its_root_naming_the_next_hop_and_judged_after_settling() -> None:
    scorer = _Scorer()
    config = ControllerConfig(mode="static", audit=False, ingest_resolved=False)
    core = ControllerCore(_view(), config, scorer, _Runbooks(), KnowledgeStore(":memory:"), "t")
    for tick in range(12):  # healthy: baselines settle
        core.step(tick, _features(False))
    scorer.scores[[3, 5, 6]] = [5.0, 9.0, 6.0]  # severe: confirmed at once; 5 is the loudest symptom
    decided = next(t for t in range(12, 18) if core.step(t, _features(True)).actions)
    (incident,) = core.incidents
    attempt = incident.attempts[0]
    assert (attempt.action, attempt.node, attempt.peer, attempt.tick) == ("reroute", 3, 1, decided + 1)
    scorer.scores[3] = 0.1  # the reroute fixed the root; the queues below it are still draining
    for tick in range(decided + 1, decided + 20):
        core.step(tick, _features(True))
        if attempt.outcome is not None:
            break
    assert attempt.judged_tick == decided + config.settle_ticks["reroute"]
    assert attempt.outcome == "success"
    assert incident.status == "resolved"
    assert set(core.step(decided + 8, _features(True)).alarmed) == {5, 6}  # symptoms, not the fault's own
