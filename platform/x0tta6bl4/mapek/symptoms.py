"""Incident context for the planner: what a node's telemetry says, in an on-call engineer's words."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from x0tta6bl4.mapek.rootcause import blackhole_sign
from x0tta6bl4.telemetry.frame import FEATURE_INDEX

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Features an incident description may mention, with how each is printed.
_FORMAT = {
    "cpu_util": "{:.2f}",
    "mem_util": "{:.2f}",
    "queue_depth_pkts": "{:.0f}",
    "rx_bytes_per_s": "{:.0f}",
    "tx_bytes_per_s": "{:.0f}",
    "latency_mean_ms": "{:.0f}",
    "latency_p95_ms": "{:.0f}",
    "loss_ratio": "{:.2f}",
    "tcp_retransmits_per_s": "{:.1f}",
    "packet_drops_per_s": "{:.1f}",
    "tcp_resets_per_s": "{:.1f}",
    "links_up": "{:.0f}",
    "runqueue_latency_p95_ms": "{:.1f}",
}

#: Scale below which a feature's change is noise: ratios are taken of (value + floor).
_FLOOR = {
    "cpu_util": 0.1,
    "mem_util": 0.1,
    "queue_depth_pkts": 5.0,
    "rx_bytes_per_s": 20000.0,
    "tx_bytes_per_s": 20000.0,
    "latency_mean_ms": 10.0,
    "latency_p95_ms": 15.0,
    "loss_ratio": 0.02,
    "tcp_retransmits_per_s": 50.0,
    "packet_drops_per_s": 20.0,
    "tcp_resets_per_s": 5.0,
    "links_up": 1.0,
    "runqueue_latency_p95_ms": 2.0,
}


#: Features whose level is traffic volume, neither healthy nor unhealthy in itself.
_VOLUME = frozenset({"rx_bytes_per_s", "tx_bytes_per_s"})

#: Features whose rise is a recovery (every other one's fall is).
_HIGHER_IS_HEALTHIER = frozenset({"links_up"})

#: mem_util growth per tick that an incident description mentions.
_TREND_WORDS = 0.004


class FeatureBaselines:
    """Exponentially weighted per-node feature levels while the node is healthy.

    Args:
        num_nodes: nodes tracked.
        num_features: features per node (:data:`~x0tta6bl4.telemetry.frame.FEATURES` order).
        half_life_ticks: how quickly the baseline follows slow changes (default 20).

    Shapes:
        features: ``[nodes, features]``; healthy: ``[nodes]``.
    """

    def __init__(self, num_nodes: int, num_features: int, half_life_ticks: float = 20.0) -> None:
        self.level = np.zeros((num_nodes, num_features), dtype=np.float64)
        self.seen = np.zeros(num_nodes, dtype=bool)
        self.alpha = 1.0 - 0.5 ** (1.0 / half_life_ticks)

    def update(self, features: F32, healthy: npt.NDArray[np.bool_]) -> None:
        """Move healthy nodes' levels toward this tick's values (a node's first tick sets them)."""
        x = np.nan_to_num(features.astype(np.float64), nan=0.0)
        first = healthy & ~self.seen
        self.level[first] = x[first]
        self.seen |= first
        rest = healthy & ~first
        self.level[rest] += self.alpha * (x[rest] - self.level[rest])


def deviations(features: F32, baseline: F64, min_ratio: float = 1.6) -> list[tuple[str, float, float]]:
    """The node's features that moved away from its baseline, most changed first.

    Returns:
        ``(feature, now, baseline)`` for each feature whose ``(value + floor)`` changed by at
        least ``min_ratio`` times either way (the floor is the feature's noise scale).
    """
    out: list[tuple[float, str, float, float]] = []
    for name, i in FEATURE_INDEX.items():
        now, base = float(np.nan_to_num(features[i])), float(baseline[i])
        floor = _FLOOR[name]
        ratio = (abs(now) + floor) / (abs(base) + floor)
        change = abs(float(np.log(ratio)))
        if change < float(np.log(min_ratio)):
            continue
        out.append((change, name, now, base))
    out.sort(reverse=True)
    return [(name, now, base) for _, name, now, base in out]


def _signs(features: F32, baseline: F64) -> list[str]:
    """Plain-language readings of feature combinations that runbooks are written around."""
    f = {name: float(np.nan_to_num(features[i])) for name, i in FEATURE_INDEX.items()}
    b = {name: float(baseline[i]) for name, i in FEATURE_INDEX.items()}
    out = []
    if f["links_up"] == 0 and f["cpu_util"] == 0 and f["rx_bytes_per_s"] == 0:
        out.append("node silent: no counters, no links up, unreachable")
        return out
    rx = (f["rx_bytes_per_s"] + 2e4) / (b["rx_bytes_per_s"] + 2e4)
    tx = (f["tx_bytes_per_s"] + 2e4) / (b["tx_bytes_per_s"] + 2e4)
    # A blackhole takes transit in and forwards none: its rx grows as it attracts routes, or, while
    # routing still converges, its rx holds while its tx collapses.
    one_way = bool(blackhole_sign(features[None], baseline[None])[0])
    if (
        (one_way or (rx >= 3.0 and tx < 0.5 * rx))
        and f["queue_depth_pkts"] < 10
        and f["packet_drops_per_s"] < 50
    ):
        out.append(
            f"rx {rx:.0f}x baseline but tx {tx:.1f}x: "
            "attracts transit traffic and forwards none, no drops counted"
        )
    if f["queue_depth_pkts"] >= 50 and rx >= 3.0:
        out.append(f"traffic surge: rx {rx:.0f}x baseline, forwarding queue full, drops and retransmits up")
    if f["cpu_util"] >= 0.9 and f["mem_util"] < 0.85 and rx < 2.0:
        out.append("cpu pinned near 1.0 with normal traffic, run queue latency up")
    if f["mem_util"] >= 0.85:
        out.append(f"memory at {f['mem_util']:.2f}, swapping")
    return out


def _health_moves(features: F32, baseline: F64) -> list[tuple[str, float, float]] | None:
    """The health counters off the node's baseline (traffic volume aside), or ``None`` when a sign
    of a fault shows."""
    if _signs(features, baseline):
        return None
    return [(name, now, base) for name, now, base in deviations(features, baseline) if name not in _VOLUME]


def unexplained(features: F32, baseline: F64, mem_slope_per_tick: float = 0.0) -> bool:
    """Whether nothing in the node's telemetry explains an alarm: no sign, no counter off its
    baseline, no memory trend (its description would read "no single counter stands out")."""
    return _health_moves(features, baseline) == [] and mem_slope_per_tick <= _TREND_WORDS


def recovering(features: F32, baseline: F64) -> bool:
    """Whether the node is coming back rather than failing: no sign of a fault, and every health
    counter that moved off its baseline moved towards health (latency, loss, retransmits, drops,
    queue or load down, links up). Traffic volume is not judged: it moves with routing either way.

    A node that a fault or its place in the mesh cut off for a while, then reconnected, reports
    latencies of tens of milliseconds against a baseline of seconds: as far from what it showed as a
    fault's figures, and the anomaly score says so, but nothing is wrong with it.
    """
    moved = _health_moves(features, baseline)
    if not moved:
        return False
    return all((now > base) == (name in _HIGHER_IS_HEALTHIER) for name, now, base in moved)


def describe(
    node: int,
    features: F32,
    baseline: F64,
    *,
    mem_slope_per_tick: float = 0.0,
    neighbours_alarmed: int = 0,
    gateway: bool = False,
    limit: int = 6,
) -> str:
    """One incident line for the runbook search, e.g. ``n=553: cpu_util 1.00 (baseline 0.21); ...``."""
    parts = _signs(features, baseline)
    for name, now, base in deviations(features, baseline)[:limit]:
        fmt = _FORMAT[name]
        parts.append(f"{name} {fmt.format(now)} (baseline {fmt.format(base)})")
        if parts[0].startswith("node silent"):
            break
    if mem_slope_per_tick > _TREND_WORDS:
        parts.append(f"mem_util rising {mem_slope_per_tick:+.3f}/tick")
    if neighbours_alarmed:
        parts.append(f"{neighbours_alarmed} neighbours degraded too")
    if not parts:
        parts.append("anomaly score high but no single counter stands out")
    role = "gateway " if gateway else ""
    return f"{role}n={node}: " + "; ".join(parts)
