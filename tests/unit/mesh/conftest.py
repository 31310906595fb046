"""Helpers that run a small mesh in process with and without a fault, so a diff isolates its effect."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from x0tta6bl4.mesh.control import MeshControl
from x0tta6bl4.mesh.faults import Action, Fault
from x0tta6bl4.mesh.pipeline import LocalMesh
from x0tta6bl4.mesh.shard import MeshSpec
from x0tta6bl4.mesh.topology import Topology, TopologySpec
from x0tta6bl4.telemetry.frame import FEATURE_INDEX

SPEC = TopologySpec(600, 2, seed=5)


@dataclasses.dataclass
class Run:
    frames: list[np.ndarray]  # [ticks][nodes, features]
    labels: list[np.ndarray]
    control: MeshControl

    def feature(self, tick: int, name: str) -> np.ndarray:
        return self.frames[tick][:, FEATURE_INDEX[name]]


def run_mesh(faults: list[Fault], actions: dict[int, list[Action]] | None = None, ticks: int = 40) -> Run:
    mesh = LocalMesh(SPEC.build(), MeshSpec(topology=SPEC, seed=5, faults=tuple(faults)))
    frames, labels = [], []
    for t in range(ticks):
        result = mesh.step(tuple((actions or {}).get(t, ())))
        frame = mesh.frame(result)
        frames.append(frame.features.astype(np.float64))
        labels.append(frame.labels)
    return Run(frames, labels, mesh.control)


@pytest.fixture(scope="session")
def topology() -> Topology:
    return SPEC.build()


@pytest.fixture(scope="session")
def baseline() -> Run:
    return run_mesh([])


@pytest.fixture(scope="session")
def tree(topology):
    control = MeshControl(topology, [])
    control.advance(0)
    return control.routing()[1]


def descendants(tree, node: int) -> np.ndarray:
    """Nodes whose route to the gateway crosses ``node``."""
    out = []
    for i in range(tree.parent.shape[0]):
        j = tree.parent[i]
        while j >= 0:
            if j == node:
                out.append(i)
                break
            j = tree.parent[j]
    return np.asarray(out, dtype=np.int64)


@pytest.fixture(scope="session")
def relay(topology, tree) -> int:
    """A non-gateway node that relays traffic for several others, inside region 0 with its subtree."""
    best, best_count = -1, 0
    for node in range(topology.num_nodes):
        if topology.gateways[node] or tree.hops[node] < 1:
            continue
        desc = descendants(tree, node)
        same_region = desc.size and all(topology.region_of(int(d)) == topology.region_of(node) for d in desc)
        if same_region and 4 <= desc.size > best_count and topology.region_of(node) == 0:
            best, best_count = node, desc.size
    assert best >= 0
    return best
