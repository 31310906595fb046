"""Windowed per-node detector inputs: scaled levels plus deviations from each node's own recent baseline."""

from __future__ import annotations

import collections

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.telemetry.frame import FEATURES

F32 = npt.NDArray[np.float32]

#: Features that are fractions or counts kept linear; every other feature is a rate, a
#: size or a latency spanning orders of magnitude and goes through log1p.
LINEAR_FEATURES = frozenset({"cpu_util", "mem_util", "loss_ratio", "links_up"})

#: Divisor that brings each transformed feature to roughly unit range (fixed, so that
#: every region and every host scales identically without fitting anything).
_LEVEL_SCALE = {"links_up": 10.0}
_DEFAULT_LOG_SCALE = 10.0

#: Smallest baseline standard deviation per feature, in transformed units: a node whose
#: feature never moved must not turn the first wiggle into an infinite z-score.
_SCALE_FLOOR = {"cpu_util": 0.02, "mem_util": 0.02, "loss_ratio": 0.02, "links_up": 0.5}
_DEFAULT_LOG_FLOOR = 0.3

#: Deviations are clipped to this many baseline standard deviations.
Z_CLIP = 10.0


class WindowSpec(BaseModel):
    """How raw telemetry becomes detector inputs.

    Each node's input at tick ``t`` is its scaled feature levels at ``t`` followed by its
    z-scores against its own baseline (mean and standard deviation over the
    ``baseline_ticks`` ticks before the window) for the last ``history_ticks`` ticks.
    """

    model_config = ConfigDict(extra="forbid")

    feature_names: tuple[str, ...] = Field(default=FEATURES, description="input features, in order")
    history_ticks: int = Field(default=4, ge=1, le=64, description="ticks of z-scores per input")
    baseline_ticks: int = Field(default=32, ge=4, le=4096, description="ticks the baseline averages over")

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def input_dim(self) -> int:
        """Width of one node's input vector: levels plus ``history_ticks`` z-score rows."""
        return self.num_features * (1 + self.history_ticks)

    @property
    def target_dim(self) -> int:
        """Width of what the detector reconstructs: current levels and current z-scores."""
        return 2 * self.num_features

    @property
    def warmup_ticks(self) -> int:
        """Ticks of history a node needs before its inputs are defined."""
        return self.baseline_ticks + self.history_ticks

    def check_features(self, names: tuple[str, ...]) -> None:
        """Refuse frames whose columns are not this spec's features."""
        if tuple(names) != tuple(self.feature_names):
            missing = [n for n in self.feature_names if n not in names]
            extra = [n for n in names if n not in self.feature_names]
            raise ConfigError(
                f"feature names do not match the detector's: missing {missing}, unexpected {extra}"
                if missing or extra
                else "feature columns are in a different order than the detector's"
            )


def _per_feature(spec: WindowSpec, table: dict[str, float], log_default: float, linear_default: float) -> F32:
    out = [table.get(n, linear_default if n in LINEAR_FEATURES else log_default) for n in spec.feature_names]
    return np.asarray(out, dtype=np.float32)


def level_scale(spec: WindowSpec) -> F32:
    """Per-feature divisor that brings transformed levels to roughly unit range."""
    return _per_feature(spec, _LEVEL_SCALE, _DEFAULT_LOG_SCALE, 1.0)


def transform(spec: WindowSpec, features: F32) -> F32:
    """Raw feature values to scaled levels (log1p where the feature spans decades). NaN stays NaN.

    Shapes:
        features: ``[..., num_features]``; returns the same shape.
    """
    out = np.array(features, dtype=np.float32, copy=True)
    log_cols = [i for i, n in enumerate(spec.feature_names) if n not in LINEAR_FEATURES]
    out[..., log_cols] = np.log1p(np.maximum(out[..., log_cols], 0.0))
    return out


#: A feature further than this many standard deviations from its baseline is an
#: excursion: the baseline follows it only slowly, so a fault lasting longer than the
#: baseline window is not absorbed into "normal".
EXCURSION_Z = 3.0
_EXCURSION_RATE = 0.05


class Baseline:
    """Each node's normal level per feature: an exponential moving mean and variance.

    Updated once per tick. During the first ``baseline_ticks`` ticks it is a plain running
    mean; afterwards an EMA with span ``baseline_ticks`` that follows excursions
    (beyond :data:`EXCURSION_Z` standard deviations) twenty times more slowly.
    """

    def __init__(self, spec: WindowSpec, num_nodes: int) -> None:
        self.spec = spec
        self.alpha = 2.0 / (spec.baseline_ticks + 1)
        self.floor = _per_feature(spec, _SCALE_FLOOR, _DEFAULT_LOG_FLOOR, 0.02).astype(np.float64)
        self.mean = np.zeros((num_nodes, spec.num_features))
        self.var = np.zeros((num_nodes, spec.num_features))
        self.count = np.zeros((num_nodes, spec.num_features))

    def update(self, levels: F32) -> F32:
        """z-scores of ``levels`` ``[nodes, features]`` against the baseline so far, then update it."""
        x = levels.astype(np.float64)
        seen = ~np.isnan(x)
        std = np.maximum(np.sqrt(self.var), self.floor)
        delta = np.where(seen, x, 0.0) - self.mean
        z = np.where(seen & (self.count > 0), delta / std, 0.0)
        warm = self.count >= self.spec.baseline_ticks
        rate = np.where(seen, np.where(warm, self.alpha, 1.0 / (self.count + 1)), 0.0)
        excursion = warm & (np.abs(z) > EXCURSION_Z)
        # An excursion drifts the mean slowly (a lasting level shift is absorbed in a few
        # hundred ticks) and leaves the variance alone (it would inflate and hide the fault).
        self.mean += np.where(excursion, rate * _EXCURSION_RATE, rate) * delta
        self.var = np.where(excursion, self.var, (1 - rate) * (self.var + rate * delta * delta))
        self.count += seen
        return np.clip(z, -Z_CLIP, Z_CLIP).astype(np.float32)


