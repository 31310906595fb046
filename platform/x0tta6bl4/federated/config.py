"""Federated training configuration: one pydantic model, used by the CLI flags, YAML files and the job."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from x0tta6bl4.federated.screening import DEFAULT_MAX_UPDATE_NORM_RATIO
from x0tta6bl4.models.registry import default_registry_uri
from x0tta6bl4.settings import add_field_flags, add_switch, load_options

#: The packaged detector spec (the same file as models.graphsage.DEFAULT_SPEC_PATH, named here
#: without importing torch, so bad flags are refused in a fraction of a second).
DEFAULT_SPEC_PATH = Path(__file__).resolve().parent.parent / "models" / "graphsage.yaml"

#: Server-side aggregation strategies (Flower ``flwr.serverapp.strategy``).
STRATEGIES = ("fedavg", "fedprox")

#: The Flower app's run config keys (``[tool.flwr.app.config]`` of ``federated/app/pyproject.toml``,
#: ``flwr run --run-config``); the ServerApp builds its settings from them in both modes.
RUN_CONFIG_KEYS = (
    "rounds",
    "lora-rounds",
    "local-epochs",
    "strategy",
    "proximal-mu",
    "min-clients",
    "seed",
    "round-timeout-s",
    "spec",
    "max-update-norm-ratio",
    "crash-region",
    "poison-region",
    "outcome-dir",
)


class TrainConfig(BaseModel):
    """Everything `x0tta6bl4 train` takes; every field has a documented default."""

    model_config = ConfigDict(extra="forbid")

    nodes: int = Field(default=2000, ge=2, description="mesh nodes simulated to produce training windows")
    regions: int = Field(default=4, ge=1, description="mesh regions = MeshShard actors = Flower clients")
    ticks: int = Field(
        default=240, gt=0, description="ticks the mesh runs; each tick after the warm-up is a training window"
    )
    seed: int = Field(default=1, ge=0, description="seed of topology, traffic, faults and initial weights")
    faults_per_1000_ticks: float = Field(
        default=150.0, ge=0, description="random faults per 1,000 ticks in the training mesh"
    )
    rounds: int = Field(default=5, ge=1, description="federated rounds that train the full model")
    lora_rounds: int = Field(
        default=3, ge=0, description="federated rounds that train only LoRA adapters (0: skip that phase)"
    )
    local_epochs: int = Field(default=1, ge=1, description="local epochs each client trains per round")
    strategy: Literal["fedavg", "fedprox"] = Field(
        default="fedavg", description="aggregation of the full-model rounds: fedavg or fedprox"
    )
    proximal_mu: float = Field(
        default=0.01, ge=0, description="FedProx proximal coefficient mu (used only with strategy fedprox)"
    )
    # Fields without a default here get one derived from other fields (see _derived_defaults).
    min_clients: int = Field(
        ge=1,
        description="successful client replies a round needs; fewer fails the run (default: regions - 1)",
    )
    round_timeout_s: float = Field(
        default=600.0, gt=0, description="seconds the server waits for the replies of one round"
    )
    spec: Path = Field(
        default=DEFAULT_SPEC_PATH, description="detector spec YAML (default: the packaged graphsage.yaml)"
    )
    registry: str = Field(
        default_factory=default_registry_uri,
        description="model registry path or fsspec URI (default: $X0TTA6BL4_REGISTRY, else models/registry)",
    )
    promote: bool = Field(default=False, description="promote the new version so Serve loads it")
    eval_seed: int = Field(
        ge=0, description="seed of the held-out evaluation scenario (default: seed + 1000)"
    )
    eval_nodes: int = Field(ge=2, description="nodes of the held-out scenario (default: nodes)")
    eval_ticks: int = Field(gt=0, description="ticks of the held-out scenario (default: ticks)")
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster to join (default: RAY_ADDRESS, a running cluster, or a new local one)",
    )
    client_cpus: float = Field(
        default=1.0,
        gt=0,
        description="CPUs per Flower client actor (client_resources); the pool is total cluster CPUs / this "
        "(deployment: CPU threads of each ClientApp process)",
    )
    runs_dir: Path = Field(
        default=Path("runs"), description="where runs/<run-id>/ keeps the shards' checkpoints"
    )
    metrics_linger_s: float = Field(
        default=0.0,
        ge=0,
        le=600,
        description="seconds the simulation keeps its Ray connection after the last round, so a scrape "
        "(one Prometheus interval) collects the final rounds' series before a Ray this job started "
        "goes down with it",
    )
    run_id: str | None = Field(default=None, description="run id (default: train-<time stamp>-s<seed>)")
    keep_mesh: bool = Field(default=False, description="leave the shard actors running after training")
    crash_region: int | None = Field(
        default=None,
        ge=0,
        description="testing aid (default: none): this region's client raises in overall round 2",
    )
    max_update_norm_ratio: float = Field(
        default=DEFAULT_MAX_UPDATE_NORM_RATIO,
        gt=1,
        description="a client update whose norm is more than this many times the median of the round's "
        "other updates is rejected (as is any NaN/inf)",
    )
    poison_region: int | None = Field(
        default=None,
        ge=0,
        description="testing aid (default: none): this region's client returns NaN in round 1 and a "
        "1000x-scaled update after",
    )
    deployment: bool = Field(
        default=False,
        description="run Flower's deployment runtime: a SuperLink (TLS from the platform CA, SuperNode "
        "authentication) and one SuperNode process per region, instead of the Ray simulation",
    )
    ca_dir: Path | None = Field(
        default=None,
        description="deployment: the CA that issues the SuperLink's certificate "
        "(default: $X0TTA6BL4_CA_DIR, else .x0tta6bl4/security/ca)",
    )
    rogue_supernode: bool = Field(
        default=False,
        description="deployment testing aid: also start a SuperNode with an unregistered key; "
        "the run fails unless the SuperLink refuses it",
    )

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, data: Any) -> Any:
        """Defaults that depend on other fields (min_clients, eval_seed, eval_nodes, eval_ticks)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)

        derived: dict[str, tuple[str, Callable[[int], int]]] = {
            "min_clients": ("regions", lambda regions: max(1, regions - 1)),
            "eval_seed": ("seed", lambda seed: seed + 1000),
            "eval_nodes": ("nodes", lambda nodes: nodes),
            "eval_ticks": ("ticks", lambda ticks: ticks),
        }
        for name, (source, rule) in derived.items():
            base = data.get(source)
            if base is None:
                base = cls.model_fields[source].get_default(call_default_factory=True)
            if data.get(name) is None and isinstance(base, int) and not isinstance(base, bool):
                data[name] = rule(base)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.regions > self.nodes:
            raise ValueError(f"regions ({self.regions}) cannot exceed nodes ({self.nodes})")
        if self.regions > self.eval_nodes:
            raise ValueError(f"regions ({self.regions}) cannot exceed eval_nodes ({self.eval_nodes})")
        if self.min_clients > self.regions:
            raise ValueError(
                f"min_clients ({self.min_clients}) cannot exceed regions ({self.regions}): "
                "a round could never get enough replies"
            )
        for name in ("crash_region", "poison_region"):
            region = getattr(self, name)
            if region is not None and region >= self.regions:
                raise ValueError(f"{name} {region} is not a region (0..{self.regions - 1})")
        if self.rogue_supernode and not self.deployment:
            raise ValueError("rogue_supernode needs deployment (there are no SuperNodes to refuse otherwise)")
        if self.run_id is not None and ("/" in self.run_id or self.run_id in ("", ".", "..")):
            raise ValueError(f"run id {self.run_id!r} must be a plain name")
        return self


