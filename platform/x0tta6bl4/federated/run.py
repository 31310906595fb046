"""The federated training driver (`x0tta6bl4 train`, `jobs/train_federated.py`): mesh, Flower, registry."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from x0tta6bl4 import RAY_NAMESPACE, __version__
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.federated.config import TrainConfig
from x0tta6bl4.jsonsafe import json_safe
from x0tta6bl4.mesh.faults import Fault, random_schedule
from x0tta6bl4.mesh.topology import Topology, TopologySpec
from x0tta6bl4.models.registry import ModelRegistry, check_model_name

# Flower reads these when it is first imported: no telemetry calls home, and only its errors on
# the console (this driver prints its own progress lines).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_LOG_LEVEL", "ERROR")

if TYPE_CHECKING:  # these import torch and flwr; the driver imports them only once input is valid
    from x0tta6bl4.federated.server_app import FederationOutcome, RoundRecord
    from x0tta6bl4.mesh.pipeline import ShardedMesh
    from x0tta6bl4.models.graphsage import DetectorSpec, GraphSAGEDetector


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """A validated training run: spec, registry, topology and faults, all checked before Ray starts."""

    config: TrainConfig
    spec: DetectorSpec
    registry: ModelRegistry
    topology_spec: TopologySpec
    topology: Topology
    faults: tuple[Fault, ...]
    run_id: str

    @property
    def run_dir(self) -> Path:
        return self.config.runs_dir / self.run_id


@dataclasses.dataclass
class TrainResult:
    """Everything a training run produced.

    Attributes:
        run_id: the run's id (its shard checkpoints are under ``runs_dir/run_id``).
        model: registry model name.
        version: the registry version written.
        uri: where that version lives.
        promoted: whether it was promoted for Serve.
        metrics: exactly what the version's ``metrics.json`` holds.
        rounds: one record per federated round (also ``metrics["round_table"]``).
        bytes_per_round: mean bytes that travelled per round, by phase (``full``, ``lora``).
        wall_s: the whole run, seconds.
    """

    run_id: str
    model: str
    version: str
    uri: str
    promoted: bool
    metrics: dict[str, Any]
    rounds: list[dict[str, Any]]
    bytes_per_round: dict[str, float | None]
    wall_s: float


def plan_training(config: TrainConfig) -> TrainPlan:
    """Check everything the run needs before Ray starts (ConfigError / RegistryError on bad input)."""
    registry = ModelRegistry(config.registry)
    registry.check_writable()  # first: it needs no torch, so this common mistake fails fastest
    from x0tta6bl4.federated import task
    from x0tta6bl4.models.graphsage import DetectorSpec

    spec = DetectorSpec.load(config.spec)
    check_model_name(spec.name)
    warmup = spec.window.warmup_ticks
    for name, ticks in (("ticks", config.ticks), ("eval_ticks", config.eval_ticks)):
        if ticks <= warmup:
            raise ConfigError(
                f"{name}={ticks} leaves no training window after the detector's {warmup}-tick warm-up; "
                f"use more than {warmup}"
            )
    # The LoRA spec must fit the detector (peft raises on unknown target modules).
    task.initial_arrays(spec, "lora", config.seed, task.initial_arrays(spec, "full", config.seed))
    topology_spec = TopologySpec(config.nodes, config.regions, seed=config.seed)
    topology = topology_spec.build()
    faults = (
        tuple(
            random_schedule(
                topology, config.ticks, config.seed, config.faults_per_1000_ticks, warmup_ticks=warmup
            )
        )
        if config.faults_per_1000_ticks > 0
        else ()
    )
    run_id = config.run_id or time.strftime("train-%Y%m%d-%H%M%S") + f"-s{config.seed}"
    return TrainPlan(config, spec, registry, topology_spec, topology, faults, run_id)


def _say(message: str) -> None:
    """One line of live progress on stderr (plain lines: they read the same in `ray job logs`)."""
    print(message, file=sys.stderr, flush=True)


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _progress_round(rec: RoundRecord, total: int) -> None:
    failed = f" ({rec.failed} failed)" if rec.failed else ""
    _say(
        f"round {rec.round}/{total} {rec.phase:<4}  clients {rec.replied}/{rec.sampled}{failed}  "
        f"loss {_fmt(rec.loss)}  auprc {_fmt(rec.auprc)}  "
        f"bytes {_fmt_bytes(rec.bytes_down + rec.bytes_up + rec.bytes_eval)}  "
        f"train {rec.local_train_s:.1f}s  overhead {rec.overhead_s:.1f}s  round {rec.round_s:.1f}s"
    )
    for failure in rec.failures:
        _say(f"  failed: {failure}")


def _check_pool(client_cpus: float, regions: int) -> None:
    """Refuse a client size no Ray node can host; warn when Flower's pool cannot all be placed now.

    Flower's Ray backend starts ``floor(node CPUs / client_cpus)`` client actors on every
    node, i.e. it reserves about the whole cluster, whatever else runs there.
    """
    import ray

    pool = sum(int(n["Resources"].get("CPU", 0) / client_cpus) for n in ray.nodes() if n.get("Alive"))
    if pool == 0:
        raise ConfigError(
            f"client_cpus={client_cpus} is more than any Ray node has: Flower could start no client"
        )
    free = float(ray.available_resources().get("CPU", 0.0))
    if pool * client_cpus > free + 1e-9:
        _say(
            f"warning: Flower starts {pool} client actors of {client_cpus} CPU, but only {free:g} CPUs are "
            f"free now; clients wait until CPUs free up (rounds time out after round_timeout_s)"
        )
    if pool < regions:
        waves = math.ceil(regions / pool)
        _say(f"note: {regions} clients share {pool} client actors; each round runs in {waves} waves")


def _start_mesh(plan: TrainPlan) -> ShardedMesh:
    """Create the shard actors and run the mesh ``ticks`` ticks; shards keep every frame for the clients."""
    from x0tta6bl4.mesh.pipeline import ShardedMesh
    from x0tta6bl4.mesh.shard import MeshSpec

    config = plan.config
    spec = MeshSpec(
        topology=plan.topology_spec,
        seed=config.seed,
        faults=plan.faults,
        checkpoint_dir=str(plan.run_dir / "checkpoints"),
        recent_frames=config.ticks,
    )
    mesh = ShardedMesh(plan.topology, spec, keep_actors=config.keep_mesh)
    last = time.monotonic()
    for done in range(1, config.ticks + 1):
        result = mesh.step()
        now = time.monotonic()
        if now - last >= 2.0 or done == config.ticks:
            last = now
            s = result.summary_dict()
            _say(f"mesh tick {done}/{config.ticks}  faulty nodes {s['labelled']:.0f}")
    return mesh


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    lock = threading.Lock()
    done: list[bool] = []

    def wrapper() -> None:
        with lock:
            if done:
                return
            done.append(True)
        fn()

    return wrapper


def _federate(plan: TrainPlan, conn_address: str, mesh: ShardedMesh) -> FederationOutcome:
    """Run the Flower simulation on this driver's Ray connection; returns the FederationOutcome."""
    from flwr.simulation import run_simulation

    from x0tta6bl4.federated.client_app import client_app
    from x0tta6bl4.federated.server_app import FederationOutcome, ServerSettings, server_app

    config = plan.config
    settings = ServerSettings(
        spec=plan.spec,
        rounds=config.rounds,
        lora_rounds=config.lora_rounds,
        local_epochs=config.local_epochs,
        strategy=config.strategy,
        proximal_mu=config.proximal_mu,
        min_clients=config.min_clients,
        seed=config.seed,
        round_timeout_s=config.round_timeout_s,
    )
    outcome = FederationOutcome()
    total = config.rounds + config.lora_rounds
    run_simulation(
        server_app=server_app(
            settings, outcome, on_round=lambda rec: _progress_round(rec, total), on_done=_once(mesh.close)
        ),
        client_app=client_app(crash_region=config.crash_region),
        num_supernodes=config.regions,
        backend_config={
            "client_resources": {"num_cpus": config.client_cpus, "num_gpus": 0.0},
            # Used only if Ray were not connected yet: join the same cluster and namespace.
            "init_args": {"address": conn_address, "namespace": RAY_NAMESPACE},
        },
    )
    return outcome


