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
