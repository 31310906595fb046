"""bench autonomy rows: first-action success per controller mode, with the issue's target of 0.8."""

from __future__ import annotations

import math
from typing import Any

from x0tta6bl4.bench.autonomy import MODES, scenario_rows


def _evaluation(first: float | None) -> dict[str, Any]:
    return {
        "f1": 0.8,
        "mttr_ticks": 10.0,
        "mttd_ticks": 2.0,
        "false_alarms_per_1000_node_ticks": 1.0,
        "availability": 0.99,
        "first_action_success_ratio": first,
    }


def test_first_action_success_is_reported_per_mode_per_seed_and_over_all_seeds_against_its_target() -> None:
    first = {"learning": {1: 0.9, 2: 0.7}, "static": {1: 0.5, 2: None}, "no_remediation": {1: None, 2: None}}
    figures = {mode: {seed: _evaluation(first[mode][seed]) for seed in (1, 2)} for mode in MODES}
    rows = [
        r for r in scenario_rows(figures, (1, 2), {"nodes": 10}) if r["name"] == "first_action_success_ratio"
    ]
    by = {(r["params"]["scenario"], r["params"]["mode"]): r for r in rows}
    assert set(by) == {(s, m) for s in ("seed-1", "seed-2", "all") for m in ("learning", "static")}
    assert all(r["target"] == {"metric": "value", "op": ">=", "value": 0.8} for r in rows)
    assert by["seed-1", "learning"]["met"] is True
    assert by["seed-2", "learning"]["met"] is False
    assert math.isclose(by["all", "learning"]["value"], 0.8)  # the seeds' mean
    assert by["all", "static"]["value"] == 0.5  # a seed that never acted does not count as 0
    assert math.isnan(by["seed-2", "static"]["value"])


def test_recall_of_visible_faults_is_pooled_over_the_seeds_per_mode_and_fault_type() -> None:
    seen = {
        1: {"blackhole": {"faults": 2, "visible": 2, "detected_visible": 1}},
        2: {"blackhole": {"faults": 2, "visible": 1, "detected_visible": 1}, "congestion": {"faults": 1, "visible": 0, "detected_visible": 0}},
    }  # fmt: skip
    figures = {
        mode: {seed: {**_evaluation(0.9), "visible_by_fault_type": seen[seed]} for seed in (1, 2)}
        for mode in MODES
    }
    rows = [r for r in scenario_rows(figures, (1, 2), {"nodes": 10}) if r["name"] == "recall_of_visible"]
    by = {(r["params"]["mode"], r["params"]["fault_type"]): r for r in rows}
    assert set(by) == {(m, k) for m in ("learning", "static") for k in ("blackhole", "congestion")}
    assert all(r["params"]["scenario"] == "all" for r in rows)  # pooled, never per seed
    blackhole = by["learning", "blackhole"]
    assert math.isclose(blackhole["value"], 2 / 3) and blackhole["met"] is False
    assert blackhole["params"]["visible_share"] == 0.75
    assert (
        math.isnan(by["static", "congestion"]["value"]) and by["static", "congestion"].get("target") is None
    )


def test_the_visible_ceiling_is_the_f1_of_confirming_exactly_the_visible_faults_and_bounds_the_gain() -> None:
    seen = {
        1: {"blackhole": {"faults": 4, "visible": 4, "detected_visible": 4}},
        2: {"node_crash": {"faults": 3, "visible": 2, "detected_visible": 2}, "congestion": {"faults": 1, "visible": 0, "detected_visible": 0}},
    }  # fmt: skip
    figures = {
        mode: {seed: {**_evaluation(0.9), "visible_by_fault_type": seen[seed]} for seed in (1, 2)}
        for mode in MODES
    }
    rows = scenario_rows(figures, (1, 2), {"nodes": 10})
    ceiling = {r["params"]["scenario"]: r["value"] for r in rows if r["name"] == "f1_visible_ceiling"}
    # Seed 2 shows half its faults: precision 1, recall 0.5, F1 2/3; over all seeds, the seeds' mean.
    assert ceiling["seed-1"] == 1.0 and math.isclose(ceiling["seed-2"], 2 / 3)
    assert math.isclose(ceiling["all"], (1.0 + 2 / 3) / 2)
    gain = {r["params"]["scenario"]: r for r in rows if r["name"] == "f1_gain"}
    # Every mode's F1 is 0.8 here: static could gain 0.2 on seed 1, nothing on seed 2.
    assert math.isclose(gain["seed-1"]["params"]["largest_possible"], 0.2)
    assert math.isclose(gain["seed-2"]["params"]["largest_possible"], 2 / 3 - 0.8)


def test_without_visibility_figures_there_is_no_ceiling_row() -> None:
    figures = {mode: {seed: _evaluation(0.9) for seed in (1, 2)} for mode in MODES}
    assert not [r for r in scenario_rows(figures, (1, 2), {"nodes": 10}) if r["name"] == "f1_visible_ceiling"]
