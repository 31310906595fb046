"""The vectorised per-region simulation kernel: one numpy step advances every node of a region."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from x0tta6bl4.mesh.control import MeshControl
from x0tta6bl4.mesh.drift import DriftSchedule
from x0tta6bl4.mesh.routing import RegionPaths, region_paths
from x0tta6bl4.mesh.topology import Topology
from x0tta6bl4.telemetry.frame import FEATURE_INDEX, FEATURES

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: Boundary message one region sends the others each tick:
#: (parent ids, traffic handed up to them, node ids, their path state [m, 4]).
Message = tuple[I64, F64, I64, F64]

#: Columns of the per-region summary vector ("nodes": members, see mesh.drift).
SUMMARY_FIELDS = ("nodes", "serviceable", "down", "labelled", "latency_sum_ms")

_PKT_BYTES = 1000.0
_QUEUE_PKTS = 100
_TIMEOUT_MS = 3000.0
_LOG_EPS = float(np.log(1e-12))


@dataclasses.dataclass(frozen=True)
class TrafficParams:
    """Traffic and node-capacity model.

    Args:
        demand_bytes_per_s: median traffic a node sends and receives itself (default 40 kB/s).
        capacity_bytes_per_s: median forwarding capacity of a mesh radio (default 6 MB/s, about 50 Mbit/s).
        gateway_capacity_factor: how much more a gateway forwards (default 20: a wired uplink).
        hop_delay_ms: one-way radio hop delay (default 2 ms).
        noise: log-normal spread of per-tick demand (default 0.15).
        diurnal_period_ticks: period of the daily traffic swing (default 600).
    """

    demand_bytes_per_s: float = 40_000.0
    capacity_bytes_per_s: float = 6_000_000.0
    gateway_capacity_factor: float = 20.0
    hop_delay_ms: float = 2.0
    noise: float = 0.15
    diurnal_period_ticks: int = 600


def empty_message() -> Message:
    return (
        np.empty(0, dtype=np.int64),
        np.empty(0, dtype=np.float64),
        np.empty(0, dtype=np.int64),
        np.empty((0, 4), dtype=np.float64),
    )


class RegionSim:
    """Simulates one region's nodes; every node-level quantity is a numpy vector.

    Traffic follows the routing tree up to the gateways, so load, queueing delay and
    loss at a node reach every node whose path crosses it. Paths that leave the region
    continue through boundary messages exchanged once per tick (one tick of lag per
    region crossing, like a routing protocol's own update delay).
    """

    def __init__(
        self,
        topology: Topology,
        region: int,
        seed: int,
        params: TrafficParams | None = None,
        drift: DriftSchedule | None = None,
    ) -> None:
        self.region = region
        self.drift = drift
        self.first = int(topology.region_offsets[region])
        self.last = int(topology.region_offsets[region + 1])
        self.params = params or TrafficParams()
        n = self.last - self.first
        self.node_ids = np.arange(self.first, self.last, dtype=np.int64)
        static = np.random.default_rng([seed, region, 1])
        p = self.params
        gw = topology.gateways[self.first : self.last]
        self.demand_base = p.demand_bytes_per_s * static.lognormal(0.0, 0.5, n)
        self.capacity = (
            p.capacity_bytes_per_s
            * static.lognormal(0.0, 0.2, n)
            * np.where(gw, p.gateway_capacity_factor, 1.0)
        )
        self.cpu_base = static.uniform(0.08, 0.25, n)
        self.mem_base = static.uniform(0.30, 0.55, n)
        self.hop_ms = p.hop_delay_ms * static.uniform(0.7, 1.6, n) + np.where(gw, 3.0, 0.0)
        self.is_gateway = gw
        adjacency = topology.adjacency()
        self._adj_links = adjacency[self.first : self.last].tocoo()
        # Dynamic state.
        self.rng = np.random.default_rng([seed, region, 2])
        self.mem = self.mem_base.copy()
        self.cpu_demand = self.cpu_base.copy()
        self.tick = -1
        self._paths_key: tuple[int, int] = (-1, -1)
        self._paths: RegionPaths | None = None
        self._links_up = np.zeros(n)

    @property
    def num_nodes(self) -> int:
        return self.last - self.first

    # ------------------------------------------------------------------ state
    def dynamic_state(self) -> dict[str, Any]:
        """Everything that changes tick by tick (what a checkpoint must hold)."""
        return {
            "tick": self.tick,
            "mem": self.mem.copy(),
            "cpu_demand": self.cpu_demand.copy(),
            "rng": self.rng.bit_generator.state,
        }

    def load_dynamic_state(self, state: dict[str, Any]) -> None:
        self.tick = int(state["tick"])
        self.mem = np.asarray(state["mem"], dtype=np.float64).copy()
        self.cpu_demand = np.asarray(state["cpu_demand"], dtype=np.float64).copy()
        self.rng.bit_generator.state = state["rng"]
        self._paths_key = (-1, -1)

    def _refresh_paths(self, control: MeshControl) -> RegionPaths:
        version, tree = control.routing()
        key = (version, control.state_version)
        if key != self._paths_key or self._paths is None:
            self._paths = region_paths(tree, self.first, self.last, control.sinks)
            usable = ~(control.down | control.isolated | control.absent)
            link_ok = ~control.link_avoided[self._adj_links.data - 1] & usable[self._adj_links.col]
            self._links_up = np.bincount(self._adj_links.row[link_ok], minlength=self.num_nodes).astype(
                np.float64
            )
            self._paths_key = key
        return self._paths

    # ------------------------------------------------------------------- step
    def step(self, control: MeshControl, inbound: list[Message]) -> tuple[F64, Message, F64]:
        """Advance one tick (``control`` must already be at it).

        Returns:
            features ``[nodes, len(FEATURES)]`` (float64), the boundary message for the
            other regions, and the summary vector (:data:`SUMMARY_FIELDS`).
        """
        tick = control.tick
        p = self.params
        a, b = self.first, self.last
        n = b - a
        paths = self._refresh_paths(control)
        _, tree = control.routing()
        down = control.down[a:b]
        isolated = control.isolated[a:b]
        blackhole = control.blackhole[a:b]
        sinks = control.sinks[a:b]
        unlisted = control.unlisted[a:b]
        alive = ~(down | isolated | unlisted)

        # Own traffic (both directions), with the daily swing and per-tick noise.
        noise = self.rng.lognormal(0.0, p.noise, n)
        diurnal = 1.0 + 0.25 * np.sin(2.0 * np.pi * tick / p.diurnal_period_ticks)
        demand = self.demand_base * diurnal
        drift = self.drift.demand_multiplier(tick, a, b) if self.drift is not None else None
        if drift is not None:
            demand = demand * drift
        own = demand * noise + control.surge[a:b] * self.capacity * noise
        limited = control.rate_limited[a:b]
        if limited.any():
            own = np.where(limited, np.minimum(own, 1.5 * self.demand_base), own)
        own = np.where(alive, own, 0.0)

        # Traffic handed up by remote children last tick.
        handed_up = np.zeros(n)
        for parents, loads, _, _ in inbound:
            mine = (parents >= a) & (parents < b)
            if mine.any():
                np.add.at(handed_up, parents[mine] - a, loads[mine])
        carried = paths.ancestors_t @ (own + handed_up)
        transit = carried - own

        # Forwarding: capacity shrinks when the CPU is saturated; M/M/1/K queue.
        capacity = self.capacity / np.maximum(1.0, self.cpu_demand)
        rho = np.clip(carried / capacity, 1e-9, 30.0)
        rho = np.where(np.abs(rho - 1.0) < 1e-6, 1.0 - 1e-6, rho)
        r_k = rho**_QUEUE_PKTS
        r_k1 = r_k * rho
        p_block = (1.0 - rho) * r_k / (1.0 - r_k1)
        queue = rho / (1.0 - rho) - (_QUEUE_PKTS + 1) * r_k1 / (1.0 - r_k1)
        queue = np.where(alive, np.clip(queue, 0.0, _QUEUE_PKTS), 0.0)
        queue_ms = 1000.0 * queue * _PKT_BYTES / capacity

        # Per-hop path terms, summed along the local part of every path.
        uplink = tree.uplink[a:b]
        has_up = uplink >= 0
        link_loss = np.where(has_up, control.link_loss[uplink], 0.0)
        link_delay = np.where(has_up, control.link_delay_ms[uplink], 0.0)
        dead_drop = np.where(sinks, _LOG_EPS, 0.0)
        hop = np.empty((n, 4))
        hop[:, 0] = self.hop_ms + link_delay
        hop[:, 1] = queue_ms
        hop[:, 2] = np.log1p(-np.minimum(link_loss, 0.999999)) + np.log1p(-np.minimum(p_block, 0.999999))
        hop[:, 3] = dead_drop
        path = paths.ancestors @ hop
        path[:, 3] -= dead_drop  # a node's own traffic is not lost to its own blackhole or queue-less death
        # Paths ending inside the region reach a root only if the last node is a live root
        # (a blackhole's own traffic still leaves through its real uplink).
        end = paths.path_end
        own_blackhole = (end == np.arange(n)) & blackhole
        last_ok = tree.is_root[a:b][end] & (~sinks[end] | own_blackhole)
        end_ok = np.where(paths.exit_parent >= 0, 1.0, last_ok.astype(np.float64))
        exits = np.flatnonzero(paths.exit_parent >= 0)
        if exits.size:
            # Unknown remote state (first tick, or right after a routing change) counts as
            # an intact path; a known broken one breaks the path.
            remote = np.nan_to_num(self._remote_paths(paths.exit_parent[exits], inbound), nan=-1.0)
            known = remote[:, 3] >= 0.0
            path[exits, :3] += np.where(known[:, None], remote[:, :3], 0.0)
            path[exits, 3] += np.where(known, np.log(np.maximum(remote[:, 3], 1e-300)), 0.0)
            end_ok[exits] = np.where(known & (remote[:, 3] <= 0.0), 0.0, 1.0)
        routed = (end_ok > 0) & alive
        log_survive = path[:, 2] + path[:, 3]
        survive = np.where(routed, np.exp(np.maximum(log_survive, -60.0)), 0.0)
        loss = 1.0 - survive**2

        # Node resources.
        self.mem = np.where(control.rebooted_at[a:b] == tick, self.mem_base, self.mem)
        self.mem = np.minimum(self.mem + control.leak_per_tick[a:b] + self.rng.normal(0.0, 0.002, n), 0.995)
        self.mem = np.maximum(self.mem, 0.05)
        thrash = np.clip((self.mem - 0.9) / 0.08, 0.0, 1.0) * 0.7
        self.cpu_demand = (
            self.cpu_base + 0.25 * np.minimum(rho, 2.0) + control.cpu_extra[a:b] + thrash
        ) / control.cpu_scale[a:b]
        cpu = np.minimum(self.cpu_demand, 1.0)

        # What the node's counters show.
        own_pkts = own / _PKT_BYTES
        transit_pkts = transit / _PKT_BYTES
        lossy = np.minimum(loss, 0.95)
        flows = own / 50_000.0
        rtt_base = 2.0 * path[:, 0]
        rtt_queue = 2.0 * path[:, 1]
        jitter = self.rng.normal(1.0, 0.03, n)
        out = np.empty((n, len(FEATURES)))
        out[:, FEATURE_INDEX["cpu_util"]] = cpu
        out[:, FEATURE_INDEX["mem_util"]] = self.mem
        out[:, FEATURE_INDEX["queue_depth_pkts"]] = queue
        out[:, FEATURE_INDEX["rx_bytes_per_s"]] = 0.7 * own + transit
        forwarded = np.where(blackhole, 0.0, transit * (1.0 - p_block) * (1.0 - link_loss))
        out[:, FEATURE_INDEX["tx_bytes_per_s"]] = 0.3 * own + forwarded
        out[:, FEATURE_INDEX["latency_mean_ms"]] = np.where(
            routed, np.minimum((rtt_base + rtt_queue) * jitter, _TIMEOUT_MS), _TIMEOUT_MS
        )
        out[:, FEATURE_INDEX["latency_p95_ms"]] = np.where(
            routed, np.minimum((1.3 * rtt_base + 3.0 * rtt_queue) * jitter, _TIMEOUT_MS), _TIMEOUT_MS
        )
        out[:, FEATURE_INDEX["loss_ratio"]] = loss
        out[:, FEATURE_INDEX["tcp_retransmits_per_s"]] = 0.5 * own_pkts * lossy / (1.0 - lossy)
        queue_drops = (own_pkts + transit_pkts) * p_block
        out[:, FEATURE_INDEX["packet_drops_per_s"]] = queue_drops + transit_pkts * np.where(
            blackhole, 0.0, link_loss
        )
        out[:, FEATURE_INDEX["tcp_resets_per_s"]] = flows * (0.01 + 0.5 * loss**3) + np.where(
            routed, 0.0, 0.5 * flows + 0.2
        )
        out[:, FEATURE_INDEX["links_up"]] = self._links_up
        out[:, FEATURE_INDEX["runqueue_latency_p95_ms"]] = (
            0.03 + 0.2 * cpu / (1.0 - np.minimum(cpu, 0.995)) + 50.0 * np.maximum(self.cpu_demand - 1.0, 0.0)
        )
        # A down node reports nothing but the collector's "unreachable" record.
        if down.any():
            out[down] = 0.0
            out[down, FEATURE_INDEX["loss_ratio"]] = 1.0
            out[down, FEATURE_INDEX["latency_mean_ms"]] = _TIMEOUT_MS
            out[down, FEATURE_INDEX["latency_p95_ms"]] = _TIMEOUT_MS
        # A node that is not a member (see mesh.drift) has no record at all: NaN, not zeros.
        members = n
        if unlisted.any():
            out[unlisted] = np.nan
            members = n - int(unlisted.sum())

        # Boundary message: traffic handed to remote parents, path state of nodes with remote children.
        up = np.flatnonzero(paths.remote_parent & ~sinks)
        provides = np.flatnonzero(paths.has_remote_child)
        path_state = np.empty((provides.size, 4))
        path_state[:, :3] = path[provides, :3]
        path_state[:, 3] = np.where(routed[provides] & ~sinks[provides], np.exp(path[provides, 3]), 0.0)
        message: Message = (
            tree.parent[a:b][up],
            carried[up],
            self.node_ids[provides],
            path_state,
        )
        serviceable = routed & (loss < 0.2)
        summary = np.array(
            [members, serviceable.sum(), down.sum(), (control.labels[a:b] > 0).sum(), np.nansum(out[:, 5])],
            dtype=np.float64,
        )
        self.tick = tick
        return out, message, summary

    @staticmethod
    def _remote_paths(parents: I64, inbound: list[Message]) -> F64:
        """Path state of remote parents from the other regions' messages (NaN where unknown)."""
        ids = [m[2] for m in inbound if m[2].size]
        if not ids:
            return np.full((parents.size, 4), np.nan)
        all_ids = np.concatenate(ids)
        all_vals = np.concatenate([m[3] for m in inbound if m[2].size])
        order = np.argsort(all_ids, kind="stable")
        all_ids, all_vals = all_ids[order], all_vals[order]
        pos = np.clip(np.searchsorted(all_ids, parents), 0, all_ids.size - 1)
        found = all_ids[pos] == parents
        vals = np.where(found[:, None], all_vals[pos], np.nan)
        return vals
