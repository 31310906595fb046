"""A federated client's model plumbing: personalised models and scoring a window of ticks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from x0tta6bl4.federated import task
from x0tta6bl4.models import lora
from x0tta6bl4.models.data import GraphSeries, ScenarioSpec, simulate
from x0tta6bl4.models.graphsage import DetectorSpec, GraphSAGEDetector

SPEC = DetectorSpec.load()


@pytest.fixture(scope="module")
def series() -> GraphSeries:
    return simulate(ScenarioSpec(nodes=200, regions=2, ticks=60, seed=6), SPEC.window)[0]


def _adapters(base: dict[str, np.ndarray], seed: int, scale: float) -> dict[str, np.ndarray]:
    """Adapters with non-zero B matrices (fresh ones are a no-op) and a given error scale."""
    arrays = task.initial_arrays(SPEC, "lora", seed, base)
    rng = np.random.default_rng(seed)
    for name in arrays:
        if "lora_B" in name:
            arrays[name] = rng.normal(0.0, 0.05, arrays[name].shape).astype(np.float32)
    arrays["error_scale"] = np.full_like(arrays["error_scale"], scale)
    return arrays


def test_a_personalised_model_keeps_its_own_adapters_and_the_federations_error_scale(
    series: GraphSeries,
) -> None:
    torch.manual_seed(0)
    base = lora.full_arrays(GraphSAGEDetector(SPEC))
    own, shared = _adapters(base, 1, 0.1), _adapters(base, 2, 2.0)

    model = task.personalised(SPEC, own, shared, base)

    arrays = lora.adapter_arrays(model)
    np.testing.assert_array_equal(arrays["error_scale"], shared["error_scale"])
    for name in own:
        if name != "error_scale":
            np.testing.assert_array_equal(arrays[name], own[name])
    # The same adapters with their own scale score in other units: the scale is all that differs.
    mine = task.detector_from(SPEC, "lora", own, base)
    with_own = task.evaluate(mine, series)["mean_score"]
    with_shared = task.evaluate(model, series)["mean_score"]
    assert with_own == pytest.approx(with_shared * (2.0 / 0.1) ** 2, rel=1e-3)


def test_evaluating_a_window_scores_only_its_ticks(series: GraphSeries) -> None:
    model = GraphSAGEDetector(SPEC)
    ticks = range(series.num_ticks - 5, series.num_ticks)
    out = task.evaluate(model, series, ticks)
    assert out["node_ticks"] == 5 * series.num_nodes
    whole = task.evaluate(model, series)
    assert whole["node_ticks"] == len(series.valid_ticks) * series.num_nodes
