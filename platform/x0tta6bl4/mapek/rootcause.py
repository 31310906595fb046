"""Root cause from routing knowledge: which alarmed node explains an incident, and when its fix worked.

Traffic flows from every node up its routing tree to a gateway, so a fault at a node or on its
uplink degrades every node whose path crosses it (its subtree), and a surge that enters at a node
fills the queues of every node above it. Those nodes alarm too, but they are symptoms: acting on
them fixes nothing and teaches the learner wrong statistics. The controller rebuilds the tree the
mesh routes on from what it knows without ground truth: the links and gateways of its
:class:`~x0tta6bl4.mapek.interfaces.MeshView` and its own isolations and avoided links, through
:func:`x0tta6bl4.mesh.routing.routing_tree` (the mesh's own routing rule). The simulator's fault
labels never enter here; they are for evaluation only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

import numpy as np
import numpy.typing as npt

from x0tta6bl4.mapek.interfaces import MeshView
from x0tta6bl4.mesh.routing import RoutingTree, routing_tree
from x0tta6bl4.mesh.topology import Topology
from x0tta6bl4.telemetry.frame import FEATURE_INDEX

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

#: Traffic scale (bytes/s) below which rx and tx changes are noise: ratios are taken of value + floor.
_TRAFFIC_FLOOR = 2e4

#: A node that forwards less than this share of what its baseline forwarding ratio says "forwards none".
_BLACKHOLE_FORWARDING = 0.3

#: Bytes/s a blackhole must take in beyond what it sends (a leaf's own rx-tx imbalance stays below it).
_BLACKHOLE_IMBALANCE = 5e4

#: Path loss a degraded uplink adds over the usual gap to the next hop's (a link fault adds 0.08-0.33).
_UPLINK_LOSS = 0.1

#: Latency (ms) a degraded uplink adds beyond the usual gap (a link fault adds 15-55 ms each way).
_UPLINK_DELAY_MS = 20.0

#: Of the members with the widest reach, the deepest is the root when it reaches this share of them.
_COVER_SHARE = 0.75


@dataclasses.dataclass(frozen=True)
class RootCause:
    """Where an incident starts, and why the controller thinks so.

    ``hint``: ``silent`` (stopped reporting), ``blackhole`` (traffic in, nothing forwarded),
    ``surge`` (the deepest node whose own traffic fills the queues above it), ``subtree`` (the
    deepest node whose routing subtree holds the other alarms), or ``abnormal`` (no routing
    relation among the members: the most abnormal one).
    """

    node: int
    hint: str
    explains: int


def blackhole_sign(features: F32, baseline: F64) -> Bools:
    """Rows whose node takes traffic in but forwards (almost) none, with no queue or drops to explain it.

    Shapes:
        features: ``[rows, FEATURES]``; baseline: ``[rows, FEATURES]``; out: ``[rows]``.
    """
    f = np.nan_to_num(features.astype(np.float64))
    rx, tx = f[:, FEATURE_INDEX["rx_bytes_per_s"]], f[:, FEATURE_INDEX["tx_bytes_per_s"]]
    rx0, tx0 = baseline[:, FEATURE_INDEX["rx_bytes_per_s"]], baseline[:, FEATURE_INDEX["tx_bytes_per_s"]]
    forwarding = ((tx + _TRAFFIC_FLOOR) / (rx + _TRAFFIC_FLOOR)) / (
        (tx0 + _TRAFFIC_FLOOR) / (rx0 + _TRAFFIC_FLOOR)
    )
    sign: Bools = (
        (rx >= 0.5 * rx0)
        & (rx - tx >= _BLACKHOLE_IMBALANCE)
        & (forwarding < _BLACKHOLE_FORWARDING)
        & (f[:, FEATURE_INDEX["queue_depth_pkts"]] < 10)
        & (f[:, FEATURE_INDEX["packet_drops_per_s"]] < 50)
    )
    return sign


def surge_sign(features: F32, baseline: F64) -> Bools:
    """Rows whose node receives several times its usual traffic with a full forwarding queue.

    Shapes:
        features: ``[rows, FEATURES]``; baseline: ``[rows, FEATURES]``; out: ``[rows]``.
    """
    f = np.nan_to_num(features.astype(np.float64))
    rx = f[:, FEATURE_INDEX["rx_bytes_per_s"]] + _TRAFFIC_FLOOR
    rx0 = baseline[:, FEATURE_INDEX["rx_bytes_per_s"]] + _TRAFFIC_FLOOR
    sign: Bools = (f[:, FEATURE_INDEX["queue_depth_pkts"]] >= 50) & (rx >= 3.0 * rx0)
    return sign


def uplink_loss_sign(features: F32, baseline: F64, parent: I64) -> Bools:
    """Nodes whose own uplink degraded: their path loss and latency rose over their next hop's.

    Loss and latency are end to end, so a lossy link shows on every node routed across it; only
    the node just below the link sees them jump while its next hop, which reports normally and
    still has a route, does not. Loss that the node's own queue explains (drops from a full queue)
    is congestion, not a link. Nodes below it keep their usual gap to their own next hops, so
    they are not signed. A node without a next hop, or one that lost all its traffic, is not.

    Shapes:
        features: ``[nodes, FEATURES]``; baseline: ``[nodes, FEATURES]``; parent: ``[nodes]``
        (next hop, -1 at a root); out: ``[nodes]``.
    """
    f = np.nan_to_num(features.astype(np.float64))
    has = parent >= 0
    up = np.where(has, parent, 0)
    loss, lat = FEATURE_INDEX["loss_ratio"], FEATURE_INDEX["latency_mean_ms"]

    def rise(i: int) -> F64:  # this tick's gap to the next hop, less the usual (never below 0)
        usual = np.maximum(baseline[:, i] - baseline[up, i], 0.0)
        gap: F64 = (f[:, i] - f[up, i]) - usual
        return gap

    upstream_reports = (f[up, FEATURE_INDEX["links_up"]] > 0) & (f[up, FEATURE_INDEX["cpu_util"]] > 0)
    queue, drops = FEATURE_INDEX["queue_depth_pkts"], FEATURE_INDEX["packet_drops_per_s"]
    # Loss from the node's own full queue is congestion, not its link.
    own_queue_normal = (f[:, queue] <= 2.0 * baseline[:, queue] + 10.0) & (
        f[:, drops] <= 2.0 * baseline[:, drops] + 50.0
    )
    sign: Bools = (
        has
        & own_queue_normal
        & upstream_reports
        & ~np.isnan(features[up]).all(axis=1)
        & (f[:, loss] < 0.99)
        & (f[up, loss] < 0.99)
        & (rise(loss) >= _UPLINK_LOSS)
        & (rise(lat) >= _UPLINK_DELAY_MS)
    )
    return sign


def unrouted(features: F32) -> bool:
    """A node that still reports (CPU, links) but whose path reaches no gateway (all traffic lost).

    Shapes:
        features: ``[FEATURES]`` of one node.
    """
    f = np.nan_to_num(features.astype(np.float64))
    alive = f[FEATURE_INDEX["links_up"]] > 0 and f[FEATURE_INDEX["cpu_util"]] > 0
    return bool(alive and f[FEATURE_INDEX["loss_ratio"]] >= 0.99)


def subtree_cover(members: I64, parent: I64) -> I64:
    """How many of ``members`` each member routes for: itself and the members below it on the tree.

    Shapes:
        members: ``[m]`` node ids; parent: ``[nodes]`` next hop (-1 at a root); out: ``[m]``.
    """
    position = {int(m): i for i, m in enumerate(members)}
    cover = np.zeros(members.size, dtype=np.int64)
    for m in members:
        node, seen = int(m), 0
        while node >= 0 and seen <= parent.size:
            i = position.get(node)
            if i is not None:
                cover[i] += 1
            node, seen = int(parent[node]), seen + 1
    return cover


def locate_root(
    members: I64,
    shown: F64,
    silent: Bools,
    features: F32,
    baseline: F64,
    tree: RoutingTree,
    fallback: int,
) -> RootCause:
    """The member whose own signals explain the incident's alarms (``fallback`` when none does).

    In order: a member that went silent; a member that takes traffic in and forwards none (a
    blackhole poses as a root, so the nodes it captured need not sit below it on the tree); the
    deepest member with a traffic surge and a full queue (the queues above it fill with its
    traffic); the deepest member that routes for most of the others (a fault at a node or on its
    uplink shows in its whole subtree).

    Shapes:
        members: ``[m]``; shown, silent: ``[nodes]``; features, baseline: ``[nodes, FEATURES]``.
    """
    if members.size == 0:
        return RootCause(fallback, "abnormal", 0)
    quiet = members[silent[members]]
    if quiet.size:
        cover = subtree_cover(members, tree.parent)[silent[members]]
        return RootCause(int(quiet[np.argmax(cover)]), "silent", int(cover.max()))
    holes = members[blackhole_sign(features[members], baseline[members])]
    if holes.size:
        rx = np.nan_to_num(features[holes, FEATURE_INDEX["rx_bytes_per_s"]])
        return RootCause(int(holes[np.argmax(rx)]), "blackhole", int(members.size))
    surging = members[surge_sign(features[members], baseline[members])]
    if surging.size:
        deepest = surging[tree.hops[surging] == tree.hops[surging].max()]
        return RootCause(int(deepest[np.argmax(shown[deepest])]), "surge", int(surging.size))
    cover = subtree_cover(members, tree.parent)
    best = int(cover.max())
    if best < 2:
        return RootCause(fallback, "abnormal", 1)
    pool = members[cover >= _COVER_SHARE * best]
    pool_cover = cover[cover >= _COVER_SHARE * best]
    depth = tree.hops[pool]
    deepest = depth == depth.max()
    pick = int(np.argmax(np.where(deepest, shown[pool], -np.inf)))
    return RootCause(int(pool[pick]), "subtree", int(pool_cover[pick]))


def uplink_peer(node: int, tree: RoutingTree, alarmed: Bools) -> int | None:
    """The node's next hop when its trouble starts on its uplink (the next hop itself is not alarmed)."""
    parent = int(tree.parent[node])
    if parent < 0 or alarmed[parent]:
        return None
    return parent


