"""Gateway routing trees over the mesh and the per-region ancestor matrices the kernel sums along."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import breadth_first_order

from x0tta6bl4.mesh.topology import Topology

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclasses.dataclass(frozen=True, eq=False)
class RoutingTree:
    """Every node's next hop towards a root (a gateway, or a blackhole that poses as one).

    ``parent[i] == -1`` for roots and for nodes with no route; ``uplink[i]`` is the link
    id from ``i`` to its parent (-1 when there is none).
    """

    parent: IntArray
    uplink: IntArray
    hops: IntArray
    is_root: BoolArray

    @property
    def routed(self) -> BoolArray:
        """Nodes that reach a root."""
        return self.hops >= 0


def _depths(parent: IntArray, reached: BoolArray) -> IntArray:
    """Hops from every reached node to its root by pointer doubling (-1 where unreached)."""
    depth = np.where(parent >= 0, 1, 0).astype(np.int64)
    jump = parent.copy()
    while True:
        live = np.flatnonzero(jump >= 0)
        if live.size == 0:
            break
        depth[live] += depth[jump[live]]
        jump[live] = jump[jump[live]]
    return np.where(reached, depth, -1)


def routing_tree(
    topology: Topology,
    participating: BoolArray,
    may_forward: BoolArray,
    roots: BoolArray,
    link_usable: BoolArray,
) -> RoutingTree:
    """Hop-count shortest-path tree from every participating node to its nearest root.

    Args:
        topology: the mesh.
        participating: nodes that take part in routing at all (up and not isolated).
        may_forward: nodes others may pick as next hop.
        roots: nodes where routes end.
        link_usable: links routing may use.
    """
    n = topology.num_nodes
    u, v = topology.edges[:, 0], topology.edges[:, 1]
    link_ids = np.arange(topology.num_links, dtype=np.int64)
    ok = link_usable & participating[u] & participating[v]
    # Directed "a can be the next hop of b" edges, plus a super source feeding every root.
    src = np.concatenate([u[ok & may_forward[u]], v[ok & may_forward[v]]])
    dst = np.concatenate([v[ok & may_forward[u]], u[ok & may_forward[v]]])
    root_ids = np.flatnonzero(roots & participating)
    src = np.concatenate([src, np.full(root_ids.shape[0], n)])
    dst = np.concatenate([dst, root_ids])
    graph = csr_matrix(coo_matrix((np.ones(src.shape[0]), (src, dst)), shape=(n + 1, n + 1)))
    order, pred = breadth_first_order(graph, n, directed=True, return_predecessors=True)
    parent = pred[:n].astype(np.int64)
    parent[(parent == n) | (parent < 0)] = -1
    reached = np.zeros(n + 1, dtype=bool)
    reached[order] = True
    hops = _depths(parent, reached[:n])
    uplink = np.full(n, -1, dtype=np.int64)
    child = np.flatnonzero(parent >= 0)
    if child.size:
        a = np.minimum(child, parent[child])
        b = np.maximum(child, parent[child])
        uplink[child] = link_ids[np.searchsorted(topology.edge_keys, a * n + b)]
    is_root = np.zeros(n, dtype=bool)
    is_root[root_ids] = True
    return RoutingTree(parent=parent, uplink=uplink, hops=hops, is_root=is_root)


@dataclasses.dataclass(frozen=True, eq=False)
class RegionPaths:
    """The part of every path that lies inside one region.

    ``ancestors`` is a sparse ``[n, n]`` 0/1 matrix over the region's local nodes:
    row ``i`` marks ``i`` and each local node on its path up to the first node that
    ends it (a root, a dead node) or whose parent is in another region. ``exit_parent``
    is that remote parent (-1 when the path ends inside the region); ``path_end`` the
    local index of the last local node of each path.
    """

    ancestors: csr_matrix
    ancestors_t: csr_matrix
    path_end: IntArray
    exit_parent: IntArray
    remote_parent: BoolArray
    has_remote_child: BoolArray


def region_paths(tree: RoutingTree, first: int, last: int, sinks: BoolArray) -> RegionPaths:
    """Ancestor matrix of nodes ``first..last-1`` for a tree, cutting paths at ``sinks``."""
    n = last - first
    parent = tree.parent[first:last]
    in_region = (parent >= first) & (parent < last)
    remote_parent = (parent >= 0) & ~in_region
    # A local node whose path ends here: root, no route, dead, or a remote parent.
    stops = ~in_region | sinks[first:last]
    rows: list[IntArray] = [np.arange(n, dtype=np.int64)]
    cols: list[IntArray] = [np.arange(n, dtype=np.int64)]
    cur = np.arange(n, dtype=np.int64)
    active = ~stops
    while active.any():
        idx = np.flatnonzero(active)
        cur_next = parent[cur[idx]] - first
        cur[idx] = cur_next
        rows.append(idx)
        cols.append(cur_next)
        active[idx] = ~stops[cur_next]
    exit_parent = np.where(remote_parent[cur] & ~sinks[first:last][cur], parent[cur], -1)
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    anc = csr_matrix((np.ones(r.shape[0]), (r, c)), shape=(n, n))
    child_parent = tree.parent
    remote_child_mask = (child_parent >= first) & (child_parent < last)
    outside = np.ones(tree.parent.shape[0], dtype=bool)
    outside[first:last] = False
    has_remote_child = np.zeros(n, dtype=bool)
    has_remote_child[child_parent[remote_child_mask & outside] - first] = True
    return RegionPaths(
        ancestors=anc,
        ancestors_t=anc.T.tocsr(),
        path_end=cur,
        exit_parent=exit_parent,
        remote_parent=remote_parent,
        has_remote_child=has_remote_child,
    )
