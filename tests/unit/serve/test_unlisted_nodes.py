"""The anomaly app gives a node without a record (an all-NaN row) no score and no alarm, and leaves it out of the graph."""

from __future__ import annotations

import numpy as np
import pytest

from x0tta6bl4.mesh.pipeline import LocalMesh
from x0tta6bl4.mesh.shard import MeshSpec
from x0tta6bl4.mesh.topology import TopologySpec
from x0tta6bl4.models.bootstrap import BootstrapConfig, bootstrap_detector
from x0tta6bl4.models.registry import ModelRegistry
from x0tta6bl4.security.provenance import ProvenanceConfig, ProvenancePolicy
from x0tta6bl4.serve.anomaly import AnomalyScorer
from x0tta6bl4.serve.config import AnomalyConfig, AnomalyUserConfig
from x0tta6bl4.serve.snapshot import Snapshot
from x0tta6bl4.telemetry.frame import FEATURES

TOPO = TopologySpec(120, 2, seed=3)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> AnomalyScorer:
    root = tmp_path_factory.mktemp("unlisted")
    provenance = ProvenanceConfig(ca_dir=str(root / "ca"), ledger_dir=str(root / "ledger"))
    registry = ModelRegistry(str(root / "registry"))
    bootstrap_detector(
        registry, BootstrapConfig(nodes=120, ticks=40, epochs=1), provenance=ProvenancePolicy(provenance)
    )
    out = AnomalyScorer(AnomalyConfig(registry=registry.uri, provenance=provenance, bootstrap=False))
    out.apply(AnomalyUserConfig())
    return out


def test_a_nan_row_scores_zero_never_alarms_and_leaves_the_graph(scorer: AnomalyScorer) -> None:
    topology = TOPO.build()
    mesh = LocalMesh(topology, MeshSpec(topology=TOPO, seed=3))
    columns = [FEATURES.index(f) for f in scorer.model.get().features]
    window = np.stack([mesh.frame(mesh.step()).features[:, columns] for _ in range(12)])
    pairs = topology.edges.astype(np.int32)
    node = int(np.flatnonzero(~topology.gateways)[0])
    window[-1, node] = np.nan
    scorer.apply_thresholds(1e-9, {})  # every node with a score alarms
    snapshot = Snapshot(list(range(topology.num_nodes)), window, pairs)
    (out,) = scorer.score_many([(snapshot, None)])
    assert out["scores"][node] == 0.0
    alarmed = {a["node_id"] for a in out["alarms"]}
    assert node not in alarmed and len(alarmed) > 10
    assert np.isfinite(out["scores"]).all()
    graph, _, _ = scorer.inputs(snapshot, None, scorer.model.get().detector.spec.window)
    assert node not in graph.edge_index and graph.edge_index.shape[1] < 2 * len(pairs)
