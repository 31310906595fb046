"""A node without a record (an all-NaN row: not a mesh member) never alarms and teaches the controller nothing."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from x0tta6bl4.mapek.config import ControllerConfig
from x0tta6bl4.mapek.core import ControllerCore
from x0tta6bl4.mapek.knowledge import KnowledgeStore
from x0tta6bl4.telemetry.frame import FEATURE_INDEX, FEATURES

from .test_core_rootcause import _Scorer
from .test_rootcause import HEALTHY, N, _view


def _features() -> npt.NDArray[np.float32]:
    return np.array([[HEALTHY[name] for name in FEATURES] for _ in range(N)], dtype=np.float32)


def _core(mode: str = "learning") -> tuple[ControllerCore, _Scorer]:
    scorer = _Scorer()
    config = ControllerConfig(mode=mode, audit=False, ingest_resolved=False, learn_warmup_ticks=4)  # type: ignore[arg-type]
    core = ControllerCore(_view(), config, scorer, None, KnowledgeStore(":memory:"), "t")
    for tick in range(12):  # healthy: baselines and thresholds settle
        core.step(tick, _features())
    return core, scorer


def test_a_node_that_leaves_never_alarms_even_with_a_high_score_and_is_not_learned_from() -> None:
    core, scorer = _core()
    baseline = core.baselines.level[5].copy()
    history = core.learner.history.copy()
    scorer.scores[5] = 50.0  # whatever a scorer makes of a missing row, it is not data
    for tick in range(12, 30):
        f = _features()
        f[5] = np.nan
        step = core.step(tick, f)
        assert 5 not in step.alarmed
    assert not core.incidents
    assert np.array_equal(core.baselines.level[5], baseline)
    # The learner carried the node's last healthy score instead of learning from the gap.
    assert set(np.unique(core.learner.history[:, 5])) <= set(np.unique(history[:, 5]))


def test_a_crash_record_still_alarms_where_no_record_does_not() -> None:
    core, _ = _core(mode="static")
    f = _features()
    f[5] = 0.0  # the collector's "unreachable" record
    f[5, FEATURE_INDEX["loss_ratio"]] = 1.0
    f[5, FEATURE_INDEX["latency_mean_ms"]] = f[5, FEATURE_INDEX["latency_p95_ms"]] = 3000.0
    f[6] = np.nan  # not a member
    step = core.step(12, f)
    assert 5 in step.alarmed and 6 not in step.alarmed


def test_a_node_that_rejoins_raises_no_memory_trend_across_its_gap() -> None:
    core, _ = _core()
    for tick in range(12, 24):
        f = _features()
        f[5] = np.nan
        core.step(tick, f)
    for tick in range(24, 30):  # back, with a higher memory level than before it left
        f = _features()
        f[5, FEATURE_INDEX["mem_util"]] = 0.7
        assert 5 not in core.step(tick, f).alarmed


def test_static_mode_uses_the_configured_threshold_for_every_node() -> None:
    core, _ = _core(mode="static")
    assert np.all(core.learner.thresholds == 1.0)  # the served model's (the stand-in's) threshold
    tuned = ControllerConfig(mode="static", static_threshold=2.5, audit=False)
    other = ControllerCore(_view(), tuned, _Scorer(), None, KnowledgeStore(":memory:"), "u")
    assert np.all(other.learner.thresholds == 2.5)
    learning = ControllerConfig(static_threshold=2.5, audit=False)
    assert (
        ControllerCore(
            _view(), learning, _Scorer(), None, KnowledgeStore(":memory:"), "v"
        ).learner.thresholds[0]
        == 1.0
    )  # learning mode ignores it (warming up: the served model's threshold)
