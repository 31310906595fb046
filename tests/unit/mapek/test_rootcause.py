"""Root cause from routing knowledge: the tree the controller rebuilds, the root it blames, its verdicts.

The mesh below has one gateway (0); its routing tree is 0 <- 1 <- 3 <- {5, 6} and 0 <- 2 <- 4, and
the link 3-4 is a spare the tree does not use::

    0 -- 1 -- 3 -- 5
    |         | \\
    2 -- 4 ---+  6
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from tests.unit.mapek.test_mapek_symptoms import HEALTHY as SYMPTOMS_HEALTHY
from x0tta6bl4.mapek.config import SETTLE_TICKS, ControllerConfig
from x0tta6bl4.mapek.interfaces import MeshView
from x0tta6bl4.mapek.rootcause import (
    RoutingKnowledge,
    action_worked,
    blackhole_sign,
    locate_root,
    root_of,
    subtree_cover,
    surge_sign,
    unrouted,
    uplink_loss_sign,
    uplink_peer,
)
from x0tta6bl4.telemetry.frame import FEATURE_INDEX, FEATURES

PAIRS = [(0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (3, 6), (3, 4)]
N = 7

# A healthy node of this tree: two links up (the symptoms tests' node has four).
HEALTHY = {**SYMPTOMS_HEALTHY, "links_up": 2.0}


def _view() -> MeshView:
    gateways = np.zeros(N, dtype=bool)
    gateways[0] = True
    return MeshView(N, np.array(PAIRS, dtype=np.int32), gateways, np.ones(N, dtype=bool))


def _telemetry(**nodes: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[N, FEATURES]`` (healthy, with per-node changes keyed ``n<id>``) and their baseline."""
    base = np.array([[HEALTHY[f] for f in FEATURES] for _ in range(N)], dtype=np.float64)
    features = base.astype(np.float32)
    for key, changes in nodes.items():
        for name, value in changes.items():
            features[int(key[1:]), FEATURE_INDEX[name]] = value
    return features, base


def _shown(**excess: float) -> np.ndarray:
    shown = np.zeros(N)
    for key, value in excess.items():
        shown[int(key[1:])] = value
    return shown


SILENT_NONE = np.zeros(N, dtype=bool)


def test_the_controller_rebuilds_the_routing_tree_from_links_gateways_and_its_own_actions() -> None:
    routing = RoutingKnowledge(_view())
    tree = routing.tree(set(), set())
    assert tree.parent.tolist() == [-1, 0, 0, 1, 2, 3, 3]
    assert tree.hops.tolist() == [0, 1, 1, 2, 2, 3, 3]
    # Avoiding the link 1-3 (a reroute naming the peer) sends 3 and its subtree over the spare link.
    assert routing.tree(set(), {(1, 3)}).parent[3] == 4
    # Isolating 3 cuts its leaves off; avoiding node 3 as a forwarder does the same to them.
    assert routing.tree({3}, set()).hops[[5, 6]].tolist() == [-1, -1]
    assert routing.tree(set(), {(3, -1)}).hops[[5, 6]].tolist() == [-1, -1]


def test_subtree_cover_counts_the_members_each_member_routes_for() -> None:
    parent = RoutingKnowledge(_view()).tree(set(), set()).parent
    members = np.array([1, 3, 5, 6, 4])
    assert subtree_cover(members, parent).tolist() == [4, 3, 1, 1, 1]


def test_a_degraded_uplink_is_blamed_on_the_node_below_it_not_on_its_louder_downstream_nodes() -> None:
    tree = RoutingKnowledge(_view()).tree(set(), set())
    lossy = {"loss_ratio": 0.3, "latency_mean_ms": 120.0, "packet_drops_per_s": 80.0}
    features, base = _telemetry(n3=lossy, n5=lossy, n6=lossy)
    members = np.array([3, 5, 6])
    cause = locate_root(members, _shown(n3=1.5, n5=3.0, n6=2.5), SILENT_NONE, features, base, tree, 5)
    assert (cause.node, cause.hint, cause.explains) == (3, "subtree", 3)
    alarmed = np.zeros(N, dtype=bool)
    alarmed[members] = True
    assert uplink_peer(3, tree, alarmed) == 1  # the reroute names the link 3-1
    alarmed[1] = True
    assert uplink_peer(3, tree, alarmed) is None  # the next hop is in trouble too: not the link