def _heldout(plan: TrainPlan, outcome: FederationOutcome) -> tuple[GraphSAGEDetector, dict[str, Any]]:
    """Score the final global model, the pre-trained model and each region's personalised model.

    The held-out scenario is a fresh simulated mesh (``eval_seed``: its own topology,
    traffic and faults), so region ``r`` there is not the same nodes as in training: the
    ``regions`` figures measure how well each region's adapters transfer. ``regions_later``
    scores the same models on the training mesh itself, on the ``eval_ticks`` ticks after
    the training window (new traffic and faults, same nodes): the question personalisation
    answers, "is my region's model better on my region's future?".
    """
    from x0tta6bl4.federated import task
    from x0tta6bl4.federated.server_app import as_float32
    from x0tta6bl4.models import lora
    from x0tta6bl4.models.data import ScenarioSpec, simulate

    config, spec = plan.config, plan.spec
    scenario = ScenarioSpec(
        nodes=config.eval_nodes,
        regions=config.regions,
        ticks=config.eval_ticks,
        seed=config.eval_seed,
        faults_per_1000_ticks=config.faults_per_1000_ticks,
    )
    _say(f"held-out evaluation: {scenario.nodes} nodes, {scenario.ticks} ticks, seed {scenario.seed}")
    series, _ = simulate(scenario, spec.window)
    if outcome.base is None:  # pragma: no cover - the ServerApp raises before this can happen
        raise RuntimeError("the federation ended without a global model")
    base = as_float32(outcome.base)
    pretrained = task.detector_from(spec, "full", base)
    if outcome.adapters is not None:
        final = lora.merged(task.detector_from(spec, "lora", as_float32(outcome.adapters), base))
    else:
        final = pretrained
    scores = task.evaluate(final, series)
    result: dict[str, Any] = {
        "scenario": scenario.model_dump(mode="json"),
        "global": scores,
        "pretrained": task.evaluate(pretrained, series) if final is not pretrained else dict(scores),
        "regions": {},
    }
    personal: dict[int, Any] = {}
    if outcome.adapters is not None:
        shared = as_float32(outcome.adapters)
        personal = {
            r: task.personalised(spec, as_float32(own), shared, base) for r, own in outcome.personal.items()
        }
    # The training mesh run on past its training window (a longer run draws its own faults
    # over the whole span; only the ticks after the window are scored).
    later = ScenarioSpec(
        nodes=config.nodes,
        regions=config.regions,
        ticks=config.ticks + config.eval_ticks,
        seed=config.seed,
        faults_per_1000_ticks=config.faults_per_1000_ticks,
    )
    later_series, _ = simulate(later, spec.window)
    later_ticks = range(max(config.ticks, later_series.inputs.first_valid), later.ticks)
    result["regions_later"] = {}
    for region in range(config.regions):
        for key, data, ticks in (
            ("regions", series.region_series(region), None),
            ("regions_later", later_series.region_series(region), later_ticks),
        ):
            entry = {"global": task.evaluate(final, data, ticks)}
            if region in personal:
                entry["personalised"] = task.evaluate(personal[region], data, ticks)
            result[key][str(region)] = entry
    return final, result


