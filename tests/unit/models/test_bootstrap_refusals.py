"""load_detector (what the Serve anomaly deployment loads with) refuses versions that cannot serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from x0tta6bl4.models import lora
from x0tta6bl4.models.bootstrap import load_detector
from x0tta6bl4.models.graphsage import DetectorSpec, GraphSAGEDetector
from x0tta6bl4.models.registry import ModelRegistry, RegistryError, UnservableVersionError


def _publish(reg: ModelRegistry, metrics: dict[str, object], poison: bool = False) -> str:
    spec = DetectorSpec.load()
    arrays = lora.full_arrays(GraphSAGEDetector(spec))
    if poison:
        name = sorted(arrays)[0]
        arrays[name] = np.array(arrays[name], copy=True)
        arrays[name].flat[0] = np.nan
    return reg.write_version(spec.name, arrays, spec.to_dict(), metrics, "# detector\n").version


def test_the_serving_loader_refuses_nan_weights_and_non_finite_scores_but_loads_a_sound_version(
    tmp_path: Path,
) -> None:
    reg = ModelRegistry(str(tmp_path))
    sound = _publish(reg, {"score_threshold": 3.5, "train_auprc": 0.8})
    nan_weight = _publish(reg, {"score_threshold": 3.5}, poison=True)
    nan_score = _publish(reg, {"score_threshold": float("inf"), "train_auprc": 0.8})

    detector, loaded = load_detector(reg, sound)
    assert loaded.metrics["score_threshold"] == 3.5 and not detector.training
    for version, reason in ((nan_weight, "weights: "), (nan_score, "metrics: score_threshold")):
        with pytest.raises(UnservableVersionError, match=reason) as info:
            load_detector(reg, version)
        assert isinstance(info.value, RegistryError)  # what Serve's HotSwap keeps the old version on