def test_a_blackhole_is_blamed_on_the_node_that_takes_traffic_in_and_forwards_none() -> None:
    tree = RoutingKnowledge(_view()).tree(set(), set())
    # 4 poses as a root: 3, 5 and 6 now route into it and lose everything; 4 looks calm but forwards nothing.
    dead = {"loss_ratio": 1.0, "latency_mean_ms": 3000.0, "latency_p95_ms": 3000.0}
    hole = {"rx_bytes_per_s": 6e5, "tx_bytes_per_s": 3e4}
    features, base = _telemetry(n3=dead, n5=dead, n6=dead, n4=hole)
    members = np.array([3, 4, 5, 6])
    shown = _shown(n3=9.0, n4=1.2, n5=9.0, n6=9.0)
    cause = locate_root(members, shown, SILENT_NONE, features, base, tree, 5)
    assert (cause.node, cause.hint) == (4, "blackhole")


def test_a_congestion_is_blamed_on_the_deepest_surging_node_not_on_the_full_queues_above_it() -> None:
    tree = RoutingKnowledge(_view()).tree(set(), set())
    features, base = _telemetry(
        n3={"rx_bytes_per_s": 9e5, "queue_depth_pkts": 100.0, "tx_bytes_per_s": 6e5},
        n1={"rx_bytes_per_s": 8e5, "queue_depth_pkts": 100.0, "tx_bytes_per_s": 6e5},
        n5={"latency_mean_ms": 400.0},
    )
    members = np.array([1, 3, 5])
    cause = locate_root(members, _shown(n1=6.0, n3=4.0, n5=3.0), SILENT_NONE, features, base, tree, 1)
    assert (cause.node, cause.hint) == (3, "surge")


def test_a_silent_node_is_the_root_of_the_unreachable_nodes_below_it() -> None:
    tree = RoutingKnowledge(_view()).tree(set(), set())
    zero = dict.fromkeys(FEATURES, 0.0)
    features, base = _telemetry(n3=zero, n5={"loss_ratio": 1.0}, n6={"loss_ratio": 1.0})
    silent = np.zeros(N, dtype=bool)
    silent[3] = True
    cause = locate_root(np.array([3, 5, 6]), _shown(n3=1e6, n5=9.0), silent, features, base, tree, 5)
    assert (cause.node, cause.hint, cause.explains) == (3, "silent", 3)


def test_members_that_do_not_route_through_each_other_keep_the_fallback_root() -> None:
    tree = RoutingKnowledge(_view()).tree(set(), set())
    features, base = _telemetry(n4={"cpu_util": 1.0}, n5={"cpu_util": 1.0})
    cause = locate_root(np.array([4, 5]), _shown(n4=2.0, n5=3.0), SILENT_NONE, features, base, tree, 5)
    assert (cause.node, cause.hint) == (5, "abnormal")


def test_signs_stay_quiet_for_a_leaf_a_busy_forwarder_and_a_congested_node() -> None:
    features, base = _telemetry(
        n5={"rx_bytes_per_s": 2.8e4, "tx_bytes_per_s": 1.2e4},  # a leaf's own rx/tx imbalance
        n1={"rx_bytes_per_s": 4e5, "tx_bytes_per_s": 3.8e5},  # busier, but forwards it all
        n3={"rx_bytes_per_s": 9e5, "tx_bytes_per_s": 2e5, "queue_depth_pkts": 100.0},  # drops at its queue
    )
    holes = blackhole_sign(features, base)
    assert not holes[[1, 3, 5]].any()
    assert surge_sign(features, base).tolist() == [False, False, False, True, False, False, False]


def _lossy_below(node: int, loss: float = 0.3, latency_ms: float = 60.0) -> dict[str, dict[str, float]]:
    """``node`` and every node routed through it lose ``loss`` and wait ``latency_ms`` on their path."""
    below = {1: [1, 3, 5, 6], 3: [3, 5, 6], 2: [2, 4]}[node]
    return {f"n{n}": {"loss_ratio": loss, "latency_mean_ms": latency_ms} for n in below}


def test_the_uplink_loss_sign_marks_only_the_node_just_below_the_lossy_link() -> None:
    parent = RoutingKnowledge(_view()).tree(set(), set()).parent
    features, base = _telemetry(**_lossy_below(3))
    assert np.flatnonzero(uplink_loss_sign(features, base, parent)).tolist() == [3]
    features, base = _telemetry(**_lossy_below(1))
    assert np.flatnonzero(uplink_loss_sign(features, base, parent)).tolist() == [1]


def test_the_uplink_loss_sign_stays_quiet_for_congestion_a_lost_route_and_a_silent_next_hop() -> None:
    parent = RoutingKnowledge(_view()).tree(set(), set()).parent
    congested = _lossy_below(3)
    congested["n3"] |= {"queue_depth_pkts": 90.0, "packet_drops_per_s": 400.0}  # its own queue drops
    features, base = _telemetry(**congested)
    assert not uplink_loss_sign(features, base, parent).any()
    features, base = _telemetry(**_lossy_below(3, loss=1.0, latency_ms=3000.0))  # no route at all
    assert not uplink_loss_sign(features, base, parent).any()
    silent = _lossy_below(3)
    silent["n1"] = {"links_up": 0.0, "cpu_util": 0.0, "rx_bytes_per_s": 0.0}  # 3's next hop crashed
    features, base = _telemetry(**silent)
    assert not uplink_loss_sign(features, base, parent)[3]
    features, base = _telemetry(**_lossy_below(3, latency_ms=25.0))  # loss without the link's delay
    assert not uplink_loss_sign(features, base, parent).any()