def _phase_mean(rounds: list[dict[str, Any]], phase: str) -> float | None:
    values = [r["bytes"] for r in rounds if r["phase"] == phase]
    return float(np.mean(values)) if values else None


def build_metrics(
    plan: TrainPlan, outcome: FederationOutcome, heldout: dict[str, Any], timings: dict[str, float]
) -> dict[str, Any]:
    """The version's metrics.json: headline held-out figures, per-round table, traffic, timings, config."""
    rounds = []
    for rec in outcome.rounds:
        row = rec.to_dict()
        row["bytes"] = rec.bytes_down + rec.bytes_up + rec.bytes_eval
        rounds.append(row)
    final = heldout["global"]
    metrics = {
        "auprc": final.get("auprc"),
        "auroc": final.get("auroc"),
        "best_f1": final.get("best_f1"),
        "pretrained_auprc": heldout["pretrained"].get("auprc"),
        "rounds": plan.config.rounds,
        "lora_rounds": plan.config.lora_rounds,
        "clients": plan.config.regions,
        "min_clients": plan.config.min_clients,
        "strategy": plan.config.strategy,
        "failed_replies": sum(r["failed"] for r in rounds),
        "bytes_per_round_full": _phase_mean(rounds, "full"),
        "bytes_per_round_lora": _phase_mean(rounds, "lora"),
        "model_bytes": outcome.full_bytes,
        "adapter_bytes": outcome.adapter_bytes,
        **timings,
        "heldout": heldout,
        "round_table": rounds,
        "run_id": plan.run_id,
        "platform_version": __version__,
        "config": json.loads(plan.config.model_dump_json()),
    }
    return dict(json_safe(metrics))


