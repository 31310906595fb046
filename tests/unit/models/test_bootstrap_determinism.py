"""bootstrap_detector trains one detector per seed, whatever the process drew or set before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from x0tta6bl4.models.bootstrap import SMALL_BOOTSTRAP, bootstrap_detector
from x0tta6bl4.models.registry import ModelRegistry


def _weights(registry: ModelRegistry) -> dict[str, np.ndarray]:
    loaded = registry.load("graphsage-anomaly")
    return {k: np.asarray(v) for k, v in loaded.tensors.items()}


def test_the_same_seed_gives_the_same_detector_after_other_draws_and_on_other_thread_counts(
    tmp_path: Path,
) -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = ModelRegistry(str(tmp_path / "a"))
        bootstrap_detector(first, SMALL_BOOTSTRAP)
        torch.randn(1000)  # what a model built before would draw
        torch.set_num_threads(1)
        second = ModelRegistry(str(tmp_path / "b"))
        bootstrap_detector(second, SMALL_BOOTSTRAP)
    finally:
        torch.set_num_threads(threads)
    a, b = _weights(first), _weights(second)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert torch.get_num_threads() == threads
