"""Each remediation heals its fault and only its fault; wrong actions have costs but heal nothing."""

import numpy as np
import pytest

from tests.unit.mesh.conftest import descendants, run_mesh
from x0tta6bl4.mesh.faults import ACTIONS, FAULT_TYPES, HEALED_BY, Action, Fault

START, ACT = 10, 14


def _setup(kind, node, parent):
    peer = parent if kind == "link_degradation" else None
    return Fault(0, kind, START, 25, node, peer, 0.9)


def _action(name, fault):
    if name == "reroute" and fault.kind == "link_degradation":
        return Action("reroute", fault.node, fault.peer)
    return Action(name, fault.node)


@pytest.mark.parametrize("kind", FAULT_TYPES)
@pytest.mark.parametrize("action", list(ACTIONS))
def test_only_the_right_action_heals_each_fault(kind, action, tree, relay):
    fault = _setup(kind, relay, int(tree.parent[relay]))
    run = run_mesh([fault], {ACT: [_action(action, fault)]}, ticks=ACT + 8)
    status = run.control.faults[0]
    if action == HEALED_BY[kind]:
        assert status.remediated_by == action
        assert status.ended_tick == ACT + (3 if action == "restart_node" else 0)
        assert run.labels[-1].sum() == 0
    else:
        assert status.remediated_by is None and status.active
        assert run.labels[-1][relay] > 0


@pytest.mark.parametrize("kind", FAULT_TYPES)
def test_after_the_right_action_the_affected_paths_recover(kind, tree, baseline, relay):
    fault = _setup(kind, relay, int(tree.parent[relay]))
    run = run_mesh([fault], {ACT: [_action(HEALED_BY[kind], fault)]}, ticks=ACT + 10)
    desc = descendants(tree, relay)
    t = ACT + 9
    loss = run.feature(t, "loss_ratio")[desc]
    assert np.median(loss) < 0.05, f"{kind}: paths through the node still lose {np.median(loss):.2f}"
    if kind not in ("blackhole",):  # an isolated node stays out of service by design
        assert run.feature(t, "loss_ratio")[relay] < 0.1


def test_a_right_action_on_another_node_heals_nothing(tree, relay):
    fault = Fault(0, "node_crash", START, 25, relay)
    other = int(tree.parent[relay])
    run = run_mesh([fault], {ACT: [Action("restart_node", other)]}, ticks=ACT + 6)
    assert run.control.faults[0].active and run.control.faults[0].remediated_by is None


def test_wrong_actions_have_real_costs(baseline, relay):
    run = run_mesh([], {ACT: [Action("restart_node", relay)]}, ticks=ACT + 6)
    assert run.feature(ACT, "cpu_util")[relay] == 0  # rebooting: down for boot_ticks
    assert run.feature(ACT + 4, "cpu_util")[relay] > 0
    run = run_mesh([], {ACT: [Action("isolate_node", relay)]}, ticks=ACT + 4)
    assert run.feature(ACT + 3, "loss_ratio")[relay] == 1.0  # quarantined: no route for its traffic
    assert run.feature(ACT + 3, "rx_bytes_per_s")[relay] < baseline.feature(ACT + 3, "rx_bytes_per_s")[relay]
