import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mesh.topology import generate


@pytest.mark.parametrize("nodes", [50, 1000, 5000])
def test_topology_is_connected_with_mesh_like_degree(nodes):
    topo = generate(nodes, 4, seed=3)
    count, _ = connected_components(topo.adjacency(), directed=False)
    assert count == 1
    degree = topo.degree()
    assert 4.5 <= degree.mean() <= 7.5
    assert degree.min() >= 1
    assert topo.gateways.sum() == max(1, round(0.03 * nodes))


def test_same_seed_same_topology_other_seed_differs():
    a, b, c = generate(800, 4, 7), generate(800, 4, 7), generate(800, 4, 8)
    assert np.array_equal(a.edges, b.edges) and np.array_equal(a.positions, b.positions)
    assert np.array_equal(a.gateways, b.gateways)
    assert not np.array_equal(a.positions, c.positions)


def test_regions_are_balanced_contiguous_and_compact():
    topo = generate(4000, 8, 1)
    sizes = np.diff(topo.region_offsets)
    assert sizes.sum() == 4000 and sizes.max() - sizes.min() <= 1
    # Compact: most links stay inside a region.
    cross = topo.summary()["cross_region_links"]
    assert 0 < cross < 0.1 * topo.num_links
    assert topo.region_of(0) == 0 and topo.region_of(3999) == 7


def test_hop_diameter_to_gateways_is_short_like_a_real_mesh():
    from x0tta6bl4.mesh.control import MeshControl

    topo = generate(10_000, 8, 1)
    control = MeshControl(topo, [])
    control.advance(0)
    _, tree = control.routing()
    assert tree.routed.all()
    assert 3 <= tree.hops.max() <= 20  # routed diameter = 2 x the deepest gateway path


@pytest.mark.parametrize(
    ("nodes", "regions", "message"),
    [(0, 1, "at least 2"), (10, 0, "positive"), (5, 6, "cannot exceed")],
)
def test_bad_sizes_are_refused(nodes, regions, message):
    with pytest.raises(ConfigError, match=message):
        generate(nodes, regions, 1)


def test_link_lookup_names_missing_links_and_nodes():
    topo = generate(100, 2, 1)
    u, v = topo.edges[0]
    assert topo.link_id(int(v), int(u)) == 0
    with pytest.raises(ConfigError, match="does not exist"):
        topo.check_node(100)
    far = int(np.argmax(np.linalg.norm(topo.positions - topo.positions[0], axis=1)))
    with pytest.raises(ConfigError, match="no link"):
        topo.link_id(0, far)
