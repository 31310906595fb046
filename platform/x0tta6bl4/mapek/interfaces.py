"""What ControllerCore works with: the Scorer and Runbooks it calls, its MeshView, its StepResult."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from x0tta6bl4.mesh.faults import Action

F32 = npt.NDArray[np.float32]


class Scorer(Protocol):
    """Where scores come from: the served anomaly app (handle or HTTP) or an in-process scorer."""

    def contract(self) -> tuple[tuple[str, ...], float]:
        """The detector's feature order and its suggested (static) threshold."""
        ...

    def score(
        self, node_ids: Sequence[int], window: F32, pairs: npt.NDArray[np.int32], stream_id: str
    ) -> F32:
        """Scores of the window's last tick, one per node (``window``: ``[ticks, nodes, features]``)."""
        ...

    def push_thresholds(self, default: float, per_node: dict[str, float]) -> None:
        """Make the served detector's alarms use these thresholds."""
        ...


class Runbooks(Protocol):
    """Where plans come from: the served RAG app or an in-process retriever."""

    def query(self, text: str, k: int) -> dict[str, Any]:
        """A QueryResult as a dict: ``passages`` (each with ``action``, ``runbook_id``), ``action``."""
        ...

    def ingest(self, documents: list[dict[str, Any]]) -> None:
        """Add documents to the corpus (durable before it returns)."""
        ...

    def signatures(self, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Signature records (``claim``, ``signature``) of the signed documents among ``doc_ids``."""
        ...


@dataclasses.dataclass(frozen=True)
class MeshView:
    """What the controller knows of the mesh's structure (from the shards' topology spec).

    Args:
        num_nodes: scored nodes: simulated nodes first, then real hosts.
        pairs: ``[links, 2]`` undirected links by node index.
        gateways: ``[nodes]`` wired uplink flags.
        actionable: ``[nodes]`` nodes remediations may target (simulated ones; hosts are only watched).
    """

    num_nodes: int
    pairs: npt.NDArray[np.int32]
    gateways: npt.NDArray[np.bool_]
    actionable: npt.NDArray[np.bool_]

    def adjacency(self) -> csr_matrix:
        n = self.num_nodes
        u, v = self.pairs[:, 0].astype(np.int64), self.pairs[:, 1].astype(np.int64)
        data = np.ones(2 * u.size, dtype=np.float64)
        return csr_matrix((data, (np.r_[u, v], np.r_[v, u])), shape=(n, n))


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one controller step decided."""

    tick: int
    actions: tuple[Action, ...]
    analysed: bool
    mesh_state: str
    alarmed: tuple[int, ...]
    open_incidents: int
    thresholds_pushed: bool = False
    errors: tuple[str, ...] = ()