class SeriesInputs:
    """Inputs and targets for every tick of a recorded series.

    Args:
        spec: the window spec.
        levels: transformed levels (see :func:`transform`).

    Shapes:
        levels: ``[ticks, nodes, num_features]``.
    """

    def __init__(self, spec: WindowSpec, levels: F32) -> None:
        self.spec = spec
        self.levels = levels
        self._scale = level_scale(spec)
        baseline = Baseline(spec, levels.shape[1])
        self.z = (
            np.stack([baseline.update(levels[t]) for t in range(levels.shape[0])])
            if len(levels)
            else (np.zeros_like(levels))
        )

    @property
    def num_ticks(self) -> int:
        return int(self.levels.shape[0])

    @property
    def first_valid(self) -> int:
        """Index of the first tick with a full baseline and history."""
        return self.spec.warmup_ticks - 1

    def at(self, t: int) -> tuple[F32, F32]:
        """Inputs ``[nodes, input_dim]`` and targets ``[nodes, target_dim]`` of tick index ``t``."""
        if not self.first_valid <= t < self.num_ticks:
            raise IndexError(f"tick index {t} outside [{self.first_valid}, {self.num_ticks})")
        h = self.spec.history_ticks
        z = self.z[t - h + 1 : t + 1].transpose(1, 0, 2)
        return assemble(self.levels[t], z, self._scale)


def assemble(levels: F32, z: F32, scale: F32) -> tuple[F32, F32]:
    """Inputs (scaled levels, then z-score rows oldest first) and targets (levels, newest z)."""
    level = np.nan_to_num(levels / scale, nan=0.0).astype(np.float32)
    n = level.shape[0]
    inputs = np.concatenate([level, z.reshape(n, -1)], axis=1)
    targets = np.concatenate([level, z[:, -1, :]], axis=1)
    return inputs, targets


class RollingInputs:
    """One graph's detector inputs over successive ticks, usable before the warm-up ends.

    Same numbers as :class:`StreamingInputs` once warm; before
    that, the baseline covers the ticks seen so far and missing z-score rows are zero, and
    :attr:`warm` says so (a caller that needs calibrated scores waits for it).

    Args:
        spec: the detector's window spec.
    """

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self._scale = level_scale(spec)
        self._baseline: Baseline | None = None
        self._z: collections.deque[F32] = collections.deque(maxlen=spec.history_ticks)
        self.node_key: tuple[object, ...] | None = None
        self.ticks = 0

    def reset(self) -> None:
        """Forget every tick seen (the node set changed)."""
        self._baseline = None
        self._z.clear()
        self.ticks = 0

    def push(self, features: F32, node_key: tuple[object, ...] | None = None) -> tuple[F32, F32]:
        """Add one tick of raw features and return that tick's (inputs, targets).

        Args:
            features: raw features in ``spec.feature_names`` order.
            node_key: identifies the node set; a different key than last time starts over.

        Shapes:
            features: ``[nodes, num_features]``; returns ``[nodes, input_dim]``, ``[nodes, target_dim]``.
        """
        if (
            self._baseline is None
            or node_key != self.node_key
            or self._baseline.mean.shape[0] != len(features)
        ):
            self.reset()
            self._baseline = Baseline(self.spec, len(features))
            self.node_key = node_key
        levels = transform(self.spec, features)
        self._z.append(self._baseline.update(levels))
        self.ticks += 1
        rows = list(self._z)
        pad = [np.zeros_like(rows[0])] * (self.spec.history_ticks - len(rows))
        return assemble(levels, np.stack(pad + rows, axis=1), self._scale)

    @property
    def warm(self) -> bool:
        """True once the baseline and history are full (scores are then calibrated)."""
        return self.ticks >= self.spec.warmup_ticks


class StreamingInputs:
    """Detector inputs for a live stream of frames that only answers once the warm-up has passed.

    :meth:`push` returns the newest tick's inputs and targets, or None during the warm-up;
    the same numbers as :class:`SeriesInputs` over the same frames. A change in the number of
    nodes starts the stream over.
    """

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self._rolling = RollingInputs(spec)

    def push(self, features: F32) -> tuple[F32, F32] | None:
        """Add one tick of raw features ``[nodes, num_features]``; (inputs, targets), None in the warm-up."""
        out = self._rolling.push(features)
        return out if self._rolling.warm else None

    @property
    def ticks(self) -> int:
        return self._rolling.ticks

    @property
    def ready(self) -> bool:
        return self._rolling.warm
