"""ControllerCore with routing knowledge: faults are fixed at their root and judged once they settled.

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
    """Operator-signed runbooks recommending ``actions`` in rank order (one runbook per action)."""

    def __init__(self, *actions: str) -> None:
        self.actions = actions

    def query(self, text: str, k: int) -> dict[str, Any]:
        passages = [{"action": a, "runbook_id": a} for a in self.actions[:k]]
        return {"action": self.actions[0], "passages": passages}

    def ingest(self, documents: list[dict[str, Any]]) -> None:
        return None

    def signatures(self, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
        out = {}
        for action in set(self.actions) & set(doc_ids):
            claim = document_claim(Document(action, "stand-in", "stand-in runbook", None, action))
            signature = ProvenancePolicy().signer("operator/test").sign(claim, RUNBOOK_CONTEXT)
            out[action] = {"claim": claim.decode(), "signature": signature.to_dict()}
        return out


def _features(lossy: bool) -> npt.NDArray[np.float32]:
    f = np.array([[HEALTHY[name] for name in FEATURES] for _ in range(N)], dtype=np.float32)
    if lossy:
        f[[3, 5, 6], FEATURE_INDEX["loss_ratio"]] = 0.3
        f[[3, 5, 6], FEATURE_INDEX["latency_mean_ms"]] = 120.0
    return f


def test_a_lossy_uplink_is_rerouted_at_its_root_naming_the_next_hop_and_judged_after_settling() -> None:
    scorer = _Scorer()
    config = ControllerConfig(mode="static", audit=False, ingest_resolved=False)
    core = ControllerCore(_view(), config, scorer, _Runbooks("reroute"), KnowledgeStore(":memory:"), "t")
    for tick in range(12):  # healthy: baselines settle
        core.step(tick, _features(False))
    scorer.scores[[3, 5, 6]] = [5.0, 9.0, 6.0]  # severe: confirmed at once; 5 is the loudest symptom
    decided = next(t for t in range(12, 18) if core.step(t, _features(True)).actions)
    (incident,) = core.incidents
    attempt = incident.attempts[0]
    assert (attempt.action, attempt.node, attempt.peer, attempt.tick) == ("reroute", 3, 1, decided + 1)
    # The reroute fixed the root's path; the scores below it have not come down yet.
    scorer.scores[3] = 0.1
    for tick in range(decided + 1, decided + 20):
        core.step(tick, _features(False))
        if attempt.outcome is not None:
            break
    assert attempt.judged_tick == decided + config.settle_ticks["reroute"]
    assert attempt.outcome == "success"
    assert incident.status == "resolved"
    assert set(core.step(decided + 8, _features(False)).alarmed) == {5, 6}  # symptoms, not the fault's own


def test_a_blackhole_is_quarantined_not_rate_limited_or_rerouted_and_stops_alarming_once_quarantined() -> (
    None
):
    scorer = _Scorer()
    config = ControllerConfig(mode="static", audit=False, ingest_resolved=False)
    # The first three runbooks (of rag_k = 3) name a rate limit (its rx surged), a reroute and more
    # capacity: none can be taken on a blackhole, so the runbooks are asked again, wider.
    runbooks = _Runbooks("rate_limit", "reroute", "scale_capacity", "isolate_node")
    core = ControllerCore(_view(), config, scorer, runbooks, KnowledgeStore(":memory:"), "t")
    for tick in range(12):
        core.step(tick, _features(False))
    # 4 swallows what 3, 5 and 6 now send it: they lose everything and alarm loudest; 4 looks calm.
    hole = _features(False)
    hole[[3, 5, 6], FEATURE_INDEX["loss_ratio"]] = 1.0
    hole[[3, 5, 6], FEATURE_INDEX["latency_mean_ms"]] = 3000.0
    hole[4, FEATURE_INDEX["rx_bytes_per_s"]] = 6e5
    hole[4, FEATURE_INDEX["tx_bytes_per_s"]] = 3e4
    scorer.scores[[3, 4, 5, 6]] = [9.0, 1.5, 9.0, 9.0]
    decided = next(t for t in range(12, 30) if core.step(t, hole).actions)
    (incident,) = core.incidents
    assert [(a.action, a.node) for a in incident.attempts] == [("isolate_node", 4)]
    quarantined = _features(False)
    quarantined[4] = 0.0  # out of routing: nothing in, nothing out, no route
    quarantined[4, FEATURE_INDEX["loss_ratio"]] = 1.0
    scorer.scores[[3, 5, 6]] = 0.1
    scorer.scores[4] = 9.0
    for tick in range(decided + 1, decided + 20):
        step = core.step(tick, quarantined)
        if incident.attempts[0].outcome is not None:
            assert 4 not in step.alarmed  # while verifying, its incident's nodes are RECOVERING
    assert incident.attempts[0].outcome == "success"
    assert incident.attempts[0].judged_tick == decided + config.settle_ticks["isolate_node"]
    assert incident.status == "resolved"
    assert len(core.incidents) == 1  # the quarantined node opened no incident of its own


def test_alarms_whose_routes_a_blackhole_captured_join_its_incident_beyond_the_correlation_radius() -> None:
    scorer = _Scorer()
    config = ControllerConfig(mode="static", correlation_hops=0, audit=False, ingest_resolved=False)
    core = ControllerCore(_view(), config, scorer, None, KnowledgeStore(":memory:"), "t")
    for tick in range(12):
        core.step(tick, _features(False))
    hole = _features(False)  # 4 takes traffic in and forwards none
    hole[4, FEATURE_INDEX["rx_bytes_per_s"]] = 6e5
    hole[4, FEATURE_INDEX["tx_bytes_per_s"]] = 3e4
    scorer.scores[4] = 5.0
    for tick in range(12, 16):
        core.step(tick, hole)
    (incident,) = core.incidents
    assert incident.root == 4
    # 5 routes through 3 into 4 (posing as a root); 2 routes to the gateway: its alarm is its own.
    scorer.scores[[5, 2]] = 9.0
    for tick in range(16, 20):
        core.step(tick, hole)
    assert 5 in incident.nodes and 2 not in incident.nodes
    assert [sorted(i.nodes) for i in core.incidents[1:]] == [[2]]
