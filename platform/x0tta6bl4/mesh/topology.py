"""Seeded wireless-mesh topologies: random geometric graphs with gateways, split into compact regions."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import numpy.typing as npt
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from x0tta6bl4.errors import ConfigError

IntArray = npt.NDArray[np.int64]


@dataclasses.dataclass(frozen=True, eq=False)
class Topology:
    """An undirected mesh graph whose node ids are contiguous per region.

    Args:
        positions: node coordinates (one unit = the mean spacing between nodes).
        edges: undirected links as ``(u, v)`` with ``u < v``, sorted.
        gateways: ``True`` for nodes with a wired uplink (the routing roots).
        region_offsets: region ``r`` owns node ids ``[region_offsets[r], region_offsets[r + 1])``.
        seed: the seed the topology was generated from.

    Shapes:
        positions: ``[nodes, 2]``; edges: ``[links, 2]``; gateways: ``[nodes]``;
        region_offsets: ``[regions + 1]``.
    """

    positions: npt.NDArray[np.float64]
    edges: IntArray
    gateways: npt.NDArray[np.bool_]
    region_offsets: IntArray
    seed: int

    @property
    def num_nodes(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_links(self) -> int:
        return int(self.edges.shape[0])

    @property
    def num_regions(self) -> int:
        return int(self.region_offsets.shape[0] - 1)

    @property
    def region(self) -> npt.NDArray[np.int32]:
        """Region of every node."""
        sizes = np.diff(self.region_offsets)
        return np.repeat(np.arange(self.num_regions, dtype=np.int32), sizes)

    def region_nodes(self, region: int) -> range:
        """Node ids owned by ``region``."""
        return range(int(self.region_offsets[region]), int(self.region_offsets[region + 1]))

    def region_of(self, node: int) -> int:
        """The region that owns ``node``."""
        self.check_node(node)
        return int(np.searchsorted(self.region_offsets, node, side="right") - 1)

    @functools.cached_property
    def edge_keys(self) -> IntArray:
        """Sorted ``u * nodes + v`` key of every link (for id lookups by endpoint pair)."""
        keys: IntArray = self.edges[:, 0] * self.num_nodes + self.edges[:, 1]
        return keys

    def adjacency(self) -> csr_matrix:
        """Symmetric CSR adjacency whose data holds ``link id + 1`` (0 is reserved for "no link")."""
        n = self.num_nodes
        ids = np.arange(1, self.num_links + 1, dtype=np.int64)
        u, v = self.edges[:, 0], self.edges[:, 1]
        mat = coo_matrix(
            (np.concatenate([ids, ids]), (np.concatenate([u, v]), np.concatenate([v, u]))), shape=(n, n)
        )
        return mat.tocsr()

    def degree(self) -> IntArray:
        return np.bincount(self.edges.ravel(), minlength=self.num_nodes).astype(np.int64)

    def check_node(self, node: int) -> None:
        """Raise :class:`ConfigError` unless ``node`` exists."""
        if not 0 <= int(node) < self.num_nodes:
            raise ConfigError(f"node {node} does not exist (the mesh has nodes 0..{self.num_nodes - 1})")

    def link_id(self, u: int, v: int) -> int:
        """Id of the link between ``u`` and ``v``; :class:`ConfigError` when there is none."""
        self.check_node(u)
        self.check_node(v)
        a, b = (u, v) if u < v else (v, u)
        key = self.edge_keys
        pos = int(np.searchsorted(key, a * self.num_nodes + b))
        if pos >= key.shape[0] or key[pos] != a * self.num_nodes + b:
            raise ConfigError(f"there is no link between nodes {u} and {v}")
        return pos

    def summary(self) -> dict[str, float | int]:
        """Sizes and shape figures a network engineer checks first."""
        deg = self.degree()
        return {
            "nodes": self.num_nodes,
            "links": self.num_links,
            "regions": self.num_regions,
            "gateways": int(self.gateways.sum()),
            "mean_degree": round(float(deg.mean()), 2),
            "max_degree": int(deg.max()),
            "cross_region_links": int((self.region[self.edges[:, 0]] != self.region[self.edges[:, 1]]).sum()),
        }


def _bisect_regions(positions: npt.NDArray[np.float64], num_regions: int) -> npt.NDArray[np.int32]:
    """Balanced, compact regions by recursive coordinate bisection."""
    region = np.zeros(positions.shape[0], dtype=np.int32)
    stack: list[tuple[IntArray, int, int]] = [(np.arange(positions.shape[0]), num_regions, 0)]
    while stack:
        idx, parts, first = stack.pop()
        if parts == 1:
            region[idx] = first
            continue
        pts = positions[idx]
        axis = int(np.argmax(pts.max(axis=0) - pts.min(axis=0)))
        order = idx[np.argsort(pts[:, axis], kind="stable")]
        left_parts = parts // 2
        cut = round(len(idx) * left_parts / parts)
        stack.append((order[:cut], left_parts, first))
        stack.append((order[cut:], parts - left_parts, first + left_parts))
    return region


def _connect_components(positions: npt.NDArray[np.float64], edges: IntArray) -> IntArray:
    """Join every stray component to the largest one by its shortest possible link."""
    n = positions.shape[0]
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    if count == 1:
        return edges
    giant = int(np.argmax(np.bincount(labels)))
    giant_nodes = np.flatnonzero(labels == giant)
    tree = cKDTree(positions[giant_nodes])
    extra = []
    for comp in range(count):
        if comp == giant:
            continue
        members = np.flatnonzero(labels == comp)
        dist, nearest = tree.query(positions[members])
        best = int(np.argmin(dist))
        a, b = int(members[best]), int(giant_nodes[nearest[best]])
        extra.append((min(a, b), max(a, b)))
    return np.concatenate([edges, np.asarray(extra, dtype=np.int64)])


def _spread_gateways(positions: npt.NDArray[np.float64], count: int, side: float) -> IntArray:
    """Pick ``count`` gateways spread evenly: the node nearest each cell centre of a grid."""
    cols = max(1, round(math.sqrt(count)))
    rows = math.ceil(count / cols)
    centres = [((i + 0.5) * side / cols, (j + 0.5) * side / rows) for j in range(rows) for i in range(cols)]
    # Drop surplus cells evenly rather than leaving a strip of the square without gateways.
    keep = np.unique(np.round(np.linspace(0, len(centres) - 1, count)).astype(np.int64))
    centres = [centres[k] for k in keep]
    tree = cKDTree(positions)
    chosen: list[int] = []
    for centre in centres:
        _, candidates = tree.query(centre, k=min(8, positions.shape[0]))
        for c in np.atleast_1d(candidates):
            if int(c) not in chosen:
                chosen.append(int(c))
                break
    return np.asarray(sorted(chosen), dtype=np.int64)


def generate(
    num_nodes: int,
    num_regions: int,
    seed: int,
    mean_degree: float = 6.0,
    gateway_fraction: float = 0.03,
) -> Topology:
    """Generate a connected mesh: a random geometric graph with evenly spread gateways.

    Nodes are scattered uniformly over a square with one node per unit area and linked
    when closer than the radio range that gives ``mean_degree`` neighbours on average;
    stray components are joined by their shortest link. Regions are compact and
    balanced; node ids are renumbered so each region owns a contiguous id range.

    Args:
        num_nodes: number of mesh nodes (>= 2).
        num_regions: number of regions (1 ..= num_nodes).
        seed: random seed; the same arguments always give the same topology.
        mean_degree: average radio neighbours per node (default 6).
        gateway_fraction: share of nodes with a wired uplink (default 0.03, at least one).
    """
    if num_nodes < 2:
        raise ConfigError(f"nodes must be at least 2, got {num_nodes}")
    if num_regions < 1:
        raise ConfigError(f"regions must be positive, got {num_regions}")
    if num_regions > num_nodes:
        raise ConfigError(f"regions ({num_regions}) cannot exceed nodes ({num_nodes})")
    if mean_degree <= 0 or not 0 < gateway_fraction <= 1:
        raise ConfigError("mean_degree must be positive and gateway_fraction in (0, 1]")
    rng = np.random.default_rng(seed)
    side = math.sqrt(num_nodes)
    positions = rng.uniform(0.0, side, size=(num_nodes, 2))
    radius = math.sqrt(mean_degree / math.pi)
    pairs = cKDTree(positions).query_pairs(radius, output_type="ndarray").astype(np.int64)
    edges = _connect_components(positions, pairs.reshape(-1, 2))
    gateway_ids = _spread_gateways(positions, max(1, round(gateway_fraction * num_nodes)), side)

    region = _bisect_regions(positions, num_regions)
    order = np.argsort(region, kind="stable")
    new_id = np.empty(num_nodes, dtype=np.int64)
    new_id[order] = np.arange(num_nodes)
    edges = np.sort(new_id[edges], axis=1)
    edges = np.unique(edges, axis=0)
    gateways = np.zeros(num_nodes, dtype=bool)
    gateways[new_id[gateway_ids]] = True
    offsets = np.concatenate([[0], np.cumsum(np.bincount(region, minlength=num_regions))]).astype(np.int64)
    return Topology(
        positions=positions[order],
        edges=edges,
        gateways=gateways,
        region_offsets=offsets,
        seed=seed,
    )


@dataclasses.dataclass(frozen=True)
class TopologySpec:
    """The arguments of :func:`generate`: a topology in a few bytes, rebuilt identically anywhere."""

    num_nodes: int
    num_regions: int
    seed: int
    mean_degree: float = 6.0
    gateway_fraction: float = 0.03

    def build(self) -> Topology:
        return generate(self.num_nodes, self.num_regions, self.seed, self.mean_degree, self.gateway_fraction)
