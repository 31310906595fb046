"""Which faults of a scenario change any telemetry at all: the loop's detection ceiling (evaluation only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from x0tta6bl4.mesh.drift import DriftConfig
from x0tta6bl4.mesh.faults import Fault
from x0tta6bl4.mesh.topology import Topology, TopologySpec

if TYPE_CHECKING:
    from x0tta6bl4.mesh.pipeline import LocalMesh


def fault_visibility(
    topology_spec: TopologySpec,
    topology: Topology,
    seed: int,
    faults: tuple[Fault, ...],
    ticks: int,
    drift: DriftConfig | None = None,
    only: set[int] | None = None,
) -> dict[int, bool]:
    """Per fault id: whether the scenario's telemetry differs anywhere once that fault is taken out.

    The scenario is run without remediation, once with every fault and once without each fault in
    turn. The simulator's noise does not depend on the faults, so identical frames with and without
    a fault mean the telemetry never showed it (a degraded link that no route uses, a blackhole
    with no traffic through it): no controller of telemetry can detect it but by chance. This is
    the loop's version of :func:`~x0tta6bl4.models.data.visible_faults` and, like it, uses the
    simulator's ground truth for evaluation only. Costs one mesh run (no controller) per fault.

    Args:
        topology_spec, topology, seed, faults, ticks: the scenario (as ``plan_run`` makes it).
        drift: the scenario's :class:`~x0tta6bl4.mesh.drift.DriftConfig` (None: none).
        only: fault ids to test (default: all); the others are left out of the answer.
    """
    full = _features(topology_spec, topology, seed, faults, ticks, drift)
    out: dict[int, bool] = {}
    for fault in faults:
        if only is not None and fault.fault_id not in only:
            continue
        rest = tuple(f for f in faults if f is not fault)
        out[fault.fault_id] = _differs(topology_spec, topology, seed, rest, full, drift)
    return out


def _mesh(
    topology_spec: TopologySpec,
    topology: Topology,
    seed: int,
    faults: tuple[Fault, ...],
    drift: DriftConfig | None,
) -> LocalMesh:
    from x0tta6bl4.mesh.control import ControlParams
    from x0tta6bl4.mesh.pipeline import LocalMesh
    from x0tta6bl4.mesh.shard import MeshSpec

    return LocalMesh(
        topology, MeshSpec(topology_spec, seed, faults, ControlParams(), drift=drift or DriftConfig())
    )


def _features(
    topology_spec: TopologySpec,
    topology: Topology,
    seed: int,
    faults: tuple[Fault, ...],
    ticks: int,
    drift: DriftConfig | None,
) -> npt.NDArray[np.float32]:
    """Every tick's telemetry of the scenario, nobody acting: ``[ticks, nodes, features]``."""
    mesh = _mesh(topology_spec, topology, seed, faults, drift)
    try:
        return np.stack([mesh.frame(mesh.step()).features for _ in range(ticks)])
    finally:
        mesh.close()


def _differs(
    topology_spec: TopologySpec,
    topology: Topology,
    seed: int,
    faults: tuple[Fault, ...],
    reference: npt.NDArray[np.float32],
    drift: DriftConfig | None,
) -> bool:
    """Whether the scenario with ``faults`` shows any telemetry other than ``reference``'s (stops at
    the first tick that differs)."""
    mesh = _mesh(topology_spec, topology, seed, faults, drift)
    try:
        for expected in reference:
            got = mesh.frame(mesh.step()).features
            if not ((got == expected) | (np.isnan(got) & np.isnan(expected))).all():
                return True
        return False
    finally:
        mesh.close()
