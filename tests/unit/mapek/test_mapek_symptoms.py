"""Incident context: per-node feature baselines, deviations above the noise floors, plain descriptions."""

from __future__ import annotations

import numpy as np
import pytest

from x0tta6bl4.mapek.symptoms import FeatureBaselines, describe, deviations, recovering, unexplained
from x0tta6bl4.telemetry.frame import FEATURE_INDEX, FEATURES

HEALTHY = {
    "cpu_util": 0.2,
    "mem_util": 0.4,
    "queue_depth_pkts": 2.0,
    "rx_bytes_per_s": 1e5,
    "tx_bytes_per_s": 1e5,
    "latency_mean_ms": 20.0,
    "latency_p95_ms": 35.0,
    "loss_ratio": 0.001,
    "tcp_retransmits_per_s": 5.0,
    "packet_drops_per_s": 1.0,
    "tcp_resets_per_s": 0.5,
    "links_up": 4.0,
    "runqueue_latency_p95_ms": 1.0,
}


def _vector(**changes: float) -> np.ndarray:
    values = {**HEALTHY, **changes}
    return np.array([values[name] for name in FEATURES], dtype=np.float32)


BASELINE = _vector().astype(np.float64)


def test_the_healthy_profile_covers_every_feature() -> None:
    assert set(HEALTHY) == set(FEATURES)


def test_a_node_whose_cpu_went_to_one_with_normal_traffic_is_described_by_its_cpu() -> None:
    features = _vector(cpu_util=1.0)
    assert deviations(features, BASELINE) == [("cpu_util", pytest.approx(1.0), pytest.approx(0.2))]
    text = describe(553, features, BASELINE)
    assert text.startswith("n=553: ")
    assert "cpu pinned near 1.0 with normal traffic" in text
    assert "cpu_util 1.00 (baseline 0.20)" in text


def test_a_silent_node_is_described_as_silent() -> None:
    features = np.zeros(len(FEATURES), dtype=np.float32)
    text = describe(7, features, BASELINE, gateway=True)
    assert text.startswith("gateway n=7: node silent: no counters, no links up, unreachable")
    # Silence is the story: one counter backs it up, the rest of the zeros are not listed.
    assert text.count(";") == 1
    assert "cpu pinned" not in text


def test_a_node_receiving_twenty_times_its_traffic_and_forwarding_none_attracts_traffic() -> None:
    features = _vector(rx_bytes_per_s=2e6)
    text = describe(11, features, BASELINE)
    assert "attracts transit traffic and forwards none" in text
    assert "traffic surge" not in text
    assert deviations(features, BASELINE)[0][0] == "rx_bytes_per_s"


def test_a_full_queue_with_high_rx_is_a_traffic_surge_not_a_black_hole() -> None:
    features = _vector(rx_bytes_per_s=2e6, queue_depth_pkts=200.0, packet_drops_per_s=400.0)
    text = describe(12, features, BASELINE)
    assert "traffic surge" in text
    assert "attracts transit traffic" not in text


def test_high_memory_is_described_as_swapping() -> None:
    text = describe(3, _vector(mem_util=0.93), BASELINE)
    assert "memory at 0.93, swapping" in text


def test_deviations_ignore_changes_below_the_noise_floors() -> None:
    features = _vector(
        rx_bytes_per_s=5e3,  # a real change: (5e3 + 2e4) / (1e5 + 2e4) is ~5x down
        cpu_util=0.25,  # (0.25 + 0.1) / (0.2 + 0.1) < 1.6
        packet_drops_per_s=10.0,  # (10 + 20) / (1 + 20) < 1.6
        tcp_resets_per_s=3.0,  # (3 + 5) / (0.5 + 5) < 1.6
        loss_ratio=0.01,  # (0.01 + 0.02) / (0.001 + 0.02) < 1.6
    )
    quiet = _vector(rx_bytes_per_s=1e3, cpu_util=0.01)
    low = _vector(rx_bytes_per_s=5e3, cpu_util=0.05)  # 5x rises, but within the floors
    assert deviations(low, quiet.astype(np.float64)) == []
    assert [name for name, _, _ in deviations(features, BASELINE)] == ["rx_bytes_per_s"]
    assert (
        describe(1, low, quiet.astype(np.float64))
        == "n=1: anomaly score high but no single counter stands out"
    )


def test_deviations_list_the_most_changed_feature_first_in_both_directions() -> None:
    features = _vector(latency_p95_ms=400.0, links_up=1.0, cpu_util=0.6)
    names = [name for name, _, _ in deviations(features, BASELINE)]
    # latency (400+15)/(35+15)=8.3x, cpu (0.6+0.1)/(0.2+0.1)=2.3x, links (4+1)/(1+1)=2.5x down
    assert names == ["latency_p95_ms", "links_up", "cpu_util"]


