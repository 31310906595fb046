"""`state_dir`: the shared location under which a run's files live, resolved at the driver."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from x0tta6bl4.autonomy.config import RunConfig, add_run_arguments, config_from_args
from x0tta6bl4.autonomy.job import plan_run
from x0tta6bl4.autonomy.serving import serve_config_of
from x0tta6bl4.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for name in ("X0TTA6BL4_STATE_DIR", "X0TTA6BL4_RUNS_DIR", "X0TTA6BL4_RAG_DIR"):
        monkeypatch.delenv(name, raising=False)


def _args(*argv: str) -> RunConfig:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_runs_and_the_runbook_index_live_under_the_state_dir_given_by_flag(tmp_path):
    config = _args("--state-dir", str(tmp_path / "shared"))
    assert config.state_dir == tmp_path / "shared" and config.runs_dir == tmp_path / "shared" / "runs"
    rag = serve_config_of(config).rag.retriever["data_dir"]
    assert rag == str(tmp_path / "shared" / "rag")


def test_a_file_uri_and_the_environment_name_the_state_dir(tmp_path, monkeypatch):
    assert RunConfig(state_dir=f"file://{tmp_path}").runs_dir == tmp_path / "runs"
    monkeypatch.setenv("X0TTA6BL4_STATE_DIR", str(tmp_path / "env"))
    assert RunConfig().runs_dir == tmp_path / "env" / "runs"


def test_an_explicit_runs_dir_wins_over_the_state_dir(tmp_path, monkeypatch):
    assert RunConfig(state_dir=tmp_path, runs_dir=tmp_path / "r").runs_dir == tmp_path / "r"
    monkeypatch.setenv("X0TTA6BL4_RUNS_DIR", str(tmp_path / "env-runs"))
    assert RunConfig(state_dir=tmp_path).runs_dir == tmp_path / "env-runs"


@pytest.mark.parametrize("uri", ["s3://bucket/x0", "gs://bucket/x0", "memory://x0"])
def test_an_object_store_is_refused_with_the_reason(uri):
    with pytest.raises(ConfigError, match="file:// URI of a volume every node mounts"):
        _args("--state-dir", uri)


def test_without_a_state_dir_paths_stay_relative_to_the_working_dir_but_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = RunConfig(nodes=20, regions=2, ticks=5)
    assert config.state_dir is None and config.runs_dir == Path("runs")
    plan = plan_run(config)
    assert plan.config.runs_dir == tmp_path / "runs"
    assert serve_config_of(config).rag.retriever["data_dir"] == str(tmp_path / ".x0tta6bl4" / "rag")


def test_plan_run_makes_a_relative_state_dir_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = plan_run(RunConfig(nodes=20, regions=2, ticks=5, state_dir="shared"))
    assert plan.config.state_dir == tmp_path / "shared"
    assert plan.run_dir.parent == tmp_path / "shared" / "runs"