def action_worked(
    action: str, node: int, members: I64, alarmed: Bools, silent: Bools, features: F32, baseline: F64
) -> bool:
    """The verdict on an action, read from the fault's own signals once the action has settled.

    An action on a node worked when that node (the root) neither alarms nor still shows its own
    sign (a blackhole's one-way traffic, a surge's full queue: a blackhole can look calm to the
    detector while it still swallows traffic). The symptoms around it drain on their own time and
    say nothing of the action. A quarantine silences its own target, so it worked when the members
    that routed into it are quiet, except those with a sign of their own (another fault's root).

    Shapes:
        members: ``[m]``; alarmed, silent: ``[nodes]``; features, baseline: ``[nodes, FEATURES]``.
    """
    marked = np.zeros(alarmed.shape[0], dtype=bool)
    marked[members] = (
        silent[members]
        | blackhole_sign(features[members], baseline[members])
        | surge_sign(features[members], baseline[members])
    )
    if action == "isolate_node":
        others = members[(members != node) & ~marked[members]]
        return not bool(alarmed[others].any()) if others.size else True
    return not bool(alarmed[node] or marked[node])


class RoutingKnowledge:
    """The routing tree the controller expects the mesh to run, given what the controller did to it.

    Args:
        view: the mesh's links and gateways (hosts included: they hang off gateways).
    """

    def __init__(self, view: MeshView) -> None:
        n = view.num_nodes
        pairs = np.sort(view.pairs.astype(np.int64), axis=1)
        keys = np.unique(pairs[:, 0] * n + pairs[:, 1])
        edges = np.stack([keys // n, keys % n], axis=1).astype(np.int64)
        self._topology = Topology(
            positions=np.zeros((n, 2)),
            edges=edges,
            gateways=view.gateways.astype(bool),
            region_offsets=np.array([0, n], dtype=np.int64),
            seed=0,
        )
        self._cache: tuple[tuple[frozenset[int], frozenset[tuple[int, int]]], RoutingTree] | None = None

    def tree(
        self,
        isolated: Collection[int],
        avoided: Collection[tuple[int, int]],
        posing: Collection[int] = (),
    ) -> RoutingTree:
        """The tree without ``isolated`` nodes and ``avoided`` links (``(u, v)``; ``(u, -1)``: a node).

        ``posing``: nodes that pose as roots (suspected blackholes: the mesh routes to them as to a
        gateway); the one-entry cache holds the tree without them.
        """
        if posing:
            return self._build((frozenset(isolated), frozenset(avoided)), frozenset(posing))
        key = (frozenset(isolated), frozenset(avoided))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        tree = self._build(key, frozenset())
        self._cache = (key, tree)
        return tree

    def _build(
        self, key: tuple[frozenset[int], frozenset[tuple[int, int]]], posing: frozenset[int]
    ) -> RoutingTree:
        topo = self._topology
        n = topo.num_nodes
        participating = np.ones(n, dtype=bool)
        participating[list(key[0])] = False
        may_forward = participating.copy()
        usable = np.ones(topo.num_links, dtype=bool)
        for u, v in key[1]:
            if v < 0:
                may_forward[u] = False
                continue
            a, b = min(u, v), max(u, v)
            pos = int(np.searchsorted(topo.edge_keys, a * n + b))
            if pos < topo.num_links and topo.edge_keys[pos] == a * n + b:
                usable[pos] = False
        roots = topo.gateways.copy()
        roots[list(posing)] = True
        return routing_tree(topo, participating, may_forward, roots & participating, usable)


def root_of(tree: RoutingTree) -> I64:
    """The root each node's route ends at (-1 for a node without a route).

    Shapes:
        out: ``[nodes]``.
    """
    top = np.where(tree.parent >= 0, tree.parent, np.arange(tree.parent.size))
    for _ in range(int(np.ceil(np.log2(max(2, tree.parent.size)))) + 1):
        top = top[top]
    return np.where(tree.routed, top, -1).astype(np.int64)
