"""Per-node alarm thresholds learned online from served scores, with feedback from outcomes."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from x0tta6bl4.mapek.config import ControllerConfig

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


class ThresholdLearner:
    """Learns one threshold per node from the node's own recent healthy scores.

    Scores of nodes in an alarm are not learned from (the node's last healthy value is
    carried instead), so a fault never teaches the controller that it is normal. Feedback
    from outcomes scales a node's threshold: false alarms raise it, late detections lower it.

    Args:
        num_nodes: nodes scored each tick.
        config: the controller's configuration (strategy, window, constants).
        static_default: the served model's threshold; the threshold of every node in
            ``static`` mode (unless ``config.static_threshold`` names another), and of nodes still
            warming up otherwise.

    Shapes:
        scores, learn: ``[nodes]``; history: ``[history_ticks, nodes]``.
    """

    def __init__(self, num_nodes: int, config: ControllerConfig, static_default: float) -> None:
        self.config = config
        self.num_nodes = num_nodes
        self.static_default = float(static_default)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Forget everything learned."""
        h, n = self.config.history_ticks, self.num_nodes
        self.history = np.zeros((h, n), dtype=np.float32)
        self.filled = 0
        self.position = 0
        self.multiplier = np.ones(n, dtype=np.float64)
        self.base = np.full(n, self.static_default, dtype=np.float64)
        self._since_refit = 0

    @property
    def thresholds(self) -> F64:
        """The threshold in force for each node."""
        if not self.config.learning:
            fixed = self.config.static_threshold
            return np.full(self.num_nodes, self.static_default if fixed is None else fixed)
        return self.base * self.multiplier

    def observe(self, scores: F32, learn: npt.NDArray[np.bool_]) -> None:
        """Add one tick of scores; only nodes with ``learn`` set contribute their value."""
        if not self.config.learning:
            return
        # A node not learning carries its last value; before any tick was kept it has none,
        # so it carries the static threshold rather than the anomalous score it shows now.
        previous = self.history[(self.position - 1) % self.config.history_ticks]
        row = np.where(learn, scores, previous if self.filled else self.static_default)
        self.history[self.position] = row
        self.position = (self.position + 1) % self.config.history_ticks
        self.filled = min(self.filled + 1, self.config.history_ticks)
        self._since_refit += 1
        if self._since_refit >= self.config.refit_every_ticks:
            self.refit()

    def refit(self) -> None:
        """Recompute every node's base threshold with the configured strategy."""
        self._since_refit = 0
        c = self.config
        if self.filled < c.learn_warmup_ticks:
            return
        h = self.history[: self.filled].astype(np.float64)
        base = self._fit(h)
        gaps = np.flatnonzero(np.isnan(h).any(axis=0))
        if gaps.size:  # forgotten nodes: fit what they learned since, static until that is enough
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                partial = self._fit(h[:, gaps], nan=True)
            enough = (~np.isnan(h[:, gaps])).sum(axis=0) >= c.learn_warmup_ticks
            base[gaps] = np.where(enough, partial, self.static_default)
        self.base = np.maximum(base, c.threshold_floor_share * self.static_default)

    def _fit(self, h: F64, nan: bool = False) -> F64:
        """The configured strategy's threshold per column of ``h`` (``nan``: ignore NaN entries)."""
        c = self.config
        percentile, mean, std = (
            (np.nanpercentile, np.nanmean, np.nanstd) if nan else (np.percentile, np.mean, np.std)
        )
        q25, q50, q75, qp = percentile(h, [25.0, 50.0, 75.0, c.percentile], axis=0)
        candidates = {
            "percentile": q50 + c.percentile_margin * np.maximum(qp - q50, 0.0),
            "sigma": mean(h, axis=0) + c.sigma_k * std(h, axis=0),
            "iqr": q75 + c.iqr_k * (q75 - q25),
        }
        if c.strategy == "ensemble":
            return np.asarray(np.median(np.stack(list(candidates.values())), axis=0), dtype=np.float64)
        return np.asarray(candidates[c.strategy], dtype=np.float64)

    def forget(self, nodes: npt.ArrayLike) -> None:
        """Drop what ``nodes`` learned (their history turns NaN) and give them the static threshold
        until they have ``learn_warmup_ticks`` new healthy scores; their feedback multiplier stays."""
        if not self.config.learning:
            return
        idx = np.asarray(nodes, dtype=np.int64)
        if idx.size == 0:
            return
        self.history[:, idx] = np.nan
        self.base[idx] = self.static_default

    def adjust(self, nodes: npt.ArrayLike, factor: float) -> None:
        """Scale the thresholds of ``nodes`` by ``factor`` (feedback), within the configured bounds."""
        if not self.config.learning:
            return
        idx = np.asarray(nodes, dtype=np.int64)
        low, high = self.config.multiplier_bounds
        self.multiplier[idx] = np.clip(self.multiplier[idx] * factor, low, high)

    def state(self) -> dict[str, Any]:
        """Everything needed to resume learning after a restart."""
        return {
            "history": self.history.copy(),
            "filled": self.filled,
            "position": self.position,
            "multiplier": self.multiplier.copy(),
            "base": self.base.copy(),
            "static_default": self.static_default,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned (ignored when the node count changed)."""
        history = np.array(state["history"], dtype=np.float32)
        if history.shape != self.history.shape:
            return
        self.history = history
        self.filled = int(state["filled"])
        self.position = int(state["position"])
        self.multiplier = np.array(state["multiplier"], dtype=np.float64)
        self.base = np.array(state["base"], dtype=np.float64)


class LeakWatch:
    """Learns each node's tick-to-tick ``mem_util`` noise and raises a leak alarm on sustained growth.

    A one-sided CUSUM of each node's ``mem_util`` increments, measured in units of that node's own
    increment spread (learned online from its healthy ticks): every tick adds the standardised
    increment less an allowance, the sum never drops below zero, and an alarm stands while it is at
    least ``alarm_sigmas``. Healthy memory wanders a little each tick, a leak adds the same amount
    every tick, so the sum climbs within a few ticks of a leak's start, long before the memory
    itself reaches a level that would alarm. A tick of a node without a record, or that reports
    the collector's unreachable record (down, rebooting), breaks the series: the sum restarts.

    Args:
        num_nodes: nodes watched.
        allowance_sigmas: growth per tick, in spreads, that is not yet counted.
        alarm_sigmas: sum, in spreads, at which the alarm stands.
        warmup_ticks: healthy increments a node needs before its alarm can stand.
        learn_rate: weight of a new healthy increment in the running spread.

    Shapes:
        mem, reporting, learn: ``[nodes]``.
    """

    def __init__(
        self,
        num_nodes: int,
        allowance_sigmas: float = 2.5,
        alarm_sigmas: float = 8.0,
        warmup_ticks: int = 8,
        learn_rate: float = 0.05,
    ) -> None:
        self.num_nodes = num_nodes
        self.allowance_sigmas = allowance_sigmas
        self.alarm_sigmas = alarm_sigmas
        self.warmup_ticks = warmup_ticks
        self.learn_rate = learn_rate
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Forget everything learned."""
        n = self.num_nodes
        self.previous = np.full(n, np.nan, dtype=np.float64)
        self.variance = np.zeros(n, dtype=np.float64)
        self.learned = np.zeros(n, dtype=np.int64)
        self.cusum = np.zeros(n, dtype=np.float64)
        self.rise = np.zeros(n, dtype=np.float64)
        self.rise_ticks = np.zeros(n, dtype=np.int64)

    def update(self, mem: F64, reporting: npt.NDArray[np.bool_], learn: npt.NDArray[np.bool_]) -> None:
        """Add one tick: ``mem`` (NaN: no record), which nodes report, which may be learned from."""
        step = mem - self.previous
        valid = reporting & np.isfinite(step)
        warm = self.learned >= self.warmup_ticks
        spread = np.sqrt(np.maximum(self.pooled_variance, 1e-12))
        z = np.where(valid & warm, np.nan_to_num(step) / spread, 0.0)
        cusum = np.where(valid, np.maximum(self.cusum + z - self.allowance_sigmas, 0.0), 0.0)
        rising = cusum > 0.0
        self.rise = np.where(rising, self.rise + np.nan_to_num(step), 0.0)
        self.rise_ticks = np.where(rising, self.rise_ticks + 1, 0)
        self.cusum = cusum
        # Learned from healthy, quiet ticks only: a leak never teaches a node that growth is normal.
        # One jump (a spike) moves the spread by at most a bounded amount.
        take = valid & learn & ~rising
        if take.any():
            cap = np.where(warm, 36.0 * self.variance, np.inf)
            squared = np.minimum(np.nan_to_num(step) ** 2, cap)
            blended = (1.0 - self.learn_rate) * self.variance + self.learn_rate * squared
            # Until warm, the plain mean of what was seen (a running weight would start from zero).
            mean = self.variance + (squared - self.variance) / (self.learned + 1)
            self.variance = np.where(take, np.where(warm, blended, mean), self.variance)
            self.learned = np.where(take, self.learned + 1, self.learned)
        self.previous = np.where(reporting, mem, np.nan)

    @property
    def pooled_variance(self) -> F64:
        """Each node's spread squared, shrunk towards the mesh's typical one by how little it has seen.

        A few quiet ticks can make a node's own estimate several times too small, and a sum in
        units of a too-small spread climbs on noise: the estimate is weighed as ``warmup_ticks``
        ticks of the median warm node's against the node's own (at most the running weight's
        effective count)."""
        warm = self.learned >= self.warmup_ticks
        if not warm.any():
            return self.variance
        typical = float(np.median(self.variance[warm]))
        own = np.minimum(self.learned, 2.0 / self.learn_rate - 1.0)
        prior = float(self.warmup_ticks)
        return np.asarray((own * self.variance + prior * typical) / (own + prior), dtype=np.float64)

    @property
    def alarms(self) -> npt.NDArray[np.bool_]:
        """Nodes whose memory grew beyond their own noise for long enough (a leak)."""
        return np.asarray((self.cusum >= self.alarm_sigmas) & (self.learned >= self.warmup_ticks))

    @property
    def growth_per_tick(self) -> F64:
        """Mean ``mem_util`` growth per tick since each node's sum started climbing (0: not climbing)."""
        return np.asarray(self.rise / np.maximum(self.rise_ticks, 1), dtype=np.float64)

    def state(self) -> dict[str, Any]:
        """What the watch learned (the spreads); the sums restart after a resume."""
        return {"leak_variance": self.variance.copy(), "leak_learned": self.learned.copy()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned (ignored when absent or the node count changed)."""
        variance = state.get("leak_variance")
        if variance is None or np.shape(variance) != self.variance.shape:
            return
        self.variance = np.array(variance, dtype=np.float64)
        self.learned = np.array(state["leak_learned"], dtype=np.int64)


def neighbour_max(values: F64, adjacency: csr_matrix) -> F64:
    """Largest value among each node's graph neighbours (0 for a node without neighbours).

    Shapes:
        values: ``[nodes]`` (non-negative); adjacency: ``[nodes, nodes]``; out: ``[nodes]``.
    """
    weighted = adjacency.multiply(values[None, :]).tocsr()
    return np.asarray(weighted.max(axis=1).todense(), dtype=np.float64).ravel()


def trend_slope(series: F64) -> F64:
    """Least-squares slope per column of ``series`` (``[ticks, nodes]``), in units per tick."""
    t = series.shape[0]
    x = np.arange(t, dtype=np.float64) - (t - 1) / 2.0
    return np.asarray((x @ (series - series.mean(axis=0))) / float((x * x).sum()), dtype=np.float64)
