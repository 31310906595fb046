"""Snapshot scoring: window and stream inputs match the training inputs; batching graphs changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from x0tta6bl4.models.data import GraphSeries, ScenarioSpec, simulate
from x0tta6bl4.models.graphsage import DetectorSpec, GraphSAGEDetector
from x0tta6bl4.models.inference import (
    GraphInputs,
    score_graphs,
    symmetric_edges,
    window_inputs,
)
from x0tta6bl4.models.training import score_series
from x0tta6bl4.telemetry.windows import RollingInputs, StreamingInputs

SPEC = DetectorSpec.load()


@pytest.fixture(scope="module")
def recorded() -> tuple[GraphSeries, np.ndarray]:
    from x0tta6bl4.mesh.pipeline import LocalMesh
    from x0tta6bl4.mesh.shard import MeshSpec
    from x0tta6bl4.mesh.topology import TopologySpec

    topo_spec = TopologySpec(120, 1, seed=5)
    mesh = LocalMesh(topo_spec.build(), MeshSpec(topo_spec, seed=5))
    raw = np.stack([mesh.frame(mesh.step()).features for _ in range(50)])
    mesh.close()
    series = simulate(
        ScenarioSpec(nodes=120, regions=1, ticks=50, seed=5, faults_per_1000_ticks=0), SPEC.window
    )[0]
    return series, raw


def test_a_warm_window_gives_the_streaming_inputs(recorded: tuple[GraphSeries, np.ndarray]) -> None:
    _, raw = recorded
    stream = StreamingInputs(SPEC.window)
    for tick in raw[:-1]:
        stream.push(tick)
    expected = stream.push(raw[-1])
    assert expected is not None
    x, y, warm = window_inputs(SPEC.window, raw)
    assert warm
    np.testing.assert_allclose(x, expected[0])
    np.testing.assert_allclose(y, expected[1])


def test_a_short_window_still_scores_and_says_it_is_not_warm(
    recorded: tuple[GraphSeries, np.ndarray],
) -> None:
    _, raw = recorded
    x, _y, warm = window_inputs(SPEC.window, raw[:3])
    assert not warm
    assert x.shape == (raw.shape[1], SPEC.window.input_dim) and np.isfinite(x).all()


def test_a_stream_starts_over_when_its_node_set_changes(recorded: tuple[GraphSeries, np.ndarray]) -> None:
    _, raw = recorded
    rolling = RollingInputs(SPEC.window)
    for tick in raw[:5]:
        rolling.push(tick, node_key=("a",))
    assert rolling.ticks == 5
    rolling.push(raw[5], node_key=("b",))
    assert rolling.ticks == 1


def test_scoring_graphs_together_equals_scoring_each_alone(recorded: tuple[GraphSeries, np.ndarray]) -> None:
    series, _ = recorded
    torch.manual_seed(0)
    model = GraphSAGEDetector(SPEC).eval()
    graphs = []
    for t in series.valid_ticks[:3]:
        x, y = series.inputs.at(t)
        graphs.append(GraphInputs(x, y, series.edge_index))
    together = score_graphs(model, graphs)
    alone = [score_graphs(model, [g])[0] for g in graphs]
    for a, b in zip(together, alone, strict=False):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    reference = score_series(model, series, ticks=series.valid_ticks[:1])[0]
    np.testing.assert_allclose(alone[0], reference, rtol=1e-5, atol=1e-5)


def test_symmetric_edges_add_the_reverse_direction_once_and_drop_self_loops() -> None:
    edges = symmetric_edges(np.array([[0, 1], [1, 0], [2, 2], [1, 2]]), 3)
    assert sorted(map(tuple, edges.T.tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1)]
