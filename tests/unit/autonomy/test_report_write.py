"""write_report: the run's report.json is replaced whole (atomic, fsynced), never left torn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from x0tta6bl4.autonomy.report import write_report


def test_the_report_is_strict_json_in_a_created_directory_with_no_temporary_left(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "run-1" / "report.json"
    report = {"summary": {"mttr_ticks": np.float64(3.5), "availability": float("nan")}, "dir": tmp_path}

    assert write_report(report, path) == path
    assert json.loads(path.read_text()) == {
        "summary": {"mttr_ticks": 3.5, "availability": None},
        "dir": str(tmp_path),
    }
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_a_report_that_cannot_be_written_keeps_the_previous_one_whole(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_report({"summary": {"ticks": 10}}, path)

    with pytest.raises(TypeError):
        write_report({"summary": {"ticks": 11}, "bad": object()}, path)

    assert json.loads(path.read_text()) == {"summary": {"ticks": 10}}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
