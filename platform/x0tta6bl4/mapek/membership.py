"""Membership and routing changes the controller observes, and the learned thresholds they void.

A node that leaves the mesh stops reporting (its telemetry row turns all-NaN); one that joins
starts reporting once routing has converged around it. Either way the routing tree changes shape:
the subtree that routed through a leaver moves to other relays, a joiner attracts routes, and the
relays whose subtrees changed see their transit traffic jump (10-20x for a relay that inherits a
large subtree). A threshold learned from a relay's scores under the old tree judges the new normal
as an anomaly, so those relays forget what they learned and are judged against at least the served
model's threshold until they have learned again under the new tree.

Everything here comes from what the controller sees: which rows are NaN, and the routing tree it
rebuilds itself (:class:`~x0tta6bl4.mapek.rootcause.RoutingKnowledge`) over the members only.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from x0tta6bl4.mapek.rootcause import RoutingKnowledge
from x0tta6bl4.mesh.routing import RoutingTree

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


def carried_load(tree: RoutingTree) -> I64:
    """Nodes whose traffic each node carries: itself and every node below it on the tree.

    Shapes:
        out: ``[nodes]``; 0 for a node without a route.
    """
    n = tree.parent.size
    load = np.where(tree.routed, 1, 0).astype(np.int64)
    depth = tree.hops
    for level in range(int(depth.max(initial=0)), 0, -1):
        nodes = np.flatnonzero((depth == level) & (tree.parent >= 0))
        np.add.at(load, tree.parent[nodes], load[nodes])
    assert load.size == n
    return load


def moved_nodes(before: RoutingTree, after: RoutingTree, load_change_share: float) -> I64:
    """Nodes whose routed traffic a tree change moved: a new next hop, a carried load that changed
    by at least ``load_change_share`` of the larger of its two values, or a route gained or lost
    (a node cut off from every gateway reports loss 1.0 and 3 s latency; once reconnected, its
    healthy figures are as far from what it showed as a fault's).

    Shapes:
        out: ``[k]`` node ids, ascending.
    """
    old, new = carried_load(before), carried_load(after)
    both = before.routed & after.routed
    rerouted = both & (before.parent != after.parent)
    larger = np.maximum(np.maximum(old, new), 1)
    reloaded = both & (np.abs(new - old) >= load_change_share * larger)
    reconnected = before.routed != after.routed
    return np.flatnonzero(rerouted | reloaded | reconnected).astype(np.int64)


class MembershipWatch:
    """Which nodes are members (report at all), the routing tree over them, and who a change moved.

    Args:
        routing: the controller's routing knowledge (the mesh's own routing rule over its links).
        num_nodes: nodes in the view.
        adjacency: ``[nodes, nodes]`` mesh links (a join or leave changes its neighbours' links).
        load_change_share: see :func:`moved_nodes`.
        grace_ticks: ticks after a change during which the voided nodes stay in grace.
    """

    def __init__(
        self,
        routing: RoutingKnowledge,
        adjacency: csr_matrix,
        load_change_share: float,
        grace_ticks: int,
    ) -> None:
        num_nodes = adjacency.shape[0]
        self.routing = routing
        self.adjacency = adjacency
        self.load_change_share = load_change_share
        self.grace_ticks = grace_ticks
        self.listed: Bools | None = None
        self.grace_until = np.full(num_nodes, -1, dtype=np.int64)
        self.changes = 0

    @property
    def absent(self) -> frozenset[int]:
        """Nodes without a telemetry record in the last analysed frame (not mesh members)."""
        if self.listed is None:
            return frozenset()
        return frozenset(int(i) for i in np.flatnonzero(~self.listed))

    def tree(self, isolated: Collection[int], avoided: Collection[tuple[int, int]]) -> RoutingTree:
        """The routing tree over the members, without ``isolated`` nodes and ``avoided`` links."""
        return self.routing.tree(frozenset(isolated) | self.absent, avoided)

    def update(
        self,
        tick: int,
        unlisted: Bools,
        isolated: Collection[int],
        avoided: Collection[tuple[int, int]],
    ) -> I64:
        """Take this frame's membership; return the nodes whose learned thresholds it voids.

        Those are the nodes that joined (nothing learned about them is about the mesh they are in
        now, and the scorer's window of them is still partly empty), the neighbours of every node
        that joined or left (their links and link traffic changed), and the members whose routed
        traffic the new tree moved, cut off or reconnected (:func:`moved_nodes`); each starts a grace
        period of ``grace_ticks``. The first frame only records membership.
        """
        listed = ~unlisted
        if self.listed is None:
            self.listed = listed.copy()
            return np.zeros(0, dtype=np.int64)
        if np.array_equal(listed, self.listed):
            return np.zeros(0, dtype=np.int64)
        before = self.tree(isolated, avoided)
        joined = listed & ~self.listed
        changed = listed != self.listed
        self.listed = listed.copy()
        after = self.tree(isolated, avoided)
        moved = moved_nodes(before, after, self.load_change_share)
        moved = moved[listed[moved]]  # a leaver lost its route too, but there is nothing to judge
        near = np.asarray(self.adjacency @ changed.astype(np.float64)).ravel() > 0
        void = np.union1d(np.flatnonzero(joined | (near & listed)), moved).astype(np.int64)
        self.grace_until[void] = tick + self.grace_ticks
        self.changes += 1
        return void

    def in_grace(self, tick: int) -> Bools:
        """Nodes still within the grace period of a change that moved them."""
        grace: Bools = self.grace_until >= tick
        return grace