def test_the_uplink_loss_sign_measures_the_rise_over_the_usual_gap_to_the_next_hop() -> None:
    parent = RoutingKnowledge(_view()).tree(set(), set()).parent
    features, base = _telemetry(n5={"loss_ratio": 0.25, "latency_mean_ms": 70.0})
    assert uplink_loss_sign(features, base, parent)[5]
    base[5, FEATURE_INDEX["loss_ratio"]] = 0.2  # 5's own link always lost this much
    base[5, FEATURE_INDEX["latency_mean_ms"]] = 65.0
    assert not uplink_loss_sign(features, base, parent)[5]


def test_a_fix_is_judged_by_the_roots_own_signals_not_by_symptoms_still_draining() -> None:
    members = np.array([3, 5, 6])
    features, base = _telemetry()
    alarmed = np.zeros(N, dtype=bool)
    alarmed[[5, 6]] = True  # downstream queues still draining

    def worked(action: str, node: int) -> bool:
        return action_worked(action, node, members, alarmed, SILENT_NONE, features, base)

    assert worked("reroute", 3)
    assert worked("restart_node", 3)
    alarmed[3] = True
    assert not worked("restart_node", 3)
    # A quarantine silences its own target: it worked when the nodes that routed into it are quiet.
    alarmed[[5, 6]] = False
    assert worked("isolate_node", 3)
    alarmed[5] = True
    assert not worked("isolate_node", 3)


def test_a_blackhole_that_the_detector_no_longer_flags_still_fails_a_wrong_fix() -> None:
    members = np.array([3, 4, 5])
    features, base = _telemetry(n4={"rx_bytes_per_s": 6e5, "tx_bytes_per_s": 3e4})
    alarmed = np.zeros(N, dtype=bool)  # the detector's scores calmed down; the one-way traffic did not
    assert not action_worked("reroute", 4, members, alarmed, SILENT_NONE, features, base)
    # Another fault's root among the members (a surge at 5) does not fail the quarantine of 4.
    features, base = _telemetry(n5={"rx_bytes_per_s": 9e5, "queue_depth_pkts": 100.0})
    alarmed[5] = True
    assert action_worked("isolate_node", 4, members, alarmed, SILENT_NONE, features, base)
    alarmed[3] = True
    assert not action_worked("isolate_node", 4, members, alarmed, SILENT_NONE, features, base)


def test_settle_ticks_cover_every_action_and_a_partial_override_keeps_the_other_defaults() -> None:
    assert set(ControllerConfig().settle_ticks) == set(SETTLE_TICKS)
    config = ControllerConfig(settle_ticks={"reroute": 11})
    assert config.settle_ticks == {**SETTLE_TICKS, "reroute": 11}
    # A reboot needs the boot itself and routing convergence on top of what a quicker action needs.
    assert SETTLE_TICKS["restart_node"] > SETTLE_TICKS["reroute"] > SETTLE_TICKS["scale_capacity"]
    with pytest.raises(ValidationError, match="unknown actions"):
        ControllerConfig(settle_ticks={"reboot_universe": 3})
    with pytest.raises(ValidationError, match=">= 2"):
        ControllerConfig(settle_ticks={"reroute": 1})


def test_a_live_node_that_lost_its_route_is_unrouted_and_a_silent_one_is_not() -> None:
    features, _ = _telemetry(
        n3={"loss_ratio": 1.0, "latency_mean_ms": 3000.0},  # a sink it routes into (a blackhole's victim)
        n4=dict.fromkeys(FEATURES, 0.0) | {"loss_ratio": 1.0},  # crashed: the collector's record
        n5={"loss_ratio": 0.4},  # a lossy link: degraded, still routed
    )
    assert [unrouted(features[i]) for i in (3, 4, 5, 6)] == [True, False, False, False]


def test_a_node_posing_as_a_root_captures_the_routes_around_it() -> None:
    routing = RoutingKnowledge(_view())
    assert root_of(routing.tree(set(), set())).tolist() == [0] * N
    captured = routing.tree(set(), set(), posing={4})  # a blackhole at 4 attracts 3's subtree over 3-4
    assert root_of(captured).tolist() == [0, 0, 0, 4, 4, 4, 4]
    assert root_of(routing.tree(set(), set())).tolist() == [0] * N, "the cached tree is the honest one"
