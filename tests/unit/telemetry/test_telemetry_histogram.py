"""Log2 histogram math: slot bounds match the kernel's slotting, percentiles stay inside their slot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from x0tta6bl4.telemetry._histogram import LOG2_SLOTS, counter_delta, percentile, slot_bounds, slot_of


@pytest.mark.parametrize(
    ("value", "slot"), [(0, 0), (1, 1), (2, 2), (3, 2), (4, 3), (1023, 10), (1024, 11), (2**40, 41)]
)
def test_slot_of_is_floor_log2_plus_one(value: int, slot: int) -> None:
    assert slot_of(value) == slot


def test_every_value_lies_inside_the_bounds_of_its_slot() -> None:
    for value in [0, 1, 2, 3, 5, 8, 100, 4095, 4096, 10**9]:
        low, high = slot_bounds(slot_of(value))
        assert low <= value < high


def test_huge_values_land_in_the_last_slot() -> None:
    assert slot_of(2**70) == LOG2_SLOTS - 1


def test_percentile_of_an_empty_histogram_is_nan_not_zero() -> None:
    assert math.isnan(percentile(np.zeros(LOG2_SLOTS, dtype=np.uint64), 0.95))


def test_percentile_of_a_single_slot_interpolates_within_it() -> None:
    counts = np.zeros(LOG2_SLOTS, dtype=np.uint64)
    counts[slot_of(100)] = 100  # slot 7 = [64, 128)
    assert percentile(counts, 0.5) == pytest.approx(96.0)
    assert percentile(counts, 1.0) == pytest.approx(128.0)
    assert 64.0 <= percentile(counts, 0.01) <= 128.0


def test_p95_lands_in_the_slot_of_the_tail() -> None:
    counts = np.zeros(LOG2_SLOTS, dtype=np.uint64)
    counts[slot_of(10)] = 90  # [8, 16)
    counts[slot_of(1000)] = 10  # [512, 1024)
    assert 8 <= percentile(counts, 0.5) < 16
    assert 512 <= percentile(counts, 0.95) < 1024


def test_percentile_is_within_a_factor_of_two_of_the_exact_one() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=5.0, sigma=1.5, size=20000).astype(np.int64)
    counts = np.bincount([slot_of(int(v)) for v in values], minlength=LOG2_SLOTS).astype(np.uint64)
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(values, q))
        assert exact / 2 <= percentile(counts, q) <= exact * 2


def test_zero_values_have_percentile_zero() -> None:
    counts = np.zeros(LOG2_SLOTS, dtype=np.uint64)
    counts[0] = 5
    assert percentile(counts, 0.95) == 0.0


def test_percentile_rejects_quantiles_outside_zero_one() -> None:
    with pytest.raises(ValueError, match="quantile"):
        percentile([1, 2], 0.0)


def test_counter_delta_is_growth_and_a_reset_counts_from_zero() -> None:
    prev = np.array([10, 5, 7], dtype=np.uint64)
    cur = np.array([15, 5, 3], dtype=np.uint64)
    assert counter_delta(cur, prev).tolist() == [5, 0, 3]
