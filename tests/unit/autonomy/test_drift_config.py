"""RunConfig.drift: from a config file or the --drift preset, validated with one clear line, carried to the mesh."""

from __future__ import annotations

import argparse

import pytest

from x0tta6bl4.autonomy.config import RunConfig, add_run_arguments, config_from_args
from x0tta6bl4.autonomy.job import plan_run
from x0tta6bl4.cli import main
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mesh.drift import DriftConfig, DriftSchedule, realistic_drift


def _args(*argv: str) -> RunConfig:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_a_config_file_sets_the_drift_and_the_default_is_none(tmp_path) -> None:
    assert RunConfig().drift == DriftConfig() and not RunConfig().drift.enabled
    path = tmp_path / "run.yaml"
    path.write_text(
        "ticks: 200\ndrift:\n  daily_amplitude: 0.5\n  leave_share: 0.02\n  leave_ticks: [20, 80]\n"
    )
    config = _args("--config", str(path))
    assert config.drift.daily_amplitude == 0.5 and config.drift.leave_ticks == (20, 80)
    assert _args("--config", str(path), "--drift").drift == realistic_drift(200)
    assert _args("--drift", "--ticks", "120").drift == realistic_drift(120)


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("drift:\n  daily_amplitude: 2\n", "drift.daily_amplitude"),
        ("drift:\n  leave_share: 0.1\n", "leave_ticks must be [first, last)"),
        ("drift:\n  surge: 1\n", "drift.surge"),
        (
            "regions: 4\ndrift:\n  region_step_tick: 5\n  region_step_factor: 2\n  region_step_region: 4\n",
            "0..3",
        ),
    ],
)
def test_bad_drift_values_fail_with_one_line_and_exit_status_2(tmp_path, capsys, yaml, message) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        _args("--config", str(path))
    assert main(["run", "--config", str(path), "--in-process", "--no-ebpf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("x0tta6bl4: error:") and err.count("\n") == 1 and message in err


def test_the_plan_keeps_faults_off_nodes_that_leave_or_join() -> None:
    config = RunConfig(nodes=400, ticks=200, seed=3, faults_per_1000_ticks=200, drift=realistic_drift(200))
    plan = plan_run(config)
    churn = DriftSchedule.build(config.drift, plan.topology, config.seed).churn
    assert churn.sum() == 24
    assert not any(churn[f.node] or (f.peer is not None and churn[f.peer]) for f in plan.faults)


def test_a_hand_placed_fault_on_an_absent_node_is_refused() -> None:
    drift = DriftConfig(join_share=0.05, join_ticks=(50, 60))
    schedule = DriftSchedule.build(drift, plan_run(RunConfig(nodes=400, seed=3)).topology, 3)
    joiner = int(schedule.join_tick.argmax())
    fault = {"type": "cpu_exhaustion", "node": joiner, "start_tick": 20}
    with pytest.raises(ConfigError, match=f"node {joiner}, which is not in the mesh"):
        plan_run(RunConfig(nodes=400, seed=3, drift=drift, faults=[fault]))
