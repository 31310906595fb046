"""ControllerCore: which incidents it confirms and acts on, and which it leaves to clear on their own.

The stand-in scorer and runbooks of ``test_core_rootcause`` over the small tree of
``test_rootcause`` (gateway 0, 0 <- 1 <- 3 <- {5, 6}); the served model's threshold is 1.0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from x0tta6bl4.mapek.config import ControllerConfig
from x0tta6bl4.mapek.core import ControllerCore
from x0tta6bl4.mapek.knowledge import KnowledgeStore
from x0tta6bl4.telemetry.frame import FEATURE_INDEX

from .test_core_rootcause import _features, _Runbooks, _Scorer
from .test_rootcause import _view

F32 = npt.NDArray[np.float32]


def _core(
    scorer: _Scorer, runbooks: _Runbooks | None = None, **overrides: object
) -> tuple[ControllerCore, ControllerConfig]:
    config = ControllerConfig(mode="static", audit=False, ingest_resolved=False, **overrides)  # type: ignore[arg-type]
    runbooks = runbooks or _Runbooks("restart_node", "reroute", "isolate_node")
    return ControllerCore(_view(), config, scorer, runbooks, KnowledgeStore(":memory:"), "t"), config


def _changed(node: int, **values: float) -> F32:
    """Healthy features, except ``node``'s ``values``."""
    f = _features(False)
    for name, value in values.items():
        f[node, FEATURE_INDEX[name]] = value
    return f


def _cut_off(node: int) -> F32:
    return _changed(node, loss_ratio=1.0, latency_mean_ms=3000.0, latency_p95_ms=3000.0)


def test_a_reconnected_node_that_scores_as_high_as_a_fault_is_never_acted_on() -> None:
    scorer = _Scorer()
    core, config = _core(scorer)
    for tick in range(12):  # 6 has no route for a while: its baselines are seconds and total loss
        core.step(tick, _cut_off(6))
    scorer.scores[6] = 9.0  # reconnected: its healthy figures are as far from those as a fault's
    for tick in range(12, 24):
        assert not core.step(tick, _features(False)).actions
    (incident,) = core.incidents
    assert incident.confirmed_tick is None and incident.attempts == []
    scorer.scores[6] = 0.1  # the scorer's window moved past the gap
    for tick in range(24, 24 + config.clear_ticks + 1):
        core.step(tick, _features(False))
    assert incident.status == "false_alarm"


def test_the_same_jump_in_the_unhealthy_direction_is_acted_on_at_once() -> None:
    scorer = _Scorer()
    core, _ = _core(scorer)
    for tick in range(12):
        core.step(tick, _features(False))
    lossy = _changed(6, loss_ratio=0.5, latency_mean_ms=800.0)
    scorer.scores[6] = 9.0
    acted = [t for t in range(12, 16) if core.step(t, lossy).actions]
    assert acted and acted[0] == 12  # severe: confirmed and acted on in its first tick


def test_a_lone_score_with_no_counter_moved_is_confirmed_only_once_it_persisted() -> None:
    scorer = _Scorer()
    core, config = _core(scorer)
    for tick in range(12):
        core.step(tick, _features(False))
    scorer.scores[6] = 9.0  # severe, but nothing in 6's telemetry moved
    acted = next(t for t in range(12, 30) if core.step(t, _features(False)).actions)
    (incident,) = core.incidents
    assert incident.opened_tick == 12
    assert acted == incident.confirmed_tick == 12 + config.unexplained_confirm_ticks


def test_a_lone_score_that_falls_back_in_time_clears_without_an_action() -> None:
    scorer = _Scorer()
    core, config = _core(scorer)
    for tick in range(12):
        core.step(tick, _features(False))
    scorer.scores[6] = 9.0
    for tick in range(12, 15):
        assert not core.step(tick, _features(False)).actions
    scorer.scores[6] = 0.1
    for tick in range(15, 15 + config.clear_ticks + 1):
        assert not core.step(tick, _features(False)).actions
    (incident,) = core.incidents
    assert incident.status == "false_alarm" and incident.confirmed_tick is None


