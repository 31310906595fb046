"""Log2 histograms as the eBPF programs fill them: bucket bounds, percentiles, counter deltas."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

#: Number of slots of every log2 histogram (see bpf/x0tta6bl4.h).
LOG2_SLOTS = 64


def slot_of(value: int) -> int:
    """The slot the kernel puts ``value`` in: 0 for 0, else floor(log2(value)) + 1."""
    if value < 0:
        raise ValueError(f"log2 histograms hold non-negative values, got {value}")
    return min(int(value).bit_length(), LOG2_SLOTS - 1)


def slot_bounds(slot: int) -> tuple[float, float]:
    """Half-open value range ``[low, high)`` of a slot: slot 0 is ``[0, 1)``, slot s is ``[2^(s-1), 2^s)``."""
    if not 0 <= slot < LOG2_SLOTS:
        raise ValueError(f"slot {slot} outside 0..{LOG2_SLOTS - 1}")
    if slot == 0:
        return 0.0, 1.0
    return float(2 ** (slot - 1)), float(2**slot)


def percentile(counts: Sequence[int] | npt.NDArray[np.uint64], q: float) -> float:
    """The ``q``-quantile (0 < q <= 1) of the values a log2 histogram counted.

    The rank is located in its slot and interpolated linearly inside the slot's
    range, so the error is bounded by the slot's width (a factor of two).
    Returns NaN for an empty histogram: no samples, no estimate.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {q}")
    c = np.asarray(counts, dtype=np.float64)
    total = float(c.sum())
    if total <= 0.0:
        return math.nan
    rank = q * total
    cumulative = np.cumsum(c)
    slot = int(np.searchsorted(cumulative, rank, side="left"))
    slot = min(slot, len(c) - 1)
    before = float(cumulative[slot - 1]) if slot > 0 else 0.0
    in_slot = float(c[slot])
    low, high = slot_bounds(slot)
    if slot == 0:
        return 0.0
    fraction = (rank - before) / in_slot if in_slot > 0 else 1.0
    return low + (high - low) * min(max(fraction, 0.0), 1.0)


def counter_delta(
    current: npt.NDArray[np.uint64], previous: npt.NDArray[np.uint64]
) -> npt.NDArray[np.uint64]:
    """Per-slot growth of monotonic kernel counters since the previous read.

    A slot that went backwards (its map was recreated) counts from zero.
    """
    if current.shape != previous.shape:
        raise ValueError(f"counter shapes differ: {current.shape} vs {previous.shape}")
    return np.where(current >= previous, current - previous, current).astype(np.uint64)