def model_card(plan: TrainPlan, metrics: Mapping[str, Any]) -> str:
    """A short Markdown model card: what was trained, on what, how, and how well."""
    c = plan.config
    lines = [
        f"# {plan.spec.name} (federated)",
        "",
        "GraphSAGE masked-node autoencoder: scores each mesh node by how badly its neighbourhood "
        "predicts its telemetry. Trained without labels.",
        "",
        "## Training",
        f"- Flower simulation, one client per mesh region: {c.regions} clients, "
        f"at least {c.min_clients} replies per round.",
        f"- {c.rounds} full-model rounds ({c.strategy}"
        + (f", mu={c.proximal_mu}" if c.strategy == "fedprox" else "")
        + f"), then {c.lora_rounds} LoRA rounds (rank {plan.spec.lora.rank}, FedAvg of adapters).",
        f"- Data: simulated mesh, {c.nodes} nodes, {c.ticks} ticks, seed {c.seed}, "
        f"{c.faults_per_1000_ticks:g} faults per 1,000 ticks; each client reads its region's MeshShard.",
        f"- Weights stored: the global adapters merged into the pre-trained weights (run {plan.run_id}).",
        "",
        "## Evaluation (held-out simulated mesh; labels used for evaluation only)",
        f"- Scenario: {c.eval_nodes} nodes, {c.eval_ticks} ticks, seed {c.eval_seed}.",
        f"- AUPRC {_fmt(metrics.get('auprc'))}, AUROC {_fmt(metrics.get('auroc'))}, "
        f"best F1 {_fmt(metrics.get('best_f1'))} "
        f"(pre-trained model before LoRA: AUPRC {_fmt(metrics.get('pretrained_auprc'))}).",
        f"- Traffic per round: full model {_fmt_bytes(metrics.get('bytes_per_round_full'))}, "
        f"LoRA {_fmt_bytes(metrics.get('bytes_per_round_lora'))} "
        "(the first LoRA round also ships the base weights).",
        "",
        "## Limits",
        "- Simulated telemetry only; real eBPF telemetry has no labels to evaluate against.",
        "- Per-region personalised models (own adapters, the federation's error scale) are scored in "
        "metrics.json (`heldout.regions`: held-out mesh; `heldout.regions_later`: the training mesh after "
        "its training window); their adapters are not stored.",
    ]
    return "\n".join(lines) + "\n"


def train_main(config: TrainConfig) -> TrainResult:
    """Run one federated training job end to end and write a registry version.

    Order: validate (spec, warm-up, LoRA fit, registry writable, topology) before Ray;
    connect Ray; run the mesh shards for ``ticks`` ticks; run the Flower simulation
    (which shuts Ray down when it ends, so this must be its own driver); evaluate on a
    held-out scenario in process; write (and optionally promote) the version.

    Raises:
        ConfigError, RegistryError: bad input, found before anything starts (also: this
            process is already connected to Ray, which Flower would disconnect).
        TooFewRepliesError: a round got fewer than ``min_clients`` replies.
    """
    started = time.perf_counter()
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        raise ConfigError(
            "this process is already connected to Ray, and Flower's Ray backend calls ray.shutdown() "
            "when training ends: run training in its own driver (x0tta6bl4 train, ray job submit, "
            "or x0tta6bl4.federated.run.train_in_subprocess)"
        )
    plan = plan_training(config)
    import ray

    from x0tta6bl4.connect import connect_ray, disconnect_ray

    conn = connect_ray(config.ray_address)
    _say(f"ray: {conn.address}{' (started here)' if conn.started_here else ''}  run {plan.run_id}")
    mesh = None
    try:
        _check_pool(config.client_cpus, config.regions)
        t0 = time.perf_counter()
        mesh = _start_mesh(plan)
        mesh_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        outcome = _federate(plan, conn.address, mesh)
        federation_s = time.perf_counter() - t0
    finally:
        if mesh is not None and ray.is_initialized():
            mesh.close()  # a no-op when the ServerApp already closed it
        disconnect_ray(conn)
    t0 = time.perf_counter()
    final, heldout = _heldout(plan, outcome)
    eval_s = time.perf_counter() - t0
    timings = {
        "mesh_s": mesh_s,
        "federation_s": federation_s,
        "local_train_s": float(sum(r.local_train_s for r in outcome.rounds)),
        "overhead_s": float(sum(r.overhead_s for r in outcome.rounds)),
        "heldout_eval_s": eval_s,
    }
    metrics = build_metrics(plan, outcome, heldout, timings)
    from x0tta6bl4.models import lora

    version = plan.registry.write_version(
        plan.spec.name,
        lora.full_arrays(final),
        plan.spec.to_dict(),
        metrics,
        model_card(plan, metrics),
    )
    if config.promote:
        plan.registry.promote(version.model, version.version)
    _say(f"registry: wrote {version}{' (promoted)' if config.promote else ''}")
    return TrainResult(
        run_id=plan.run_id,
        model=version.model,
        version=version.version,
        uri=version.uri,
        promoted=config.promote,
        metrics=metrics,
        rounds=list(metrics["round_table"]),
        bytes_per_round={"full": metrics["bytes_per_round_full"], "lora": metrics["bytes_per_round_lora"]},
        wall_s=time.perf_counter() - started,
    )


