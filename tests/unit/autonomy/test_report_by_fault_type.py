"""The run's printed table: one row per fault type with its recall, first-action success and MTTR."""

from __future__ import annotations

from typing import Any

import pytest

from x0tta6bl4.autonomy.report import print_summary


def _report() -> dict[str, Any]:
    return {
        "run_id": "r1",
        "path": "/tmp/r1/report.json",
        "topology": {"nodes": 10, "links": 12, "regions": 2},
        "summary": {"first_action_success_ratio": 0.75, "faults_acted_on": 4},
        "hosts": [],
        "by_fault_type": {
            "blackhole": {"recall": 1.0, "first_action_success_ratio": 0.5, "mttr_ticks": 12.25},
            "link_degradation": {"recall": 0.0, "first_action_success_ratio": None, "mttr_ticks": 37.0},
        },
    }


def test_the_table_shows_each_fault_types_figures_and_a_dash_where_nothing_was_acted_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_summary(_report(), as_json=False)
    out = capsys.readouterr().out
    assert "first action success ratio" in out
    assert "recall 1, first action 0.5, MTTR 12.2 ticks" in out
    assert "recall 0, first action -, MTTR 37 ticks" in out
