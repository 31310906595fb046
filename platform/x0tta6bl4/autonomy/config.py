"""What `x0tta6bl4 run` takes: RunConfig (YAML and flags), hand-placed faults and scripted actions."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from x0tta6bl4.mapek.config import ControllerConfig
from x0tta6bl4.mesh.drift import DriftConfig, realistic_drift
from x0tta6bl4.mesh.faults import ACTIONS, FAULT_TYPES, check_action, check_fault_type
from x0tta6bl4.settings import add_field_flags, add_switch, load_options

#: Environment variables that set ``state_dir`` and ``runs_dir`` when no flag or file does.
STATE_DIR_ENV = "X0TTA6BL4_STATE_DIR"
RUNS_DIR_ENV = "X0TTA6BL4_RUNS_DIR"


class FaultConfig(BaseModel):
    """A fault placed by hand (in addition to, or instead of, the random schedule)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="fault type: " + ", ".join(FAULT_TYPES))
    node: int = Field(description="node at fault (a link's first endpoint for link_degradation)")
    peer: int | None = Field(default=None, description="the link's other endpoint (link_degradation only)")
    start_tick: int = Field(ge=0, description="first tick the fault is active")
    duration_ticks: int = Field(default=30, ge=1, description="ticks until it ends by itself")
    severity: float = Field(default=0.8, gt=0, le=1, description="strength, 0..1")

    @model_validator(mode="after")
    def _known_type(self) -> FaultConfig:
        check_fault_type(self.type)
        return self


class ActionConfig(BaseModel):
    """A remediation applied at a fixed tick (scripted operator action)."""

    model_config = ConfigDict(extra="forbid")

    action: str = Field(description="remediation: " + ", ".join(ACTIONS))
    node: int = Field(description="target node (a link's first endpoint for reroute around a link)")
    peer: int | None = Field(default=None, description="the link's other endpoint (reroute around a link)")
    tick: int = Field(ge=0, description="tick at which it is applied")

    @model_validator(mode="after")
    def _known_action(self) -> ActionConfig:
        check_action(self.action)
        return self


class RunConfig(BaseModel):
    """Everything `x0tta6bl4 run` takes; every field has a documented default."""

    model_config = ConfigDict(extra="forbid")

    nodes: int = Field(default=1000, gt=0, description="mesh nodes to simulate")
    regions: int = Field(default=4, gt=0, description="mesh regions = MeshShard actors")
    ticks: int = Field(default=300, gt=0, description="ticks to run")
    seed: int = Field(default=1, ge=0, description="seed of topology, traffic and fault schedule")
    faults_per_1000_ticks: float = Field(
        default=40.0, ge=0, description="random faults per 1,000 ticks (0: only the configured faults)"
    )
    fault_types: list[str] = Field(
        default_factory=lambda: list(FAULT_TYPES), description="fault types the random schedule draws from"
    )
    faults: list[FaultConfig] = Field(default_factory=list, description="faults placed by hand")
    actions: list[ActionConfig] = Field(
        default_factory=list, description="remediations applied at fixed ticks"
    )
    mean_degree: float = Field(default=6.0, gt=0, description="average radio neighbours per node")
    gateway_fraction: float = Field(
        default=0.03, gt=0, le=1, description="share of nodes with a wired uplink"
    )
    drift: DriftConfig = Field(
        default_factory=DriftConfig,
        description="workload drift: daily traffic cycle, a region's load step, nodes leaving and joining "
        "(default: none)",
    )
    checkpoint_every_ticks: int = Field(default=10, gt=0, description="ticks between shard checkpoints")
    tick_interval_s: float = Field(
        default=0.0, ge=0, description="wall-clock pause per tick (0: as fast as possible)"
    )
    runs_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get(RUNS_DIR_ENV, "runs")),
        description="where <run-id>/report.json is written (X0TTA6BL4_RUNS_DIR, else <state_dir>/runs, "
        "else runs/; made absolute when the run starts: under `ray job submit` give an absolute or "
        "shared path)",
    )
    state_dir: Path | None = Field(
        default_factory=lambda: os.environ.get(STATE_DIR_ENV) or None,
        validate_default=True,
        description=f"shared location every Ray node mounts (a path or a file:// URI; ${STATE_DIR_ENV}): "
        "runs/ (checkpoints, action journals, reports), the knowledge store and the runbook index live "
        "under it, so an actor restarted on another node resumes from them (default: none, runs_dir "
        "and .x0tta6bl4/rag of the working directory)",
    )
    run_id: str | None = Field(default=None, description="run id (default: time stamp and seed)")
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster to join (default: RAY_ADDRESS, a running cluster, or a new local one)",
    )
    ebpf: bool = Field(
        default=True, description="start an EbpfSource per Ray node (procfs fallback when eBPF cannot load)"
    )
    in_process: bool = Field(
        default=False, description="run the kernel in the driver process without shard actors"
    )
    keep_mesh: bool = Field(default=False, description="leave the shard actors running after the run")
    autonomy: bool = Field(
        default=True,
        description="deploy the Serve apps and run the MAPE-K controller (off: the mesh and its faults only)",
    )
    controller: ControllerConfig = Field(
        default_factory=ControllerConfig, description="MAPE-K controller settings (mode, strategy, ...)"
    )
    serve_port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the Serve apps")
    serve_forever: bool = Field(
        default=False,
        description="keep Serve (behind its mTLS front) and the dashboard up after the run until Ctrl-C",
    )
    front_port: int = Field(
        default=8443,
        ge=0,
        le=65535,
        description="HTTPS port of the mTLS front that serve_forever opens (0: any free)",
    )

    @field_validator("state_dir", mode="before")
    @classmethod
    def _local_state_dir(cls, value: Any) -> Any:
        """A path or ``file://`` URI: checkpoints are renamed atomically and the knowledge store is
        SQLite, which object stores (``s3://``, ``gs://``) cannot hold."""
        text = str(value) if value is not None else None
        if text is None or "://" not in text:
            return value
        if text.startswith("file://"):
            return text.removeprefix("file://")
        raise ValueError(
            f"state_dir {text!r}: only a path or a file:// URI of a volume every node mounts (NFS, "
            "CephFS, a ReadWriteMany PVC) holds checkpoints and the SQLite knowledge store"
        )

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        explicit_runs_dir = "runs_dir" in self.model_fields_set or os.environ.get(RUNS_DIR_ENV)
        if self.state_dir is not None and not explicit_runs_dir:
            self.runs_dir = self.state_dir / "runs"
        if self.regions > self.nodes:
            raise ValueError(f"regions ({self.regions}) cannot exceed nodes ({self.nodes})")
        if self.nodes < 2:
            raise ValueError("nodes must be at least 2")
        for kind in self.fault_types:
            check_fault_type(kind)
        step_region = self.drift.region_step_region
        if step_region is not None and step_region >= self.regions:
            raise ValueError(
                f"drift.region_step_region {step_region} but the mesh has regions 0..{self.regions - 1}"
            )
        for fault in self.faults:
            if fault.node >= self.nodes or (fault.peer is not None and fault.peer >= self.nodes):
                raise ValueError(f"fault on node {fault.node} but the mesh has nodes 0..{self.nodes - 1}")
        for action in self.actions:
            if action.node >= self.nodes:
                raise ValueError(f"action on node {action.node} but the mesh has nodes 0..{self.nodes - 1}")
        return self


