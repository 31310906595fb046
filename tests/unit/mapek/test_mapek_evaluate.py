"""evaluate() and AlarmLedger: detection and remediation figures from incidents and the fault schedule."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from x0tta6bl4.mapek.evaluate import AlarmLedger, by_fault_type, evaluate, first_action


def _fault(
    fault_id: int,
    kind: str,
    start: int,
    node: int,
    ended: int | None,
    peer: int | None = None,
    remediated_by: str | None = None,
) -> dict[str, Any]:
    return {
        "fault_id": fault_id,
        "kind": kind,
        "start_tick": start,
        "duration_ticks": 20,
        "node": node,
        "peer": peer,
        "severity": 1.0,
        "active": ended is None,
        "ended_tick": ended,
        "remediated_by": remediated_by,
        "remediation_tick": ended if remediated_by is not None else None,
    }


def _incident(
    incident_id: int, opened: int, confirmed: int | None, closed: int | None, nodes: list[int]
) -> dict[str, Any]:
    return {
        "incident_id": incident_id,
        "opened_tick": opened,
        "closed_tick": closed,
        "confirmed_tick": confirmed,
        "nodes": nodes,
        "status": "resolved" if closed is not None else "open",
    }


def _path_graph(n: int) -> csr_matrix:
    rows = list(range(n - 1)) + list(range(1, n))
    cols = list(range(1, n)) + list(range(n - 1))
    return csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))


def _ledger() -> AlarmLedger:
    return AlarmLedger(_path_graph(10), hops=1)


def test_figures_of_a_small_run_match_a_hand_count() -> None:
    ticks, max_duration = 100, 20
    faults = [
        _fault(0, "cpu_hog", 10, node=1, ended=25, remediated_by="restart_node"),
        _fault(1, "link_flap", 40, node=4, peer=5, ended=50),
        _fault(2, "cpu_hog", 60, node=7, ended=None),  # never ended: repaired at the run's end
        _fault(3, "mem_leak", 90, node=9, ended=None),  # starts too late to be evaluated
    ]
    incidents = [
        _incident(0, opened=12, confirmed=14, closed=30, nodes=[1, 2]),  # detects fault 0 after 4 ticks
        _incident(
            1, opened=45, confirmed=47, closed=55, nodes=[5]
        ),  # fault 1 through its link's peer: 7 ticks
        _incident(2, opened=20, confirmed=21, closed=22, nodes=[3]),  # no fault at node 3: false
        _incident(3, opened=62, confirmed=None, closed=63, nodes=[7]),  # dismissed transient: no detection
        _incident(4, opened=92, confirmed=93, closed=None, nodes=[9]),  # true, on an unevaluated fault
    ]
    result = evaluate(faults, incidents, ticks, _ledger(), max_duration_ticks=max_duration)
    assert result["faults_evaluated"] == 3
    assert result["faults_detected"] == 2
    assert result["incidents_confirmed"] == 4
    assert result["incidents_true"] == 3
    assert result["precision"] == pytest.approx(3 / 4)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(12 / 17)  # 2 * (3/4) * (2/3) / (3/4 + 2/3)
    assert result["mttd_ticks"] == pytest.approx((4 + 7) / 2)
    assert result["mttr_ticks"] == pytest.approx((15 + 10 + 40) / 3)
    assert result["faults_remediated"] == 1
    assert result["recall_by_fault_type"] == {"cpu_hog": 0.5, "link_flap": 1.0}


def test_unconfirmed_incidents_are_not_detections() -> None:
    faults = [_fault(0, "cpu_hog", 10, node=1, ended=25)]
    dismissed = [_incident(0, opened=12, confirmed=None, closed=14, nodes=[1])]
    result = evaluate(faults, dismissed, 100, _ledger())
    assert result["incidents_confirmed"] == 0
    assert result["faults_detected"] == 0
    assert (result["precision"], result["recall"], result["f1"]) == (0.0, 0.0, 0.0)
    assert result["mttd_ticks"] is None
    confirmed = [_incident(0, opened=12, confirmed=13, closed=14, nodes=[1])]
    result = evaluate(faults, confirmed, 100, _ledger())
    assert (result["precision"], result["recall"], result["f1"]) == (1.0, 1.0, 1.0)
    assert result["mttd_ticks"] == 3.0


def test_faults_that_could_not_end_within_the_run_are_not_evaluated() -> None:
    late = [_fault(0, "cpu_hog", 41, node=1, ended=None)]
    result = evaluate(late, [], 100, _ledger(), max_duration_ticks=60)
    assert result["faults_evaluated"] == 0
    assert result["recall"] == 0.0
    assert result["mttr_ticks"] is None
    assert result["recall_by_fault_type"] == {}
    on_the_edge = [_fault(0, "cpu_hog", 40, node=1, ended=None)]  # 40 + 60 <= 100
    result = evaluate(on_the_edge, [], 100, _ledger(), max_duration_ticks=60)
    assert result["faults_evaluated"] == 1
    assert result["mttr_ticks"] == 60.0


def test_an_incident_open_before_the_fault_detects_it_with_zero_delay() -> None:
    faults = [_fault(0, "cpu_hog", 10, node=1, ended=20)]
    incidents = [_incident(0, opened=5, confirmed=6, closed=15, nodes=[1])]
    result = evaluate(faults, incidents, 100, _ledger())
    assert result["faults_detected"] == 1
    assert result["mttd_ticks"] == 0.0


def test_an_incident_opened_after_the_fault_ended_is_not_its_detection() -> None:
    faults = [_fault(0, "cpu_hog", 10, node=1, ended=20)]
    incidents = [_incident(0, opened=20, confirmed=21, closed=25, nodes=[1])]
    result = evaluate(faults, incidents, 100, _ledger())
    assert result["faults_detected"] == 0
    assert result["incidents_true"] == 0
    assert result["precision"] == 0.0


def test_an_incident_on_other_nodes_does_not_detect_the_fault() -> None:
    faults = [_fault(0, "cpu_hog", 10, node=1, ended=20)]
    incidents = [_incident(0, opened=11, confirmed=12, closed=25, nodes=[2, 3])]
    result = evaluate(faults, incidents, 100, _ledger())
    assert result["faults_detected"] == 0 and result["incidents_true"] == 0


def test_evaluate_reports_the_ledger_false_alarm_rate() -> None:
    ledger = _ledger()
    ledger.add([8], [1], sim_nodes=10)
    result = evaluate([], [], 100, ledger)
    assert result["false_alarm_node_ticks"] == 1
    assert result["false_alarms_per_1000_node_ticks"] == pytest.approx(100.0)


def test_ledger_counts_alarms_within_hops_of_a_fault_as_symptoms() -> None:
    ledger = AlarmLedger(_path_graph(7), hops=2)
    ledger.add([0, 1, 2, 3, 6], fault_nodes=[0], sim_nodes=7)
    assert ledger.alarm_node_ticks == 5
    assert ledger.false_alarm_node_ticks == 2  # nodes 3 and 6 are more than 2 hops from node 0
    for _ in range(9):
        ledger.add([], fault_nodes=[0], sim_nodes=7)
    assert ledger.node_ticks == 70
    assert ledger.per_1000_node_ticks == pytest.approx(1000.0 * 2 / 70)


def test_ledger_counts_every_alarm_as_false_without_an_active_fault() -> None:
    ledger = AlarmLedger(_path_graph(7), hops=3)
    ledger.add([0, 1, 2], fault_nodes=[], sim_nodes=7)
    assert ledger.false_alarm_node_ticks == 3


def test_ledger_with_zero_hops_excuses_only_the_fault_nodes_themselves() -> None:
    ledger = AlarmLedger(_path_graph(7), hops=0)
    ledger.add([2, 3, 4], fault_nodes=[3, 4], sim_nodes=7)
    assert ledger.false_alarm_node_ticks == 1


def test_ledger_ignores_alarms_on_nodes_beyond_the_simulated_ones() -> None:
    ledger = AlarmLedger(_path_graph(8), hops=1)  # node 7 is a real host after 7 simulated nodes
    ledger.add([7, 5], fault_nodes=[0], sim_nodes=7)
    assert ledger.alarm_node_ticks == 1
    assert ledger.false_alarm_node_ticks == 1
    assert ledger.node_ticks == 7


def test_an_empty_ledger_reports_zero() -> None:
    assert _ledger().per_1000_node_ticks == 0.0


def _attempt(tick: int, action: str, node: int, peer: int | None = None) -> dict[str, Any]:
    return {"tick": tick, "action": action, "node": node, "peer": peer}


def test_first_action_success_counts_only_the_first_action_on_the_right_target() -> None:
    faults = [
        _fault(0, "node_crash", 10, node=1, ended=20, remediated_by="restart_node"),
        _fault(1, "link_degradation", 30, node=4, peer=5, ended=45, remediated_by="reroute"),
        _fault(2, "congestion", 50, node=8, ended=70, remediated_by="rate_limit"),
        _fault(3, "blackhole", 60, node=2, ended=80),  # never acted on
    ]
    faults[0]["remediation_tick"] = 15
    faults[1]["remediation_tick"] = 41
    faults[2]["remediation_tick"] = 66
    incidents = [
        {**_incident(0, 12, 13, 20, [0, 1]), "attempts": [_attempt(15, "restart_node", 1)]},
        # The link's fix named the peer the other way round: still the link.
        {**_incident(1, 32, 33, 45, [5, 6]), "attempts": [_attempt(41, "reroute", 5, 4)]},
        # First action hit a symptom (the congested node's parent), the second the root.
        {
            **_incident(2, 52, 53, 70, [7, 8]),
            "attempts": [_attempt(55, "rate_limit", 7), _attempt(66, "rate_limit", 8)],
        },
    ]
    result = evaluate(faults, incidents, 100, _ledger(), max_duration_ticks=20)
    assert result["faults_acted_on"] == 3
    assert result["first_action_success_ratio"] == pytest.approx(2 / 3)
    assert result["first_action_success_by_fault_type"] == {
        "congestion": 0.0,
        "link_degradation": 1.0,
        "node_crash": 1.0,
    }
    assert result["mttr_by_fault_type"] == {
        "blackhole": 20.0,
        "congestion": 20.0,
        "link_degradation": 15.0,
        "node_crash": 10.0,
    }
    table = by_fault_type(result)
    assert table["congestion"] == {"recall": 1.0, "first_action_success_ratio": 0.0, "mttr_ticks": 20.0}
    assert table["blackhole"]["first_action_success_ratio"] is None


def test_a_link_fix_without_the_peer_or_before_the_fault_is_not_a_first_action_success() -> None:
    fault = _fault(0, "link_degradation", 30, node=4, peer=5, ended=50)
    stale = {**_incident(0, 5, 6, 40, [4]), "attempts": [_attempt(8, "reroute", 4, 5)]}  # before the fault
    blunt = {**_incident(1, 31, 32, 50, [4]), "attempts": [_attempt(34, "reroute", 4)]}  # avoids the node
    result = evaluate([fault], [stale, blunt], 100, _ledger(), max_duration_ticks=20)
    assert result["faults_acted_on"] == 1
    assert result["first_action_success_ratio"] == 0.0
    assert first_action(fault, [stale, blunt], 100) == _attempt(34, "reroute", 4)


def test_no_action_means_no_first_action_ratio() -> None:
    result = evaluate([_fault(0, "congestion", 10, node=1, ended=40)], [], 100, _ledger())
    assert result["faults_acted_on"] == 0
    assert result["first_action_success_ratio"] is None


def test_recall_of_visible_counts_only_the_faults_the_telemetry_showed() -> None:
    faults = [
        _fault(0, "link_degradation", 10, 2, 40, peer=3),  # visible, detected
        _fault(1, "link_degradation", 50, 6, 80, peer=7),  # invisible (no route used it), missed
        _fault(2, "blackhole", 90, 8, 120),  # visible, missed
    ]
    incidents = [_incident(0, 11, 12, 30, [2])]
    out = evaluate(faults, incidents, 200, _ledger(), visible={0: True, 1: False, 2: True})
    assert out["recall_by_fault_type"] == {"blackhole": 0.0, "link_degradation": 0.5}
    assert out["visible_by_fault_type"] == {
        "blackhole": {"faults": 1, "visible": 1, "detected_visible": 0},
        "link_degradation": {"faults": 2, "visible": 1, "detected_visible": 1},
    }
    assert out["recall_of_visible_by_fault_type"] == {"blackhole": 0.0, "link_degradation": 1.0}


def test_without_visibility_no_visible_figures_are_made_up() -> None:
    out = evaluate([_fault(0, "node_crash", 10, 2, 40)], [], 200, _ledger())
    assert out["visible_by_fault_type"] == {} and out["recall_of_visible_by_fault_type"] == {}
