"""Scoring graph snapshots with a trained detector: window inputs, live streams, batched graphs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from x0tta6bl4.models.graphsage import GraphSAGEDetector, anomaly_score, mask_groups
from x0tta6bl4.telemetry.windows import RollingInputs, WindowSpec

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def window_inputs(spec: WindowSpec, window: F32) -> tuple[F32, F32, bool]:
    """Inputs and targets of a window's last tick, the earlier ticks serving as the baseline.

    Shapes:
        window: ``[ticks, nodes, num_features]`` raw features, oldest first.

    Returns:
        ``(inputs, targets, warm)``; ``warm`` is whether the window covered the full warm-up.
    """
    rolling = RollingInputs(spec)
    inputs, targets = rolling.push(window[0])
    for t in range(1, len(window)):
        inputs, targets = rolling.push(window[t])
    return inputs, targets, rolling.warm


@dataclasses.dataclass(frozen=True)
class GraphInputs:
    """One graph's detector inputs: node features and its links as index pairs.

    Shapes:
        inputs: ``[nodes, input_dim]``; targets: ``[nodes, target_dim]``;
        edge_index: ``[2, edges]``, both directions present.
    """

    inputs: F32
    targets: F32
    edge_index: I64


def symmetric_edges(pairs: npt.NDArray[np.integer[Any]], num_nodes: int) -> I64:
    """Undirected index pairs ``[edges, 2]`` to a deduplicated ``[2, 2 * edges]`` index, no self-loops."""
    if pairs.size == 0:
        return np.zeros((2, 0), dtype=np.int64)
    a, b = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    keep = a != b
    both = np.concatenate([np.stack([a[keep], b[keep]]), np.stack([b[keep], a[keep]])], axis=1)
    codes = np.unique(both[0] * num_nodes + both[1])
    return np.stack([codes // num_nodes, codes % num_nodes]).astype(np.int64)


@torch.no_grad()
def score_graphs(model: nn.Module, graphs: Sequence[GraphInputs]) -> list[F32]:
    """Anomaly scores for several graphs in one pass over their disjoint union.

    Args:
        model: a :class:`GraphSAGEDetector` or a peft wrapper around one.
        graphs: the graphs to score (any sizes).

    Returns:
        One ``[nodes]`` score array per graph, in order.
    """
    if not graphs:
        return []
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    if not isinstance(inner, GraphSAGEDetector):
        raise TypeError(f"expected a GraphSAGEDetector, got {type(inner).__name__}")
    sizes = [len(g.inputs) for g in graphs]
    offsets = np.cumsum([0, *sizes[:-1]])
    x = torch.from_numpy(np.concatenate([g.inputs for g in graphs]))
    y = torch.from_numpy(np.concatenate([g.targets for g in graphs]))
    edges = torch.from_numpy(
        np.concatenate([g.edge_index + off for g, off in zip(graphs, offsets, strict=False)], axis=1)
    )
    needs_groups = inner.spec.graph and not (inner.spec.num_layers == 2 and inner.spec.aggr == "mean")
    groups = torch.from_numpy(
        mask_groups(edges.numpy(), len(x)) if needs_groups else np.zeros(len(x), np.int64)
    )
    inner.eval()
    errors = inner.errors(x, y, edges, groups)
    contrast = edges if inner.spec.graph else edges[:, :0]
    scores = anomaly_score(errors, inner.error_scale, contrast).numpy().astype(np.float32)
    return np.split(scores, np.cumsum(sizes)[:-1])
