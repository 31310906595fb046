"""The TelemetryFrame schema every telemetry source emits (simulated shards and real hosts)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

#: Canonical per-node features, in column order, with their units in the names.
#: Simulated shards fill every column; real hosts fill what they can measure and
#: leave the rest NaN (never an estimate).
FEATURES: tuple[str, ...] = (
    "cpu_util",  # fraction of CPU busy, 0..1
    "mem_util",  # fraction of memory used, 0..1
    "queue_depth_pkts",  # forwarding queue occupancy, packets
    "rx_bytes_per_s",
    "tx_bytes_per_s",
    "latency_mean_ms",  # round-trip time to the gateway / of TCP connections
    "latency_p95_ms",
    "loss_ratio",  # end-to-end packet loss on the node's path, 0..1
    "tcp_retransmits_per_s",
    "packet_drops_per_s",
    "tcp_resets_per_s",
    "links_up",  # usable links (radio neighbours or interfaces)
    "runqueue_latency_p95_ms",  # scheduler run-queue latency
)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURES)}


def unlisted_rows(features: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.bool_]:
    """Rows that are entirely NaN: the collector holds no record of the node (not a mesh member).

    Shapes:
        features ``[nodes, features]``; returns ``[nodes]``.
    """
    return np.asarray(np.isnan(features).all(axis=1))


#: Values of TelemetryFrame.source.
SOURCES = ("sim", "ebpf", "procfs")


class FrameError(ValueError):
    """A TelemetryFrame whose arrays do not fit together."""


@dataclasses.dataclass(frozen=True)
class TelemetryFrame:
    """One tick of telemetry for a set of nodes.

    Args:
        features: float32 matrix, one row per node, one column per feature name.
        node_ids: int64 global node ids, one per row.
        feature_names: column names (usually :data:`FEATURES`).
        tick: simulation tick, or the poll number of a real source.
        source: ``"sim"``, ``"ebpf"`` or ``"procfs"``: who produced the numbers.
        labels: ground-truth fault codes per node (0 = healthy); simulation only,
            used for evaluation, never by detectors.
        region: the mesh region of the rows, when they come from one shard.
        host: the host name, for frames from a real host.

    Shapes:
        features: ``[nodes, len(feature_names)]``; node_ids, labels: ``[nodes]``.
    """

    features: npt.NDArray[np.float32]
    node_ids: npt.NDArray[np.int64]
    feature_names: tuple[str, ...]
    tick: int
    source: str
    labels: npt.NDArray[np.int8] | None = None
    region: int | None = None
    host: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise FrameError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.features.dtype != np.float32 or self.features.ndim != 2:
            raise FrameError("features must be a 2-D float32 array")
        n, f = self.features.shape
        if f != len(self.feature_names):
            raise FrameError(f"{f} feature columns but {len(self.feature_names)} names")
        if self.node_ids.shape != (n,):
            raise FrameError(f"{n} rows but {self.node_ids.shape[0]} node ids")
        if self.labels is not None and self.labels.shape != (n,):
            raise FrameError(f"{n} rows but {self.labels.shape[0]} labels")

    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    def column(self, name: str) -> npt.NDArray[np.float32]:
        """The values of feature ``name`` for every node."""
        try:
            return self.features[:, self.feature_names.index(name)]
        except ValueError:
            raise KeyError(f"frame has no feature {name!r}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (NaN becomes None)."""
        rows = [
            {n: (None if np.isnan(v) else float(v)) for n, v in zip(self.feature_names, row, strict=True)}
            for row in self.features
        ]
        return {
            "tick": self.tick,
            "source": self.source,
            "region": self.region,
            "host": self.host,
            "nodes": [{"node_id": int(i), **r} for i, r in zip(self.node_ids, rows, strict=True)],
        }

    @staticmethod
    def concat(frames: list[TelemetryFrame]) -> TelemetryFrame:
        """Join frames of the same tick and feature names (e.g. every region's) into one."""
        if not frames:
            raise FrameError("nothing to concatenate")
        first = frames[0]
        for fr in frames[1:]:
            if fr.feature_names != first.feature_names:
                raise FrameError("frames have different feature names")
        labels = None
        if all(fr.labels is not None for fr in frames):
            labels = np.concatenate([fr.labels for fr in frames if fr.labels is not None])
        sources = {fr.source for fr in frames}
        if len(sources) != 1:
            raise FrameError(f"cannot concatenate frames of different sources {sorted(sources)}")
        return TelemetryFrame(
            features=np.concatenate([fr.features for fr in frames]),
            node_ids=np.concatenate([fr.node_ids for fr in frames]),
            feature_names=first.feature_names,
            tick=max(fr.tick for fr in frames),
            source=first.source,
            labels=labels,
        )
