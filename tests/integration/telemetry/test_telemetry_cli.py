"""`x0tta6bl4 telemetry` and `x0tta6bl4 doctor` on this host: JSON lines, the table, refusals, exit codes."""

from __future__ import annotations

import argparse
import json

import pytest

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.telemetry.cli import doctor_main, telemetry_main
from x0tta6bl4.telemetry.ebpf import PROGRAMS
from x0tta6bl4.telemetry.frame import FEATURES

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("ebpf_host")]


def _args(**kw: object) -> argparse.Namespace:
    base = {"seconds": 1.0, "interval": 0.5, "programs": "all", "procfs": False, "json": True}
    return argparse.Namespace(**{**base, **kw})


def _reject_nan(token: str) -> float:
    raise AssertionError(f"non-JSON number {token} in output")


def test_json_mode_prints_one_strict_json_line_per_interval(capsys: pytest.CaptureFixture[str]) -> None:
    assert telemetry_main(_args(programs="skb_drops,runqlat")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    docs = [json.loads(line, parse_constant=_reject_nan) for line in lines]
    assert [d["tick"] for d in docs] == [1, 2]
    assert all(d["source"] == "ebpf" for d in docs)
    assert list(docs[0]["features"]) == list(FEATURES)
    assert docs[0]["features"]["queue_depth_pkts"] is None  # NaN becomes null
    assert docs[1]["features"]["runqueue_latency_p95_ms"] is not None
    assert "drop_reasons" in docs[1]["extra"]


def test_procfs_flag_forces_the_fallback(capsys: pytest.CaptureFixture[str]) -> None:
    assert telemetry_main(_args(procfs=True, seconds=0.5)) == 0
    captured = capsys.readouterr()
    (line,) = captured.out.splitlines()
    doc = json.loads(line)
    assert doc["source"] == "procfs"
    assert doc["features"]["latency_p95_ms"] is None
    assert "procfs fallback forced" in captured.err


def test_table_mode_shows_every_feature(capsys: pytest.CaptureFixture[str]) -> None:
    assert telemetry_main(_args(json=False, seconds=0.5, programs="runqlat")) == 0
    out = capsys.readouterr().out
    for name in FEATURES:
        assert name in out


def test_unknown_program_names_are_refused_before_anything_loads() -> None:
    with pytest.raises(ConfigError, match="'bogus'"):
        telemetry_main(_args(programs="runqlat,bogus"))


def test_doctor_reports_every_program_loaded(capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor_main(argparse.Namespace()) == 0
    out = capsys.readouterr().out
    assert "BLOCKED" not in out
    for name in PROGRAMS:
        assert f"ok      {name}: attached to" in out
