"""Membership changes: the tree over members, who a join or leave moved, and thresholds they void.

The mesh is test_rootcause's: one gateway (0), tree 0 <- 1 <- 3 <- {5, 6} and 0 <- 2 <- 4, with the
spare link 3-4. When node 1 leaves, 3 and its subtree route through 4 instead: 0 <- 2 <- 4 <- 3.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from x0tta6bl4.mapek.config import ControllerConfig
from x0tta6bl4.mapek.core import ControllerCore
from x0tta6bl4.mapek.knowledge import KnowledgeStore
from x0tta6bl4.mapek.membership import MembershipWatch, carried_load, moved_nodes
from x0tta6bl4.mapek.rootcause import RoutingKnowledge
from x0tta6bl4.mapek.thresholds import ThresholdLearner
from x0tta6bl4.telemetry.frame import FEATURES

from .test_core_rootcause import _Scorer
from .test_rootcause import HEALTHY, N, _view


def _unlisted(*nodes: int) -> npt.NDArray[np.bool_]:
    out = np.zeros(N, dtype=bool)
    out[list(nodes)] = True
    return out


def test_carried_load_counts_each_node_and_everything_routed_through_it() -> None:
    tree = RoutingKnowledge(_view()).tree(set(), set())
    assert carried_load(tree).tolist() == [7, 4, 2, 3, 1, 1, 1]


def test_a_leave_moves_the_relays_that_inherit_its_subtree_not_the_far_ancestors() -> None:
    routing = RoutingKnowledge(_view())
    before, after = routing.tree(set(), set()), routing.tree({1}, set())
    # 3 changes next hop; 2 and 4 now carry 3's subtree; the gateway's load moves by 1 of 7 only;
    # the leaver itself lost its route.
    assert moved_nodes(before, after, 0.3).tolist() == [1, 2, 3, 4]
    assert moved_nodes(before, after, 0.1).tolist() == [0, 1, 2, 3, 4]


def test_a_node_cut_off_or_reconnected_by_a_change_moved() -> None:
    # Without 2 and the spare link 3-4, node 4 has no route; both come back and 4 is routed again.
    routing = RoutingKnowledge(_view())
    cut, whole = routing.tree({2}, {(3, 4)}), routing.tree(set(), set())
    assert not cut.routed[4] and whole.routed[4]
    assert 4 in moved_nodes(cut, whole, 0.9).tolist()
    assert 4 in moved_nodes(whole, cut, 0.9).tolist()


def test_the_watch_records_the_first_frame_then_voids_joiners_neighbours_and_moved_nodes() -> None:
    watch = MembershipWatch(RoutingKnowledge(_view()), _view().adjacency(), 0.3, grace_ticks=5)
    assert watch.update(0, _unlisted(), set(), set()).size == 0
    assert watch.update(1, _unlisted(), set(), set()).size == 0  # nothing changed
    # 1 leaves: its neighbours 0 and 3 lose a link; 2, 3 and 4 carry 3's subtree now.
    assert watch.update(2, _unlisted(1), set(), set()).tolist() == [0, 2, 3, 4]
    assert watch.absent == {1} and watch.tree(set(), set()).parent[3] == 4
    assert watch.in_grace(7)[[0, 2, 3, 4]].all() and not watch.in_grace(8).any()
    assert not watch.in_grace(7)[[5, 6]].any()
    # Node 1 comes back: it joined (nothing learned applies) and 3 moves back under it.
    assert set(watch.update(10, _unlisted(), set(), set()).tolist()) >= {1, 3}


def test_a_forgotten_node_gets_the_static_threshold_until_it_has_learned_again() -> None:
    cfg = ControllerConfig(learn_warmup_ticks=4, refit_every_ticks=1, threshold_floor_share=0.0)
    learner = ThresholdLearner(2, cfg, 10.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        learner.observe(rng.normal(1.0, 0.05, 2).astype(np.float32), np.ones(2, dtype=bool))
    assert np.all(learner.thresholds < 5.0)
    learner.forget([1])
    assert learner.thresholds[1] == 10.0 and learner.thresholds[0] < 5.0
    for _ in range(3):  # the new normal is 4x the old one; three samples are not enough yet
        learner.observe(np.array([1.0, 4.0], dtype=np.float32), np.ones(2, dtype=bool))
    assert learner.thresholds[1] == 10.0
    learner.observe(np.array([1.0, 4.0], dtype=np.float32), np.ones(2, dtype=bool))
    assert 4.0 <= learner.thresholds[1] < 10.0, "learned from the new scores only"


def _features() -> npt.NDArray[np.float32]:
    return np.array([[HEALTHY[name] for name in FEATURES] for _ in range(N)], dtype=np.float32)


def _relay_after_churn(leaves: bool, grace_ticks: int = 20) -> set[int]:
    """Nodes alarmed while relay 4's score triples (to 0.8, under the static 1.0), with or without 1 leaving."""
    config = ControllerConfig(
        audit=False, ingest_resolved=False, learn_warmup_ticks=4, membership_grace_ticks=grace_ticks
    )
    scorer = _Scorer()
    core = ControllerCore(_view(), config, scorer, None, KnowledgeStore(":memory:"), "t")
    for tick in range(20):  # healthy: every node learns ~0.1 (threshold at the 0.3 floor)
        core.step(tick, _features())
    assert core.learner.thresholds[4] < 0.5
    scorer.scores[4] = 0.8  # 4 now carries 3's subtree
    alarmed: set[int] = set()
    for tick in range(20, 30):
        f = _features()
        if leaves:
            f[1] = np.nan
        alarmed |= set(core.step(tick, f).alarmed)
    return alarmed


def test_a_relay_whose_transit_a_leave_moved_is_not_judged_by_its_old_history() -> None:
    assert 4 in _relay_after_churn(leaves=False), "without a membership change the jump is an anomaly"
    assert 4 not in _relay_after_churn(leaves=True)


def test_the_grace_floor_is_a_multiple_of_the_static_threshold_and_only_for_moved_nodes() -> None:
    config = ControllerConfig(
        audit=False, ingest_resolved=False, learn_warmup_ticks=4, membership_grace_threshold_share=1.5
    )
    core = ControllerCore(_view(), config, _Scorer(), None, KnowledgeStore(":memory:"), "t")
    for tick in range(12):
        core.step(tick, _features())
    f = _features()
    f[1] = np.nan
    core.step(12, f)
    thr = core._membership_thresholds(13, np.isnan(f).all(axis=1))
    assert np.allclose(thr[[0, 2, 3, 4]], 1.5) and np.all(thr[[5, 6]] < 0.5)


def test_without_a_grace_period_the_moved_relay_relearns_from_the_static_threshold() -> None:
    assert 4 not in _relay_after_churn(leaves=True, grace_ticks=0)
