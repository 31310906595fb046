"""Detection and remediation figures of a run, from the controller's incidents and the fault schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix, identity

from x0tta6bl4.mesh.faults import HEALED_BY
from x0tta6bl4.observability.metrics import metric


class AlarmLedger:
    """Counts alarmed node-ticks far from every active fault (false alarms), tick by tick.

    Ground truth comes from the fault schedule (simulation only) and is used for nothing but
    these figures. A node within ``hops`` of an active fault's node or link counts as a symptom
    of that fault, not as a false alarm.

    Args:
        adjacency: ``[nodes, nodes]`` mesh adjacency (hosts may follow the simulated nodes).
        hops: the symptom radius (default: the controller's correlation radius).
    """

    def __init__(self, adjacency: csr_matrix, hops: int) -> None:
        self._reach = adjacency + identity(adjacency.shape[0], format="csr")
        self.hops = hops
        self.num_nodes = adjacency.shape[0]
        self.node_ticks = 0
        self.false_alarm_node_ticks = 0
        self.alarm_node_ticks = 0

    def add(self, alarmed: Sequence[int], fault_nodes: Sequence[int], sim_nodes: int) -> None:
        self.node_ticks += sim_nodes
        if not alarmed:
            return
        near = np.zeros(self.num_nodes, dtype=np.float64)
        if fault_nodes:
            near[list(fault_nodes)] = 1.0
            for _ in range(self.hops):
                near = self._reach @ near
        idx = np.asarray(alarmed, dtype=np.int64)
        idx = idx[idx < sim_nodes]
        self.alarm_node_ticks += int(idx.size)
        self.false_alarm_node_ticks += int((near[idx] == 0).sum())

    @property
    def per_1000_node_ticks(self) -> float:
        return 1000.0 * self.false_alarm_node_ticks / max(1, self.node_ticks)


def evaluate(
    faults: list[dict[str, Any]],
    incidents: list[dict[str, Any]],
    ticks: int,
    ledger: AlarmLedger,
    max_duration_ticks: int = 60,
    visible: Mapping[int, bool] | None = None,
) -> dict[str, Any]:
    """Precision, recall and F1 of detection, MTTD and MTTR in ticks, false alarms per 1,000 node-ticks,
    and how often the first action taken on a fault was the one that fixed it.

    Evaluated faults are those that would have ended within the run even if nobody acted
    (start + ``max_duration_ticks`` <= ticks), so MTTR is never cut short by the run's end.
    A detection is a confirmed incident (transients the controller dismissed are not); it is
    true when one of its nodes is a node (or link end) of a fault active during the incident.
    A fault is acted on when an incident holding one of its nodes sent an action while the fault
    was active; its first action fixed it when that action is the fault's cure on its own target
    (see :func:`first_action`), which is what a right root cause and a right plan both need.
    ``visible`` (fault id -> whether the fault changed any telemetry, from
    :func:`~x0tta6bl4.mapek.visibility.fault_visibility`) adds recall among the visible faults per
    fault type: what a controller of telemetry can be held to.
    """
    confirmed = [i for i in incidents if i.get("confirmed_tick") is not None]
    evaluated = [f for f in faults if f["start_tick"] + max_duration_ticks <= ticks]
    true_incidents = 0
    for inc in confirmed:
        end = inc["closed_tick"] if inc["closed_tick"] is not None else ticks
        nodes = set(inc["nodes"])
        if any(_overlaps(f, inc["opened_tick"], end, ticks) and _targets(f) & nodes for f in faults):
            true_incidents += 1
    detected, mttd = 0, []
    per_type: dict[str, list[int]] = {}
    seen_by_type: dict[str, dict[str, int]] = {}
    for f in evaluated:
        fault_end = f["ended_tick"] if f["ended_tick"] is not None else ticks
        hits = [
            max(0, inc["confirmed_tick"] - f["start_tick"])
            for inc in confirmed
            if _targets(f) & set(inc["nodes"])
            and inc["opened_tick"] < fault_end
            and (inc["closed_tick"] if inc["closed_tick"] is not None else ticks) >= f["start_tick"]
        ]
        per_type.setdefault(f["kind"], []).append(int(bool(hits)))
        if visible is not None and f["fault_id"] in visible:
            seen = seen_by_type.setdefault(f["kind"], {"faults": 0, "visible": 0, "detected_visible": 0})
            seen["faults"] += 1
            if visible[f["fault_id"]]:
                seen["visible"] += 1
                seen["detected_visible"] += int(bool(hits))
        if hits:
            detected += 1
            mttd.append(min(hits))
            metric("mapek_time_to_detect_ticks").observe(min(hits))
    precision = true_incidents / len(confirmed) if confirmed else 0.0
    recall = detected / len(evaluated) if evaluated else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    repair = [
        (f["ended_tick"] if f["ended_tick"] is not None else ticks) - f["start_tick"] for f in evaluated
    ]
    repair_by_type: dict[str, list[int]] = {}
    first_ok_by_type: dict[str, list[int]] = {}
    for f, r in zip(evaluated, repair, strict=True):
        repair_by_type.setdefault(f["kind"], []).append(r)
        first = first_action(f, incidents, ticks)
        if first is not None:
            first_ok_by_type.setdefault(f["kind"], []).append(int(action_fixes(f, first)))
    first_ok = [ok for oks in first_ok_by_type.values() for ok in oks]
    return {
        "faults_evaluated": len(evaluated),
        "faults_detected": detected,
        "incidents_confirmed": len(confirmed),
        "incidents_true": true_incidents,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mttd_ticks": float(np.mean(mttd)) if mttd else None,
        "mttr_ticks": float(np.mean(repair)) if repair else None,
        "faults_remediated": sum(1 for f in evaluated if f["remediated_by"] is not None),
        "false_alarms_per_1000_node_ticks": ledger.per_1000_node_ticks,
        "false_alarm_node_ticks": ledger.false_alarm_node_ticks,
        "recall_by_fault_type": {k: float(np.mean(v)) for k, v in sorted(per_type.items())},
        "faults_acted_on": len(first_ok),
        "first_action_success_ratio": float(np.mean(first_ok)) if first_ok else None,
        "first_action_success_by_fault_type": {
            k: float(np.mean(v)) for k, v in sorted(first_ok_by_type.items())
        },
        "mttr_by_fault_type": {k: float(np.mean(v)) for k, v in sorted(repair_by_type.items())},
        "visible_by_fault_type": dict(sorted(seen_by_type.items())),
        "recall_of_visible_by_fault_type": {
            k: v["detected_visible"] / v["visible"] for k, v in sorted(seen_by_type.items()) if v["visible"]
        },
    }


def by_fault_type(detection: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Recall, first-action success and MTTR per fault type, from :func:`evaluate`'s figures."""
    kinds = sorted(set(detection["recall_by_fault_type"]) | set(detection["mttr_by_fault_type"]))
    return {
        k: {
            "recall": detection["recall_by_fault_type"].get(k),
            "first_action_success_ratio": detection["first_action_success_by_fault_type"].get(k),
            "mttr_ticks": detection["mttr_by_fault_type"].get(k),
        }
        for k in kinds
    }


def first_action(fault: dict[str, Any], incidents: list[dict[str, Any]], ticks: int) -> dict[str, Any] | None:
    """The earliest action sent, while ``fault`` was active, by an incident holding one of its nodes."""
    end = fault["ended_tick"] if fault["ended_tick"] is not None else ticks
    targets = _targets(fault)
    sent = [
        a
        for inc in incidents
        if targets & set(inc["nodes"])
        for a in inc.get("attempts", [])
        if fault["start_tick"] <= a["tick"] <= end
    ]
    return min(sent, key=lambda a: a["tick"]) if sent else None


def action_fixes(fault: dict[str, Any], attempt: dict[str, Any]) -> bool:
    """The attempt is the fault's cure on the fault's own target, and the fault was cured."""
    if HEALED_BY.get(fault["kind"]) != attempt["action"] or fault["remediation_tick"] is None:
        return False
    if fault["peer"] is not None:
        on_target = {attempt["node"], attempt["peer"]} == {fault["node"], fault["peer"]}
    else:
        on_target = attempt["node"] == fault["node"] and attempt["peer"] is None
    return on_target and fault["remediation_tick"] >= attempt["tick"]


def _targets(fault: dict[str, Any]) -> set[int]:
    return {fault["node"]} | ({fault["peer"]} if fault["peer"] is not None else set())


def _overlaps(fault: dict[str, Any], start: int, end: int, ticks: int) -> bool:
    f_end = fault["ended_tick"] if fault["ended_tick"] is not None else ticks
    return fault["start_tick"] <= end and start < f_end
