"""The Flower app built from its run config, the outcome a deployed ServerApp hands over, SuperNode inputs."""

from __future__ import annotations

import os
import stat
import tomllib

import numpy as np
import pytest

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.federated.config import RUN_CONFIG_KEYS, TrainConfig, flower_run_config
from x0tta6bl4.federated.deployment import APP_DIR, new_node_key, write_run_config


def _app_config() -> dict:
    return tomllib.loads((APP_DIR / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_app_declares_every_run_config_key_with_the_cli_defaults() -> None:
    app = _app_config()["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "x0tta6bl4.federated.server_app:app",
        "clientapp": "x0tta6bl4.federated.client_app:app",
    }
    defaults = app["config"]
    assert tuple(defaults) == RUN_CONFIG_KEYS
    cli = flower_run_config(TrainConfig(registry="unused"))
    same = set(RUN_CONFIG_KEYS) - {"spec", "min-clients", "outcome-dir"}  # path, derived, per run
    assert {k: defaults[k] for k in same} == {k: cli[k] for k in same}


def test_flowers_own_validation_accepts_the_app() -> None:
    from flwr.common.config import validate_config

    ok, errors, _ = validate_config(_app_config(), check_module=False)
    assert ok, errors


def test_the_server_settings_come_from_the_run_config(tmp_path) -> None:
    from x0tta6bl4.federated.server_app import settings_from_run_config

    config = TrainConfig(
        registry="unused", regions=3, rounds=2, lora_rounds=0, strategy="fedprox", poison_region=1
    )
    values = flower_run_config(config, outcome_dir="/tmp/out")
    settings = settings_from_run_config(values)
    assert (settings.rounds, settings.lora_rounds, settings.strategy, settings.min_clients) == (
        2,
        0,
        "fedprox",
        2,
    )
    assert (settings.crash_region, settings.poison_region, settings.max_update_norm_ratio) == (None, 1, 10.0)
    assert settings.spec.name == "graphsage-anomaly"
    # What `flwr run` reads back from the --run-config file is the same mapping.
    path = write_run_config(tmp_path / "run-config.toml", values)
    assert tomllib.loads(path.read_text(encoding="utf-8")) == values
    # The app's defaults alone make a valid run (what a bare `flwr run` gets).
    assert settings_from_run_config(_app_config()["tool"]["flwr"]["app"]["config"]).rounds == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": "fedsgd"}, "strategy 'fedsgd'"),
        ({"rounds": 0}, "rounds=0: must be at least 1"),
        ({"max-update-norm-ratio": 1.0}, "max-update-norm-ratio > 1"),
        ({"seed": None}, "lacks seed"),
    ],
)
def test_a_bad_run_config_is_one_clear_error(change, message) -> None:
    from x0tta6bl4.federated.server_app import settings_from_run_config

    values = {**flower_run_config(TrainConfig(registry="unused")), **change}
    values = {k: v for k, v in values.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        settings_from_run_config(values)


def test_an_outcome_written_by_the_server_app_reads_back(tmp_path) -> None:
    from x0tta6bl4.federated.outcome import (
        FederationFailedError,
        FederationOutcome,
        RoundRecord,
        TooFewRepliesError,
        read_outcome,
        read_rounds,
        write_outcome,
    )

    assert read_outcome(tmp_path) is None and read_rounds(tmp_path) == []
    rec = RoundRecord(
        round=1, phase="full", phase_round=1, sampled=2, replied=1, rejected=1, rejections=["x"]
    )
    outcome = FederationOutcome(
        rounds=[rec],
        base={"w": np.arange(3, dtype=np.float32)},
        adapters={"a": np.ones(2, np.float32)},
        personal={1: {"a": np.zeros(2, np.float32)}},
        full_bytes=12,
        adapter_bytes=8,
    )
    write_outcome(tmp_path, outcome)
    back = read_outcome(tmp_path)
    assert back is not None and back.rounds == [rec]
    np.testing.assert_array_equal(back.base["w"], outcome.base["w"])
    np.testing.assert_array_equal(back.personal[1]["a"], np.zeros(2))
    assert (back.full_bytes, back.adapter_bytes, back.adapters.keys()) == (12, 8, {"a"})

    write_outcome(tmp_path, FederationOutcome(), TooFewRepliesError("round 2 (full): 0 of 2 clients replied"))
    with pytest.raises(TooFewRepliesError, match="0 of 2 clients replied"):
        read_outcome(tmp_path)
    write_outcome(tmp_path, FederationOutcome(), RuntimeError("boom"))
    with pytest.raises(FederationFailedError, match="RuntimeError: boom"):
        read_outcome(tmp_path)


def test_a_region_series_file_gives_back_the_same_windows(tmp_path) -> None:
    from x0tta6bl4.federated import task
    from x0tta6bl4.models.data import ScenarioSpec, simulate
    from x0tta6bl4.models.graphsage import DetectorSpec

    spec = DetectorSpec.load()
    series = simulate(ScenarioSpec(nodes=120, regions=2, ticks=40, seed=3), spec.window)[0].region_series(1)
    path = task.save_series_file(series, tmp_path / "regions" / "1.npz")
    back = task.region_series(1, spec, str(path))
    for name in ("edge_index", "node_ids", "labels", "region"):
        np.testing.assert_array_equal(getattr(back, name), getattr(series, name))
    t = series.valid_ticks[-1]
    for a, b in zip(back.inputs.at(t), series.inputs.at(t), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(task.RegionDataError, match="cannot read region windows"):
        task.load_series_file(tmp_path / "missing.npz", spec)


def test_a_supernode_key_is_private_and_readable_by_flower(tmp_path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    key = new_node_key(tmp_path / "keys", "region-0")
    assert stat.S_IMODE(os.stat(key.private_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    private = load_ssh_private_key(key.private_path.read_bytes(), None)  # what flower-supernode does
    public = load_ssh_public_key(key.public_path.read_bytes())  # what flwr supernode register does
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert public == private.public_key()
    assert len(key.fingerprint) == 64 and key.fingerprint not in key.public_path.read_text()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rogue_supernode": True}, "rogue_supernode needs deployment"),
        ({"regions": 2, "poison_region": 2}, "poison_region 2 is not a region"),
        ({"max_update_norm_ratio": 1.0}, "greater than 1"),
    ],
)
def test_deployment_options_are_checked(fields, message) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        TrainConfig(registry="unused", **fields)