def flower_run_config(config: TrainConfig, outcome_dir: str = "") -> dict[str, bool | int | float | str]:
    """The Flower run config of a training run (every key of :data:`RUN_CONFIG_KEYS`).

    Args:
        config: the run.
        outcome_dir: where the ServerApp writes its rounds and weights ("" = nowhere).
    """
    values: dict[str, bool | int | float | str] = {
        "rounds": config.rounds,
        "lora-rounds": config.lora_rounds,
        "local-epochs": config.local_epochs,
        "strategy": config.strategy,
        "proximal-mu": config.proximal_mu,
        "min-clients": config.min_clients,
        "seed": config.seed,
        "round-timeout-s": config.round_timeout_s,
        "spec": str(config.spec.expanduser().resolve()),
        "max-update-norm-ratio": config.max_update_norm_ratio,
        "crash-region": -1 if config.crash_region is None else config.crash_region,
        "poison-region": -1 if config.poison_region is None else config.poison_region,
        "outcome-dir": outcome_dir,
    }
    assert tuple(values) == RUN_CONFIG_KEYS
    return values


def load_train_config(path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """The training config from a YAML file (optional) and command-line overrides (None = not given)."""
    return load_options(TrainConfig, path, overrides)


#: Fields given as ``--name VALUE`` flags (booleans are switches, see add_train_arguments).
_VALUE_FIELDS = tuple(
    name for name, field in TrainConfig.model_fields.items() if field.annotation is not bool
)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `x0tta6bl4 train`, generated from TrainConfig so defaults and docs never drift."""
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML file with any TrainConfig fields (flags win)"
    )
    add_field_flags(parser, TrainConfig, _VALUE_FIELDS, types={"crash_region": int, "poison_region": int})
    add_switch(
        parser, "--promote", "promote", True, "promote the new version so Serve loads it (default: do not)"
    )
    add_switch(
        parser,
        "--keep-mesh",
        "keep_mesh",
        True,
        "leave the shard actors running after training (default: remove them)",
    )
    add_switch(
        parser,
        "--deployment",
        "deployment",
        True,
        "Flower deployment runtime: SuperLink (TLS, SuperNode authentication) and one SuperNode process "
        "per region (default: the Ray simulation)",
    )
    add_switch(
        parser,
        "--rogue-supernode",
        "rogue_supernode",
        True,
        "deployment testing aid: also start a SuperNode with an unregistered key, which must be refused",
    )
    parser.add_argument(
        "--json",
        dest="print_json",
        action="store_true",
        help="print the registry version and its metrics as JSON instead of a table",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The validated TrainConfig of parsed `x0tta6bl4 train` arguments (ConfigError on bad input)."""
    switches = ("promote", "keep_mesh", "deployment", "rogue_supernode")
    overrides = {name: getattr(args, name, None) for name in (*_VALUE_FIELDS, *switches)}
    return load_train_config(getattr(args, "config", None), overrides)
