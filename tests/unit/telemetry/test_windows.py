"""Detector inputs: robust per-node baselines, streaming equals batch, NaN and schema handling."""

from __future__ import annotations

import numpy as np
import pytest

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.telemetry.frame import FEATURE_INDEX, FEATURES
from x0tta6bl4.telemetry.windows import SeriesInputs, StreamingInputs, WindowSpec, transform

SPEC = WindowSpec(history_ticks=3, baseline_ticks=8)


def _noise(ticks: int, nodes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.1, 0.5, size=(1, nodes, len(FEATURES)))
    return (base * (1 + 0.05 * rng.standard_normal((ticks, nodes, len(FEATURES))))).astype(np.float32)


def test_input_and_target_widths_follow_the_spec() -> None:
    series = SeriesInputs(SPEC, transform(SPEC, _noise(20, 5)))
    x, y = series.at(series.first_valid)
    assert x.shape == (5, SPEC.input_dim) and y.shape == (5, SPEC.target_dim)
    assert SPEC.input_dim == len(FEATURES) * 4 and SPEC.target_dim == 2 * len(FEATURES)


def test_ticks_before_the_warm_up_are_refused() -> None:
    series = SeriesInputs(SPEC, transform(SPEC, _noise(20, 3)))
    with pytest.raises(IndexError, match="outside"):
        series.at(series.first_valid - 1)


def test_a_fault_longer_than_the_baseline_window_stays_visible() -> None:
    raw = _noise(80, 4)
    cpu = FEATURE_INDEX["cpu_util"]
    raw[30:, 0, cpu] = 0.95  # node 0 saturates for 50 ticks, six baseline windows
    series = SeriesInputs(SPEC, transform(SPEC, raw))
    z_last = series.at(79)[1][:, len(FEATURES) + cpu]
    assert z_last[0] > 5.0, "the baseline absorbed a lasting fault"
    assert np.all(np.abs(z_last[1:]) < 5.0)


def test_streaming_inputs_equal_batch_inputs() -> None:
    raw = _noise(30, 6, seed=3)
    batch = SeriesInputs(SPEC, transform(SPEC, raw))
    stream = StreamingInputs(SPEC)
    outputs = [stream.push(raw[t]) for t in range(30)]
    assert all(o is None for o in outputs[: batch.first_valid])
    for t in range(batch.first_valid, 30):
        got = outputs[t]
        assert got is not None
        np.testing.assert_allclose(got[0], batch.at(t)[0], rtol=1e-5, atol=1e-5)


def test_missing_features_of_a_real_host_become_zero_not_nan() -> None:
    raw = _noise(20, 2)
    raw[:, 1, FEATURE_INDEX["latency_p95_ms"]] = np.nan  # procfs cannot measure it
    x, y = SeriesInputs(SPEC, transform(SPEC, raw)).at(19)
    assert np.isfinite(x).all() and np.isfinite(y).all()


def test_frames_with_other_columns_are_refused_with_the_difference() -> None:
    with pytest.raises(ConfigError, match=r"missing \['links_up'\]"):
        SPEC.check_features(tuple(n for n in FEATURES if n != "links_up"))
    with pytest.raises(ConfigError, match="different order"):
        SPEC.check_features(tuple(reversed(FEATURES)))
