"""ThresholdLearner, LeakWatch, neighbour_max and trend_slope: per-node thresholds and memory-noise
spreads learned from healthy ticks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from x0tta6bl4.mapek.config import ControllerConfig
from x0tta6bl4.mapek.thresholds import LeakWatch, ThresholdLearner, neighbour_max, trend_slope

STATIC = 1000.0
STRATEGIES = ("percentile", "sigma", "iqr", "ensemble")


def _healthy_scores(rng: np.random.Generator, ticks: int) -> np.ndarray:
    """Two nodes with different healthy levels: ~100 +- 5 and ~300 +- 20."""
    return np.stack([rng.normal(100.0, 5.0, ticks), rng.normal(300.0, 20.0, ticks)], axis=1).astype(
        np.float32
    )


def _feed(learner: ThresholdLearner, rows: np.ndarray, learn: np.ndarray | None = None) -> None:
    for row in rows:
        mask = np.ones(row.shape[0], dtype=bool) if learn is None else learn
        learner.observe(row.astype(np.float32), mask)


def test_static_mode_gives_the_static_threshold_to_every_node_and_learns_nothing() -> None:
    cfg = ControllerConfig(mode="static")
    learner = ThresholdLearner(3, cfg, STATIC)
    rng = np.random.default_rng(0)
    _feed(learner, rng.normal(10.0, 1.0, (80, 3)))
    learner.adjust([0, 1], 5.0)
    assert np.array_equal(learner.thresholds, np.full(3, STATIC))
    assert learner.filled == 0
    assert not learner.history.any()
    assert np.array_equal(learner.multiplier, np.ones(3))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_learning_mode_learns_per_node_thresholds_between_noisy_healthy_scores_and_a_clear_anomaly(
    strategy: str,
) -> None:
    cfg = ControllerConfig(mode="learning", strategy=strategy, threshold_floor_share=0.0)
    learner = ThresholdLearner(2, cfg, STATIC)
    healthy = _healthy_scores(np.random.default_rng(1), cfg.history_ticks)
    _feed(learner, healthy)
    thr = learner.thresholds
    assert np.all(thr > healthy.max(axis=0)), "a healthy score would alarm"
    assert thr[0] < 500.0 and thr[1] < 1500.0, "a 5x anomaly would not alarm"
    assert thr[1] > thr[0], "thresholds are not per node"
    assert np.all(thr < STATIC), "the node did not learn its own (lower) level"


def test_thresholds_stay_static_until_the_warmup_is_filled() -> None:
    cfg = ControllerConfig(learn_warmup_ticks=10, refit_every_ticks=1, threshold_floor_share=0.0)
    learner = ThresholdLearner(2, cfg, STATIC)
    healthy = _healthy_scores(np.random.default_rng(2), 10)
    _feed(learner, healthy[:9])
    assert np.array_equal(learner.thresholds, np.full(2, STATIC))
    _feed(learner, healthy[9:])
    assert np.all(learner.thresholds < STATIC)


def test_alarmed_nodes_do_not_pull_their_threshold_up() -> None:
    cfg = ControllerConfig(threshold_floor_share=0.0)
    rng = np.random.default_rng(3)
    warm = _healthy_scores(rng, 30)
    anomaly = np.tile(np.array([5000.0, 300.0], dtype=np.float32), (cfg.history_ticks, 1))
    learns = ThresholdLearner(2, cfg, STATIC)
    guarded = ThresholdLearner(2, cfg, STATIC)
    _feed(learns, warm)
    _feed(guarded, warm)
    before = guarded.thresholds.copy()
    _feed(learns, anomaly)  # learn=True: the anomaly becomes normal (the contrast)
    _feed(guarded, anomaly, learn=np.array([False, True]))
    assert learns.thresholds[0] >= 5000.0
    assert guarded.thresholds[0] <= before[0]
    assert guarded.thresholds[0] < 500.0
    # The node's carried history is its last healthy value, not the anomaly.
    assert np.all(guarded.history[:, 0] == warm[-1, 0])


def test_a_node_alarmed_from_the_first_tick_does_not_learn_its_anomaly_as_normal() -> None:
    cfg = ControllerConfig(threshold_floor_share=0.0, learn_warmup_ticks=10)
    learner = ThresholdLearner(2, cfg, STATIC)
    rng = np.random.default_rng(4)
    learn = np.array([False, True])
    for _ in range(cfg.history_ticks):
        learner.observe(np.array([5000.0, rng.normal(100.0, 5.0)], dtype=np.float32), learn)
    assert learner.thresholds[0] < 5000.0, "a fault present from the start taught the node that it is normal"
    assert learner.thresholds[0] <= STATIC
    assert learner.thresholds[1] < 200.0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_gives_finite_thresholds_at_or_above_the_floor(strategy: str) -> None:
    cfg = ControllerConfig(strategy=strategy, threshold_floor_share=0.5)
    floor = cfg.threshold_floor_share * STATIC
    rng = np.random.default_rng(5)
    n = 6
    learner = ThresholdLearner(n, cfg, STATIC)
    scores = np.concatenate(
        [
            rng.lognormal(3.0, 1.5, (cfg.history_ticks, 3)),  # heavy tailed
            np.full((cfg.history_ticks, 1), 7.0),  # constant, below the floor
            np.zeros((cfg.history_ticks, 1)),  # all zero
            rng.normal(1e4, 1.0, (cfg.history_ticks, 1)),  # large and tight
        ],
        axis=1,
    )
    _feed(learner, scores)
    thr = learner.thresholds
    assert np.all(np.isfinite(thr))
    assert np.all(thr >= floor)
    assert thr[3] == floor and thr[4] == floor
    assert thr[5] > 1e4


def _expected(strategy: str, h: np.ndarray, cfg: ControllerConfig) -> np.ndarray:
    h = h.astype(np.float64)
    q25, q50, q75, qp = np.percentile(h, [25.0, 50.0, 75.0, cfg.percentile], axis=0)
    candidates = {
        "percentile": q50 + cfg.percentile_margin * (qp - q50),
        "sigma": h.mean(axis=0) + cfg.sigma_k * h.std(axis=0),
        "iqr": q75 + cfg.iqr_k * (q75 - q25),
    }
    if strategy == "ensemble":
        return np.median(np.stack(list(candidates.values())), axis=0)
    return candidates[strategy]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_computes_its_documented_formula(strategy: str) -> None:
    cfg = ControllerConfig(strategy=strategy, threshold_floor_share=0.0, sigma_k=3.0, iqr_k=1.5)
    learner = ThresholdLearner(2, cfg, STATIC)
    scores = _healthy_scores(np.random.default_rng(6), cfg.history_ticks)
    _feed(learner, scores)
    np.testing.assert_allclose(learner.thresholds, _expected(strategy, scores, cfg), rtol=1e-9)


def test_the_history_is_a_window_of_the_latest_history_ticks() -> None:
    cfg = ControllerConfig(strategy="sigma", threshold_floor_share=0.0, history_ticks=20, refit_every_ticks=1)
    learner = ThresholdLearner(1, cfg, STATIC)
    _feed(learner, np.full((20, 1), 1000.0))
    assert learner.thresholds[0] == pytest.approx(1000.0)
    _feed(learner, np.full((20, 1), 100.0))  # the old level has left the window
    assert learner.thresholds[0] == pytest.approx(100.0)


def test_adjust_scales_only_the_named_nodes_within_the_multiplier_bounds() -> None:
    cfg = ControllerConfig(multiplier_bounds=(0.5, 8.0))
    learner = ThresholdLearner(3, cfg, STATIC)
    learner.adjust([0], 1.25)
    assert learner.thresholds[0] == pytest.approx(1.25 * STATIC)
    for _ in range(20):
        learner.adjust([0], 1.25)
        learner.adjust([1], 0.9)
    assert learner.multiplier[0] == pytest.approx(8.0)
    assert learner.multiplier[1] == pytest.approx(0.5)
    assert learner.multiplier[2] == 1.0
    np.testing.assert_allclose(learner.thresholds, [8.0 * STATIC, 0.5 * STATIC, STATIC])


def _trained(seed: int) -> ThresholdLearner:
    cfg = ControllerConfig(threshold_floor_share=0.0)
    learner = ThresholdLearner(2, cfg, STATIC)
    _feed(learner, _healthy_scores(np.random.default_rng(seed), 37))
    learner.adjust([1], 1.25)
    return learner


def test_state_round_trip_reproduces_thresholds_and_continued_learning() -> None:
    a = _trained(7)
    b = ThresholdLearner(2, a.config, STATIC)
    b.load_state(a.state())
    np.testing.assert_array_equal(b.thresholds, a.thresholds)
    assert (b.filled, b.position) == (a.filled, a.position)
    more = _healthy_scores(np.random.default_rng(8), 25)
    _feed(a, more)
    _feed(b, more)
    np.testing.assert_array_equal(b.history, a.history)
    # The refit phase is not part of the state; refit both to compare what they learned.
    a.refit()
    b.refit()
    np.testing.assert_array_equal(b.thresholds, a.thresholds)


def test_state_is_a_snapshot_not_a_view_of_the_live_learner() -> None:
    a = _trained(9)
    snapshot = a.state()
    saved_history, saved_multiplier = snapshot["history"].copy(), snapshot["multiplier"].copy()
    b = ThresholdLearner(2, a.config, STATIC)
    b.load_state(a.state())
    _feed(a, np.full((5, 2), 777.0))
    a.adjust([0], 2.0)
    np.testing.assert_array_equal(snapshot["history"], saved_history)
    np.testing.assert_array_equal(snapshot["multiplier"], saved_multiplier)
    assert not np.any(b.history == 777.0), "loading a state shares buffers with the learner it came from"
    assert b.multiplier[0] == 1.0


def test_load_state_is_ignored_when_the_node_count_changed() -> None:
    a = _trained(10)
    c = ThresholdLearner(3, a.config, STATIC)
    c.load_state(a.state())
    assert c.filled == 0
    np.testing.assert_array_equal(c.thresholds, np.full(3, STATIC))


def test_reset_parameters_forgets_everything_learned() -> None:
    learner = _trained(11)
    learner.reset_parameters()
    assert learner.filled == 0
    np.testing.assert_array_equal(learner.thresholds, np.full(2, STATIC))


def test_neighbour_max_takes_the_largest_neighbour_value_and_zero_without_neighbours() -> None:
    # Path 0 - 1 - 2, node 3 isolated, 4 - 0 as well: 0's neighbours are 1 and 4.
    edges = [(0, 1), (1, 2), (0, 4)]
    rows = [a for a, b in edges] + [b for a, b in edges]
    cols = [b for a, b in edges] + [a for a, b in edges]
    adjacency = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(5, 5))
    values = np.array([1.0, 5.0, 2.0, 7.0, 3.0])
    np.testing.assert_array_equal(neighbour_max(values, adjacency), [5.0, 2.0, 5.0, 0.0, 1.0])


def test_neighbour_max_ignores_the_node_own_value() -> None:
    adjacency = csr_matrix(np.array([[0, 1], [1, 0]], dtype=np.float64))
    np.testing.assert_array_equal(neighbour_max(np.array([9.0, 0.0]), adjacency), [0.0, 9.0])


def test_trend_slope_recovers_known_linear_slopes() -> None:
    t = np.arange(10, dtype=np.float64)
    series = np.stack([0.3 + 0.01 * t, 0.9 - 0.02 * t, np.full(10, 0.5)], axis=1)
    np.testing.assert_allclose(trend_slope(series), [0.01, -0.02, 0.0], atol=1e-12)


def test_trend_slope_is_close_to_the_true_slope_under_noise() -> None:
    rng = np.random.default_rng(12)
    t = np.arange(200, dtype=np.float64)
    series = (0.1 + 0.008 * t)[:, None] + rng.normal(0.0, 0.01, (200, 4))
    np.testing.assert_allclose(trend_slope(series), np.full(4, 0.008), atol=5e-4)


#: Healthy ``mem_util`` wanders by this much a tick (the simulator's noise); the slowest leak the
#: simulator makes grows ``0.45 / (0.66 * 60)`` a tick.
MEM_NOISE = 0.002
SLOWEST_LEAK = 0.45 / (0.66 * 60)


def _wander(rng: np.random.Generator, ticks: int, nodes: int, start: float = 0.4) -> np.ndarray:
    return start + np.cumsum(rng.normal(0.0, MEM_NOISE, (ticks, nodes)), axis=0)


def _watch(watch: LeakWatch, rows: np.ndarray, reporting: np.ndarray | None = None) -> list[np.ndarray]:
    alarms = []
    everyone = np.ones(rows.shape[1], dtype=bool)
    for i, row in enumerate(rows):
        up = everyone if reporting is None else reporting[i]
        watch.update(row, up, learn=~watch.alarms)
        alarms.append(watch.alarms.copy())
    return alarms


def test_the_slowest_leak_alarms_within_a_few_ticks_while_memory_is_still_low() -> None:
    rng = np.random.default_rng(10)
    mem = _wander(rng, 60, 2)
    mem[30:, 1] += SLOWEST_LEAK * np.arange(1, 31)  # node 1 leaks from tick 30
    watch = LeakWatch(2)
    alarms = np.array(_watch(watch, mem))
    first = int(np.argmax(alarms[:, 1]))
    assert 30 <= first <= 34, first
    assert mem[first, 1] < 0.5, "the fixed trend check (0.6) would still be waiting"
    assert not alarms[:, 0].any()
    assert watch.growth_per_tick[1] == pytest.approx(SLOWEST_LEAK, rel=0.35)


def test_healthy_memory_that_wanders_for_a_long_run_never_alarms() -> None:
    watch = LeakWatch(2000)
    alarms = np.array(_watch(watch, _wander(np.random.default_rng(11), 300, 2000)))
    assert not alarms.any()  # 600,000 node-ticks
    assert np.sqrt(watch.variance).mean() == pytest.approx(MEM_NOISE, rel=0.1), "the spread is learned"


def test_each_node_is_judged_against_its_own_spread() -> None:
    rng = np.random.default_rng(12)
    mem = _wander(rng, 80, 20)  # node 1 wanders ten times as much as the other 19
    mem[:, 1] = 0.4 + np.cumsum(rng.normal(0.0, 10 * MEM_NOISE, 80))
    mem[40:, :2] += 5 * MEM_NOISE * np.arange(1, 41)[:, None]  # the same growth on nodes 0 and 1
    alarms = np.array(_watch(LeakWatch(20), mem))
    assert alarms[:, 0].any(), "growth well above node 0's noise is a leak"
    assert not alarms[:, 1].any(), "the same growth is within node 1's own noise"
    assert not alarms[:, 2:].any()


def test_a_node_with_a_few_quiet_ticks_is_judged_by_the_meshs_typical_spread_until_it_has_seen_more() -> None:
    rng = np.random.default_rng(16)
    mem = _wander(rng, 40, 50)
    mem[:10, 0] = 0.3 + np.arange(10) * 1e-5  # node 0's first ticks: nearly flat
    mem[10:, 0] = 0.3 + np.cumsum(rng.normal(0.0, MEM_NOISE, 30))
    watch = LeakWatch(50)
    quiet = _watch(watch, mem[:10])
    assert np.sqrt(watch.variance[0]) < 0.1 * MEM_NOISE  # its own estimate: far too small
    alarms = np.array(quiet + _watch(watch, mem[10:]))
    assert not alarms.any()  # yet ordinary noise after the quiet start raises no alarm


def test_a_node_back_from_a_reboot_or_a_gap_starts_a_new_series_and_does_not_alarm() -> None:
    mem = _wander(np.random.default_rng(13), 40, 1)
    reporting = np.ones((40, 1), dtype=bool)
    reporting[20:23] = False  # down (the collector's unreachable record: mem_util 0)
    mem[20:23] = 0.0
    mem[23:] += 0.3  # back at another level
    mem[30, 0] = np.nan  # no record this tick
    assert not np.array(_watch(LeakWatch(1), mem, reporting)).any()


def test_no_alarm_before_the_warmup_and_growth_is_never_learned_as_noise() -> None:
    watch = LeakWatch(1, warmup_ticks=8)
    leak = 0.4 + 0.05 * np.arange(1, 9)[:, None]  # growing from the first tick on
    assert not np.array(_watch(watch, leak)).any(), "no spread learned yet"
    rng = np.random.default_rng(14)
    watch = LeakWatch(1)
    _watch(watch, _wander(rng, 30, 1))
    spread = np.sqrt(watch.variance[0])
    _watch(watch, 0.5 + 0.02 * np.arange(1, 31)[:, None])
    assert watch.alarms[0]
    assert np.sqrt(watch.variance[0]) == pytest.approx(spread), "the leak's ticks taught nothing"


def test_the_learned_spreads_survive_a_restart_but_not_a_new_node_count() -> None:
    watch = LeakWatch(3)
    _watch(watch, _wander(np.random.default_rng(15), 30, 3))
    resumed = LeakWatch(3)
    resumed.load_state(watch.state())
    assert np.array_equal(resumed.variance, watch.variance)
    assert np.array_equal(resumed.learned, watch.learned)
    other = LeakWatch(4)
    other.load_state(watch.state())
    other.load_state({})  # a checkpoint written before the watch existed
    assert not other.learned.any()