def load_config(path: Path | None, overrides: dict[str, Any]) -> RunConfig:
    """The run's config from a YAML file (optional) and command-line overrides."""
    return load_options(RunConfig, path, overrides)


_CLI_FIELDS = (
    "nodes",
    "regions",
    "ticks",
    "seed",
    "faults_per_1000_ticks",
    "tick_interval_s",
    "checkpoint_every_ticks",
    "runs_dir",
    "state_dir",
    "run_id",
    "ray_address",
    "serve_port",
    "front_port",
)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `x0tta6bl4 run`, generated from RunConfig so defaults and docs never drift."""
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML file with any RunConfig fields (flags win)"
    )
    add_field_flags(parser, RunConfig, _CLI_FIELDS)
    add_switch(
        parser, "--no-ebpf", "ebpf", False, "do not start eBPF telemetry sources (default: start them)"
    )
    add_switch(
        parser, "--in-process", "in_process", True, "run the mesh kernel in the driver, without shard actors"
    )
    add_switch(parser, "--keep-mesh", "keep_mesh", True, "leave the shard actors running after the run")
    add_switch(
        parser,
        "--drift",
        "drift_preset",
        True,
        "realistic workload drift scaled to the run: two daily cycles, one region's load x1.75 from "
        "mid-run, 3 %% of the nodes leaving and 3 %% joining (replaces the config file's drift)",
    )
    parser.add_argument(
        "--mode",
        choices=("learning", "static", "no_remediation"),
        default=None,
        help="controller mode: learn thresholds and act (default), fixed thresholds, or detect only",
    )
    parser.add_argument(
        "--knowledge", default=None, help="SQLite knowledge store (default: <runs-dir>/knowledge.sqlite)"
    )
    add_switch(
        parser,
        "--no-autonomy",
        "autonomy",
        False,
        "run the mesh and its faults without Serve and the controller",
    )
    add_switch(
        parser,
        "--serve-forever",
        "serve_forever",
        True,
        "keep Serve (through the mTLS front) and the Ray dashboard up after the run (until Ctrl-C)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_ID",
        default=None,
        help="continue run RUN_ID (in --runs-dir) whose driver died, from its shards' checkpoints and "
        "action journal, with the config it was started with",
    )
    parser.add_argument(
        "--json",
        dest="print_json",
        action="store_true",
        help="print the report summary as JSON instead of a table",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides: dict[str, Any] = {
        name: getattr(args, name, None)
        for name in (*_CLI_FIELDS, "ebpf", "in_process", "keep_mesh", "autonomy", "serve_forever")
    }
    controller = {
        key: value
        for key, value in (
            ("mode", getattr(args, "mode", None)),
            ("knowledge_path", getattr(args, "knowledge", None)),
        )
        if value is not None
    }
    if controller:
        base = load_config(args.config, {}).controller.model_dump()
        overrides["controller"] = {**base, **controller}
    if getattr(args, "drift_preset", None):
        ticks = load_config(args.config, {"ticks": overrides["ticks"]}).ticks
        overrides["drift"] = realistic_drift(ticks).model_dump()
    return load_config(args.config, overrides)