def train_in_subprocess(config: TrainConfig, ray_address: str | None = None) -> TrainResult:
    """:func:`train_main` in a child process, for callers that keep their own Ray connection.

    Flower's Ray backend shuts Ray down when training ends; a notebook or test that is
    connected to a cluster runs training this way and passes that cluster's address.
    Progress goes to this process's stderr.

    Args:
        config: the run.
        ray_address: the cluster to train on (default: ``config.ray_address``).

    Raises:
        ConfigError: the child refused the input (its one-line message).
        RuntimeError: the child failed once started.
    """
    import subprocess
    import tempfile

    import yaml

    data = config.model_dump(mode="json", exclude_none=True)
    if ray_address is not None:
        data["ray_address"] = ray_address
    started = time.perf_counter()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh)
        fh.flush()
        with subprocess.Popen(
            [sys.executable, "-m", "x0tta6bl4.federated.cli", "--config", fh.name, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            out, err = proc.stdout, proc.stderr
            assert out is not None
            assert err is not None
            stdout: list[str] = []
            reader = threading.Thread(target=lambda: stdout.append(out.read()), daemon=True)
            reader.start()
            last = ""
            for line in err:  # live progress, passed through
                sys.stderr.write(line)
                last = line.strip() or last
            reader.join()
    if proc.returncode == 2:
        raise ConfigError(last.removeprefix("x0tta6bl4: error: "))
    if proc.returncode != 0:
        raise RuntimeError(f"training failed with exit status {proc.returncode}: {last}")
    record = json.loads("".join(stdout))
    metrics = record["metrics"]
    return TrainResult(
        run_id=metrics["run_id"],
        model=record["model"],
        version=record["version"],
        uri=record["uri"],
        promoted=record["promoted"],
        metrics=metrics,
        rounds=list(metrics["round_table"]),
        bytes_per_round={"full": metrics["bytes_per_round_full"], "lora": metrics["bytes_per_round_lora"]},
        wall_s=time.perf_counter() - started,
    )


def print_result(result: TrainResult, as_json: bool = False) -> None:
    """The final report on stdout: the rounds table and held-out figures, the same numbers as metrics.json."""
    if as_json:
        record = {
            "model": result.model,
            "version": result.version,
            "uri": result.uri,
            "promoted": result.promoted,
            "metrics": result.metrics,
        }
        print(json.dumps(record, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    m = result.metrics
    rounds = Table(title=f"federated rounds ({result.run_id})")
    for name in ("round", "phase", "clients", "loss", "auprc", "bytes", "train s", "overhead s", "round s"):
        rounds.add_column(name, justify="left" if name == "phase" else "right", no_wrap=True)
    for r in result.rounds:
        rounds.add_row(
            str(r["round"]),
            r["phase"],
            f"{r['replied']}/{r['sampled']}",
            _fmt(r["loss"]),
            _fmt(r["auprc"]),
            str(r["bytes"]),
            _fmt(r["local_train_s"], 2),
            _fmt(r["overhead_s"], 2),
            _fmt(r["round_s"], 2),
        )
    console.print(rounds)
    summary = Table(title=f"{result.model} {result.version}")
    summary.add_column("figure", no_wrap=True)
    summary.add_column("value", justify="right", no_wrap=True)
    for key in ("auprc", "auroc", "best_f1", "pretrained_auprc"):
        summary.add_row(f"held-out {key}", _fmt(m[key]))
    for key, where in (("regions", "held-out mesh"), ("regions_later", "training mesh, later ticks")):
        for region, entry in m["heldout"].get(key, {}).items():
            personal = entry.get("personalised", {})
            summary.add_row(
                f"region {region} auprc global / personalised ({where})",
                f"{_fmt(entry['global'].get('auprc'))} / {_fmt(personal.get('auprc'))}",
            )
    for key in ("bytes_per_round_full", "bytes_per_round_lora", "model_bytes", "adapter_bytes"):
        value = m[key]
        summary.add_row(key.replace("_", " "), "-" if value is None else f"{value:.0f}")
    summary.add_row("failed replies", str(m["failed_replies"]))
    for key in ("federation_s", "local_train_s", "overhead_s", "heldout_eval_s"):
        summary.add_row(key.replace("_", " "), _fmt(m[key], 2))
    summary.add_row("version uri", result.uri + (" (promoted)" if result.promoted else ""))
    console.print(summary)