def test_a_lone_score_is_acted_on_at_once_when_the_wait_is_off() -> None:
    scorer = _Scorer()
    core, _ = _core(scorer, unexplained_confirm_ticks=0)
    for tick in range(12):
        core.step(tick, _features(False))
    scorer.scores[6] = 9.0
    assert core.step(12, _features(False)).actions


def _blackhole(node: int) -> F32:
    return _changed(node, rx_bytes_per_s=6e5, tx_bytes_per_s=3e4)


def _surge(node: int) -> F32:
    return _changed(node, rx_bytes_per_s=9e5, tx_bytes_per_s=4e5, queue_depth_pkts=100.0)


# (the fault's features, its node, the rule that signs it): a blackhole forwards nothing; a surge
# fills its queue (its threshold may be raised, e.g. for a membership grace period).
SIGNED = pytest.mark.parametrize(
    ("faulty", "node", "rule"),
    [(_blackhole, 4, "blackhole_sign_alarms"), (_surge, 5, "surge_sign_alarms")],
    ids=["blackhole", "surge"],
)


@SIGNED
def test_a_signed_fault_alarms_while_its_score_stays_under_the_threshold(
    faulty: Callable[[int], F32], node: int, rule: str
) -> None:
    scorer = _Scorer()
    core, config = _core(scorer)
    for tick in range(12):
        core.step(tick, _features(False))
    scorer.scores[node] = 0.3  # a third of the threshold: the score alone never alarms
    alarmed = [set(core.step(t, faulty(node)).alarmed) for t in range(12, 12 + config.persist_ticks)]
    assert node not in alarmed[0] and node in alarmed[-1]  # persisted like any alarm
    assert [i.root for i in core.incidents] == [node]


@SIGNED
def test_without_its_sign_rule_a_fault_under_the_threshold_goes_unseen(
    faulty: Callable[[int], F32], node: int, rule: str
) -> None:
    scorer = _Scorer()
    core, _ = _core(scorer, **{rule: False})
    for tick in range(12):
        core.step(tick, _features(False))
    scorer.scores[node] = 0.3
    for tick in range(12, 20):
        assert node not in core.step(tick, faulty(node)).alarmed
    assert core.incidents == []


def _lossy_uplink_of_3() -> F32:
    """3's link to its next hop (1) loses packets: 3 and the nodes below it (5, 6) see it."""
    f = _features(False)
    f[[3, 5, 6], FEATURE_INDEX["loss_ratio"]] = 0.3
    f[[3, 5, 6], FEATURE_INDEX["latency_mean_ms"]] = 70.0
    return f


def test_a_lossy_uplink_alarms_by_its_sign_at_its_node_and_is_rerouted_there() -> None:
    scorer = _Scorer()
    core, _ = _core(scorer, _Runbooks("reroute"))  # what the runbooks answer for loss on a path
    for tick in range(12):
        core.step(tick, _features(False))
    # The scores saw the jump and faded under the threshold (the served model adapts); the loss stays.
    scorer.scores[[3, 5, 6]] = 0.3
    actions = [a for t in range(12, 24) for a in core.step(t, _lossy_uplink_of_3()).actions]
    assert [i.root for i in core.incidents] == [3]  # 5 and 6 keep their usual gap to 3
    assert (actions[0].name, actions[0].node, actions[0].peer) == ("reroute", 3, 1)


def test_without_the_uplink_rule_a_faded_lossy_link_goes_unseen() -> None:
    scorer = _Scorer()
    core, _ = _core(scorer, uplink_loss_alarms=False)
    for tick in range(12):
        core.step(tick, _features(False))
    scorer.scores[[3, 5, 6]] = 0.3
    for tick in range(12, 24):
        assert not core.step(tick, _lossy_uplink_of_3()).alarmed
    assert core.incidents == []