def test_unmeasured_features_count_as_zero() -> None:
    features = _vector()
    features[FEATURE_INDEX["runqueue_latency_p95_ms"]] = np.nan
    features[FEATURE_INDEX["cpu_util"]] = np.nan
    assert [name for name, _, _ in deviations(features, BASELINE)] == ["cpu_util"]


def test_describe_adds_a_memory_trend_and_degraded_neighbours() -> None:
    text = describe(5, _vector(), BASELINE, mem_slope_per_tick=0.012, neighbours_alarmed=3)
    assert text == "n=5: mem_util rising +0.012/tick; 3 neighbours degraded too"
    assert "rising" not in describe(5, _vector(), BASELINE, mem_slope_per_tick=0.003)


def test_describe_lists_at_most_limit_deviations() -> None:
    features = _vector(
        latency_mean_ms=300.0, latency_p95_ms=600.0, loss_ratio=0.5, tcp_retransmits_per_s=900.0
    )
    text = describe(2, features, BASELINE, limit=2)
    assert text.count("(baseline") == 2


def test_feature_baselines_start_at_the_first_healthy_tick_and_follow_with_the_half_life() -> None:
    baselines = FeatureBaselines(2, len(FEATURES), half_life_ticks=20.0)
    zero = np.zeros((2, len(FEATURES)), dtype=np.float32)
    baselines.update(zero, np.array([True, False]))
    assert baselines.seen.tolist() == [True, False]
    one = np.ones((2, len(FEATURES)), dtype=np.float32)
    baselines.update(one, np.array([True, True]))  # node 1's first healthy tick sets its level
    np.testing.assert_allclose(baselines.level[1], 1.0)
    for _ in range(19):
        baselines.update(one, np.array([True, True]))
    np.testing.assert_allclose(baselines.level[0], 0.5, rtol=1e-9)  # 20 ticks: half way


def test_feature_baselines_do_not_follow_unhealthy_nodes() -> None:
    rng = np.random.default_rng(0)
    baselines = FeatureBaselines(3, len(FEATURES))
    first = rng.uniform(0.0, 1.0, (3, len(FEATURES))).astype(np.float32)
    baselines.update(first, np.ones(3, dtype=bool))
    before = baselines.level.copy()
    baselines.update(first * 50.0, np.array([False, True, False]))
    np.testing.assert_array_equal(baselines.level[[0, 2]], before[[0, 2]])
    assert np.all(baselines.level[1] > before[1])


def test_feature_baselines_treat_unmeasured_values_as_zero() -> None:
    baselines = FeatureBaselines(1, len(FEATURES))
    features = np.full((1, len(FEATURES)), np.nan, dtype=np.float32)
    baselines.update(features, np.array([True]))
    assert np.all(np.isfinite(baselines.level)) and not baselines.level.any()


CUT_OFF = _vector(loss_ratio=1.0, latency_mean_ms=3000.0, latency_p95_ms=3000.0).astype(np.float64)


def test_a_node_reconnected_after_being_cut_off_is_recovering_not_failing() -> None:
    assert recovering(_vector(), CUT_OFF)  # latency and loss fell back from seconds and 100 %
    assert recovering(_vector(links_up=4.0), _vector(links_up=1.0).astype(np.float64))  # links came back


def test_a_node_is_not_recovering_when_any_health_counter_worsened_or_a_fault_sign_shows() -> None:
    assert not recovering(_vector(), BASELINE)  # nothing moved: nothing to recover from
    assert not recovering(_vector(cpu_util=1.0), CUT_OFF)  # latency fell, but its cpu is pinned
    assert not recovering(_vector(links_up=2.0), BASELINE)
    # A blackhole's latency and loss look fine; its rx surge and tx collapse are a sign.
    assert not recovering(_vector(rx_bytes_per_s=2e6, tx_bytes_per_s=1e3), CUT_OFF)


def test_traffic_volume_alone_neither_recovers_nor_explains_an_alarm() -> None:
    halved = _vector(rx_bytes_per_s=3e4, tx_bytes_per_s=3e4)
    assert deviations(halved, BASELINE)  # the traffic did move
    assert not recovering(halved, BASELINE)
    assert unexplained(halved, BASELINE)


def test_an_alarm_is_explained_by_a_health_counter_a_sign_or_a_memory_trend() -> None:
    assert unexplained(_vector(), BASELINE)
    assert not unexplained(_vector(loss_ratio=0.2), BASELINE)
    assert not unexplained(_vector(rx_bytes_per_s=2e6, tx_bytes_per_s=1e3), BASELINE)
    assert not unexplained(_vector(), BASELINE, mem_slope_per_tick=0.02)
