"""The mesh's discrete state (faults, actions, status, routing), evolved identically by every shard."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mesh.drift import DriftSchedule
from x0tta6bl4.mesh.faults import FAULT_CODES, HEALED_BY, Action, Fault
from x0tta6bl4.mesh.routing import RoutingTree, routing_tree
from x0tta6bl4.mesh.topology import Topology


@dataclasses.dataclass(frozen=True)
class ControlParams:
    """Timing of the mesh's control plane.

    Args:
        convergence_ticks: ticks until routing reacts to a change (default 2).
        boot_ticks: ticks a restarted node stays down (default 3).
    """

    convergence_ticks: int = 2
    boot_ticks: int = 3


@dataclasses.dataclass
class FaultStatus:
    """What became of one fault."""

    fault: Fault
    active: bool = False
    ended_tick: int | None = None
    remediated_by: str | None = None
    remediation_tick: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.fault.to_dict(),
            "active": self.active,
            "ended_tick": self.ended_tick,
            "remediated_by": self.remediated_by,
            "remediation_tick": self.remediation_tick,
        }


@dataclasses.dataclass(frozen=True)
class RoutingInputs:
    participating: npt.NDArray[np.bool_]
    may_forward: npt.NDArray[np.bool_]
    roots: npt.NDArray[np.bool_]
    link_usable: npt.NDArray[np.bool_]


class MeshControl:
    """Faults, actions, node/link status and routing for the whole mesh.

    Deterministic: the same topology, schedule and per-tick actions give the same
    state everywhere, so each shard keeps its own copy instead of asking a
    coordinator, and routing stays one global tree.
    """

    def __init__(
        self,
        topology: Topology,
        faults: list[Fault],
        params: ControlParams | None = None,
        drift: DriftSchedule | None = None,
    ) -> None:
        self.topology = topology
        self.params = params or ControlParams()
        n, e = topology.num_nodes, topology.num_links
        self.tick = -1
        #: Membership drift (None: every node is a member all along); static, rebuilt from the spec.
        self.drift = drift
        self._drift_events = drift.event_ticks(self.params.convergence_ticks) if drift else frozenset()
        self.faults = [FaultStatus(f) for f in faults]
        self._by_start: dict[int, list[int]] = {}
        for i, f in enumerate(faults):
            f.validate(topology)
            self._by_start.setdefault(f.start_tick, []).append(i)
        # Node status.
        self.crashed = np.zeros(n, dtype=bool)
        self.booting_until = np.full(n, -1, dtype=np.int64)
        self.rebooted_at = np.full(n, -1, dtype=np.int64)
        self.isolated = np.zeros(n, dtype=bool)
        self.avoided = np.zeros(n, dtype=bool)
        self.blackhole = np.zeros(n, dtype=bool)
        self.rate_limited = np.zeros(n, dtype=bool)
        self.cpu_scale = np.ones(n, dtype=np.float64)
        # Fault effects on nodes and links.
        self.surge = np.zeros(n, dtype=np.float64)
        self.cpu_extra = np.zeros(n, dtype=np.float64)
        self.leak_per_tick = np.zeros(n, dtype=np.float64)
        self.link_loss = np.zeros(e, dtype=np.float64)
        self.link_delay_ms = np.zeros(e, dtype=np.float64)
        self.link_avoided = np.zeros(e, dtype=bool)
        self.labels = np.zeros(n, dtype=np.int8)
        self.actions: list[Action] = []
        # Membership (see mesh.drift): absent nodes are not in the mesh; draining ones leave soon
        # (no next hop picks them); settling ones joined but have no route (and no telemetry row) yet.
        self.absent = drift.absent(0) if drift else np.zeros(n, dtype=bool)
        self.draining = drift.draining(0, self.params.convergence_ticks) if drift else np.zeros(n, dtype=bool)
        self._unlisted = self.absent.copy()
        # Routing: snapshots of its inputs, each effective convergence_ticks after the change.
        self._routing_history: list[tuple[int, RoutingInputs]] = [(-(10**9), self._routing_inputs())]
        self._last_routing_key = self._routing_key()
        self._routing_base = 0  # version number of _routing_history[0]
        self._tree_version = -1
        self._tree: RoutingTree | None = None
        #: Incremented whenever node or link status changes (cheap change detection for shards).
        self.state_version = 0
        self._down = np.zeros(n, dtype=bool)
        self._sinks = self.absent.copy()

    # ------------------------------------------------------------ durability
    def state(self) -> dict[str, Any]:
        """The control plane's state without the topology and caches (for checkpoints)."""
        skip = {"topology", "_tree", "_tree_version", "drift", "_drift_events"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned (same topology)."""
        self.__dict__.update(state)
        self._tree = None
        self._tree_version = -1

    # ----------------------------------------------------------------- status
    @property
    def down(self) -> npt.NDArray[np.bool_]:
        """Nodes that forward nothing and report nothing (crashed or booting)."""
        return self._down

    @property
    def unlisted(self) -> npt.NDArray[np.bool_]:
        """Nodes without a telemetry row (NaN): absent, or joined and still waiting for a route."""
        return self._unlisted

    @property
    def sinks(self) -> npt.NDArray[np.bool_]:
        """Nodes where transit traffic dies: down, isolated or blackholing."""
        return self._sinks

    def _refresh_status(self) -> None:
        self._down = self.crashed | (self.booting_until > self.tick)
        self._sinks = self._down | self.isolated | self.blackhole | self.absent

    def active_faults(self) -> list[FaultStatus]:
        return [s for s in self.faults if s.active]

    def routing(self) -> tuple[int, RoutingTree]:
        """The routing tree in force at the current tick and its version number."""
        self._prune_routing_history()
        version = self._routing_base
        if version != self._tree_version or self._tree is None:
            inputs = self._routing_history[0][1]
            self._tree = routing_tree(
                self.topology, inputs.participating, inputs.may_forward, inputs.roots, inputs.link_usable
            )
            self._tree_version = version
        return version, self._tree

    def _prune_routing_history(self) -> None:
        """Drop snapshots older than the one in force: they can never be selected again."""
        while len(self._routing_history) > 1 and self._routing_history[1][0] <= self.tick:
            self._routing_history.pop(0)
            self._routing_base += 1

    def _routing_inputs(self) -> RoutingInputs:
        down = self.crashed | (self.booting_until > self.tick)
        participating = ~(down | self.isolated | self.absent)
        return RoutingInputs(
            participating=participating,
            may_forward=participating & (~self.avoided | self.blackhole) & ~self.draining,
            roots=(self.topology.gateways | self.blackhole) & participating,
            link_usable=~self.link_avoided,
        )

    # -------------------------------------------------------------- advancing
    def validate_action(self, action: Action) -> None:
        action.validate(self.topology)

    def advance(self, tick: int, actions: list[Action] | tuple[Action, ...] = ()) -> None:
        """Move to ``tick``: apply the tick's actions, then start and end faults."""
        if tick != self.tick + 1:
            raise ConfigError(f"mesh control is at tick {self.tick}; cannot advance to {tick}")
        self.tick = tick
        self._prune_routing_history()
        ending = [s for s in self.faults if s.active and self._should_end(s)]
        starting = self._by_start.get(tick, [])
        booted = bool(self._any_boot_done(tick))
        members = tick in self._drift_events
        if not (actions or ending or starting or booted or members):
            return
        if members:
            self._refresh_membership()
        for action in actions:
            self._apply(dataclasses.replace(action, tick=tick))
        for status in self.faults:
            if status.active and self._should_end(status):
                self._end(status)
        for i in starting:
            self._start(self.faults[i])
        self._refresh_status()
        self._refresh_labels()
        self.state_version += 1
        key = self._routing_key()
        if key != self._last_routing_key:
            self._last_routing_key = key
            self._routing_history.append((tick + self.params.convergence_ticks, self._routing_inputs()))

    def _refresh_membership(self) -> None:
        assert self.drift is not None
        lead = self.params.convergence_ticks
        self.absent = self.drift.absent(self.tick)
        self.draining = self.drift.draining(self.tick, lead)
        self._unlisted = self.absent | self.drift.settling(self.tick, lead)

    def _any_boot_done(self, tick: int) -> bool:
        return bool(np.any(self.booting_until == tick))

    def _routing_key(self) -> bytes:
        inputs = self._routing_inputs()
        return b"".join(
            np.packbits(a).tobytes()
            for a in (inputs.participating, inputs.may_forward, inputs.roots, inputs.link_usable)
        )

    def _should_end(self, status: FaultStatus) -> bool:
        f = status.fault
        if status.remediation_tick is not None:
            # restart-type remediations end when the node has booted.
            return self.tick >= status.remediation_tick + (
                self.params.boot_ticks if status.remediated_by == "restart_node" else 0
            )
        return self.tick >= f.end_tick

    def _start(self, status: FaultStatus) -> None:
        f, sev = status.fault, status.fault.severity
        status.active = True
        if f.kind == "node_crash":
            self.crashed[f.node] = True
        elif f.kind == "link_degradation":
            assert f.peer is not None
            link = self.topology.link_id(f.node, f.peer)
            self.link_loss[link] = 0.08 + 0.25 * sev
            self.link_delay_ms[link] = 15.0 + 40.0 * sev
        elif f.kind == "congestion":
            self.surge[f.node] = 1.1 + 0.8 * sev  # extra traffic, in multiples of the node's capacity
        elif f.kind == "cpu_exhaustion":
            self.cpu_extra[f.node] = 0.8 + 0.6 * sev
        elif f.kind == "memory_leak":
            # Reaches swapping (> 90 %) about two thirds into the fault's own duration.
            self.leak_per_tick[f.node] = (0.45 + 0.1 * sev) / max(1.0, 0.66 * f.duration_ticks)
        elif f.kind == "blackhole":
            self.blackhole[f.node] = True

    def _end(self, status: FaultStatus) -> None:
        f = status.fault
        status.active = False
        status.ended_tick = self.tick
        if f.kind == "node_crash":
            self.crashed[f.node] = False
            if status.remediated_by is None:
                self.rebooted_at[f.node] = self.tick  # recovered on its own (watchdog reboot)
        elif f.kind == "link_degradation":
            assert f.peer is not None
            link = self.topology.link_id(f.node, f.peer)
            self.link_loss[link] = 0.0
            self.link_delay_ms[link] = 0.0
        elif f.kind == "congestion":
            self.surge[f.node] = 0.0
        elif f.kind == "cpu_exhaustion":
            self.cpu_extra[f.node] = 0.0
        elif f.kind == "memory_leak":
            self.leak_per_tick[f.node] = 0.0
            if status.remediated_by is None:
                self.rebooted_at[f.node] = self.tick  # the OOM killer restarted the daemon
        elif f.kind == "blackhole":
            self.blackhole[f.node] = False

    def _apply(self, action: Action) -> None:
        node, tick = action.node, action.tick
        self.actions.append(action)
        if action.name == "restart_node":
            if self.booting_until[node] <= tick:
                self.booting_until[node] = tick + self.params.boot_ticks
                self.rebooted_at[node] = tick + self.params.boot_ticks
        elif action.name == "reroute":
            if action.peer is not None:
                self.link_avoided[self.topology.link_id(node, action.peer)] = True
            else:
                self.avoided[node] = True
        elif action.name == "rate_limit":
            self.rate_limited[node] = True
        elif action.name == "isolate_node":
            self.isolated[node] = True
        elif action.name == "scale_capacity":
            self.cpu_scale[node] *= 2.0
        # Heal the fault this action is right for, if one is active on its target.
        for status in self.faults:
            f = status.fault
            if not status.active or status.remediation_tick is not None or HEALED_BY[f.kind] != action.name:
                continue
            if f.kind == "link_degradation":
                hit = action.peer is not None and {node, action.peer} == {f.node, f.peer}
            else:
                hit = f.node == node and action.peer is None
            if hit:
                status.remediated_by = action.name
                status.remediation_tick = tick
                if action.name != "restart_node":
                    self._end(status)
                # A crashed node boots: it stays down (booting) and comes back at the end.

    def _refresh_labels(self) -> None:
        self.labels[:] = 0
        for status in self.faults:
            if status.active:
                f = status.fault
                self.labels[f.node] = FAULT_CODES[f.kind]
                if f.peer is not None:
                    self.labels[f.peer] = FAULT_CODES[f.kind]
