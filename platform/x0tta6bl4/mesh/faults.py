"""Fault catalogue, remediation actions and seeded fault schedules."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mesh.topology import Topology

#: Fault types; the value is the ground-truth label code (0 = healthy).
FAULT_CODES: dict[str, int] = {
    "node_crash": 1,
    "link_degradation": 2,
    "congestion": 3,
    "cpu_exhaustion": 4,
    "memory_leak": 5,
    "blackhole": 6,
}
FAULT_TYPES: tuple[str, ...] = tuple(FAULT_CODES)
FAULT_NAMES: dict[int, str] = {code: name for name, code in FAULT_CODES.items()}

#: What each fault does, in an on-call engineer's words.
FAULT_DESCRIPTIONS: dict[str, str] = {
    "node_crash": "the node stops; neighbours lose its links until routing reconverges around it",
    "link_degradation": "one radio link loses packets and adds delay; paths through it suffer",
    "congestion": "a traffic surge enters at the node and fills the queues along its path to the gateway",
    "cpu_exhaustion": "a runaway control-plane load saturates the CPU; forwarding slows down",
    "memory_leak": "memory grows tick by tick until the node swaps and stalls (gradual)",
    "blackhole": "the node advertises fake short routes and silently drops the transit traffic it attracts",
}

#: Remediation actions and what they do to the simulated state.
ACTIONS: dict[str, str] = {
    "restart_node": "reboot the node (down for boot_ticks); clears crashes and leaked memory",
    "reroute": "steer routing around a link or a node (honest nodes only)",
    "rate_limit": "cap the traffic the node admits",
    "isolate_node": "quarantine the node from routing and forwarding",
    "scale_capacity": "double the node's CPU capacity",
}

#: The action that heals each fault (applied to the fault's target). Any other action
#: has its side effects but leaves the fault in place.
HEALED_BY: dict[str, str] = {
    "node_crash": "restart_node",
    "memory_leak": "restart_node",
    "link_degradation": "reroute",
    "congestion": "rate_limit",
    "cpu_exhaustion": "scale_capacity",
    "blackhole": "isolate_node",
}


def check_fault_type(kind: str) -> None:
    if kind not in FAULT_CODES:
        raise ConfigError(f"unknown fault type {kind!r} (known: {', '.join(FAULT_TYPES)})")


def check_action(name: str) -> None:
    if name not in ACTIONS:
        raise ConfigError(f"unknown action {name!r} (known: {', '.join(ACTIONS)})")


@dataclasses.dataclass(frozen=True)
class Fault:
    """One scheduled fault.

    Args:
        fault_id: position in the schedule.
        kind: a key of :data:`FAULT_CODES`.
        start_tick: first tick the fault is active.
        duration_ticks: ticks until it ends by itself when nobody remediates it.
        node: the node at fault (for a link fault: the link's first endpoint).
        peer: the link's other endpoint for ``link_degradation``, else ``None``.
        severity: 0..1 strength (loss share, surge factor, leak speed...).
    """

    fault_id: int
    kind: str
    start_tick: int
    duration_ticks: int
    node: int
    peer: int | None = None
    severity: float = 1.0

    @property
    def end_tick(self) -> int:
        """First tick the fault is over when left alone."""
        return self.start_tick + self.duration_ticks

    def validate(self, topology: Topology) -> None:
        check_fault_type(self.kind)
        topology.check_node(self.node)
        if self.start_tick < 0 or self.duration_ticks < 1:
            raise ConfigError(f"fault {self.fault_id}: start must be >= 0 and duration >= 1")
        if not 0 < self.severity <= 1:
            raise ConfigError(f"fault {self.fault_id}: severity must be in (0, 1]")
        if self.kind == "link_degradation":
            if self.peer is None:
                raise ConfigError(
                    f"fault {self.fault_id}: link_degradation needs a peer node (the link's other end)"
                )
            topology.link_id(self.node, self.peer)
        elif self.peer is not None:
            raise ConfigError(f"fault {self.fault_id}: only link_degradation takes a peer")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Action:
    """A remediation request: ``name`` applied to ``node`` (or to the link ``node``-``peer``)."""

    name: str
    node: int
    peer: int | None = None
    tick: int = 0
    reason: str = ""
    #: W3C trace context of the controller's decision (``traceparent``), so the shard that applies
    #: it continues that trace; not part of the action's identity and never journaled.
    trace: dict[str, str] | None = dataclasses.field(default=None, compare=False, repr=False)

    def validate(self, topology: Topology) -> None:
        check_action(self.name)
        topology.check_node(self.node)
        if self.peer is not None:
            if self.name != "reroute":
                raise ConfigError(f"action {self.name} takes a node, not a link")
            topology.link_id(self.node, self.peer)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["trace"]
        return out


def random_schedule(
    topology: Topology,
    ticks: int,
    seed: int,
    faults_per_1000_ticks: float = 40.0,
    types: tuple[str, ...] = FAULT_TYPES,
    min_duration_ticks: int = 20,
    max_duration_ticks: int = 60,
    warmup_ticks: int = 10,
    exclude: npt.NDArray[np.bool_] | None = None,
) -> list[Fault]:
    """A seeded schedule that cycles through ``types`` so every type appears.

    Faults start after ``warmup_ticks``, never overlap on the same node, never target a
    gateway with ``blackhole`` (a gateway is a real root) and pick links for
    ``link_degradation`` among the target's links. Nodes in ``exclude`` (those that leave or
    join the mesh) are never a fault's node or peer.
    """
    for kind in types:
        check_fault_type(kind)
    rng = np.random.default_rng(seed + 7919)
    count = max(len(types), round(faults_per_1000_ticks * ticks / 1000)) if ticks > warmup_ticks else 0
    adjacency = topology.adjacency()
    busy_until = np.zeros(topology.num_nodes, dtype=np.int64)
    faults: list[Fault] = []
    span = max(1, ticks - warmup_ticks - min_duration_ticks)
    for i in range(count):
        kind = types[i % len(types)]
        start = warmup_ticks + int(rng.integers(0, span))
        duration = int(rng.integers(min_duration_ticks, max_duration_ticks + 1))
        for _ in range(50):
            node = int(rng.integers(0, topology.num_nodes))
            excluded = exclude is not None and bool(exclude[node])
            if (
                busy_until[node] <= start
                and not excluded
                and not (kind == "blackhole" and topology.gateways[node])
            ):
                break
        else:
            continue
        peer = None
        if kind == "link_degradation":
            neighbours = adjacency.indices[adjacency.indptr[node] : adjacency.indptr[node + 1]]
            if exclude is not None:
                neighbours = neighbours[~exclude[neighbours]]
                if neighbours.size == 0:
                    continue
            peer = int(rng.choice(neighbours))
        severity = float(rng.uniform(0.6, 1.0))
        busy_until[node] = start + duration + 5
        faults.append(Fault(len(faults), kind, start, duration, node, peer, round(severity, 3)))
    faults.sort(key=lambda f: (f.start_tick, f.node))
    return [dataclasses.replace(f, fault_id=i) for i, f in enumerate(faults)]
