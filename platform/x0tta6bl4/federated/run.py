"""The federated training driver (`x0tta6bl4 train`, `jobs/train_federated.py`): mesh, Flower, registry."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from x0tta6bl4 import RAY_NAMESPACE
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.federated.config import TrainConfig, flower_run_config
from x0tta6bl4.federated.report import build_metrics, model_card, progress_round, say
from x0tta6bl4.mesh.faults import Fault, random_schedule
from x0tta6bl4.mesh.topology import Topology, TopologySpec
from x0tta6bl4.models.registry import ModelRegistry
from x0tta6bl4.models.versions import check_model_name

# Flower reads these when it is first imported: no telemetry calls home, and only its errors on
# the console (this driver prints its own progress lines).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_LOG_LEVEL", "ERROR")

if TYPE_CHECKING:  # these import torch and flwr; the driver imports them only once input is valid
    from x0tta6bl4.federated.outcome import FederationOutcome
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
    if config.deployment:
        from x0tta6bl4.federated.deployment import check_prerequisites

        check_prerequisites(config.ca_dir)
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
        say(
            f"warning: Flower starts {pool} client actors of {client_cpus} CPU, but only {free:g} CPUs are "
            f"free now; clients wait until CPUs free up (rounds time out after round_timeout_s)"
        )
    if pool < regions:
        waves = math.ceil(regions / pool)
        say(f"note: {regions} clients share {pool} client actors; each round runs in {waves} waves")


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
            say(f"mesh tick {done}/{config.ticks}  faulty nodes {s['labelled']:.0f}")
    return mesh


def _close_and_linger(mesh: ShardedMesh, linger_s: float) -> None:
    """Close the mesh, then hold Ray up ``linger_s`` (its metrics agent exports the last rounds)."""
    mesh.close()
    if linger_s > 0:
        say(f"metrics: keeping Ray up {linger_s:g} s for a last scrape")
        time.sleep(linger_s)


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
    from x0tta6bl4.federated.outcome import FederationOutcome
    from x0tta6bl4.federated.server_app import server_app

    config = plan.config
    outcome = FederationOutcome()
    total = config.rounds + config.lora_rounds
    run_simulation(
        server_app=server_app(
            outcome,
            on_round=lambda rec: progress_round(rec, total),
            on_done=_once(lambda: _close_and_linger(mesh, config.metrics_linger_s)),
            run_config=flower_run_config(config),
        ),
        client_app=client_app(),
        num_supernodes=config.regions,
        backend_config={
            "client_resources": {"num_cpus": config.client_cpus, "num_gpus": 0.0},
            # Used only if Ray were not connected yet: join the same cluster and namespace.
            "init_args": {"address": conn_address, "namespace": RAY_NAMESPACE},
        },
    )
    return outcome


def _write_regions(plan: TrainPlan) -> dict[int, Path]:
    """Each region's windows, pulled from its MeshShard as a simulated client would, into one file each."""
    from x0tta6bl4.federated import task

    files = {}
    for region in range(plan.config.regions):
        series = task.load_region_series(region, plan.spec)
        files[region] = task.save_series_file(
            series, plan.run_dir / "deployment" / "regions" / f"{region}.npz"
        )
    say(f"deployment: wrote the windows of {len(files)} regions for their SuperNodes")
    return files


def _federate_deployment(plan: TrainPlan, files: dict[int, Path]) -> tuple[FederationOutcome, dict[str, Any]]:
    """Run the same Flower app on Flower's deployment runtime: SuperLink, SuperNodes, ``flwr run``.

    The SuperNodes are processes outside the training job's Ray cluster; each reads only
    its own region's file (``data-path`` in its node config). The ServerApp, started by
    the SuperLink, writes rounds and final weights to ``outcome-dir``; this driver follows
    them and stops every process when the run ends, fails or is interrupted.

    Returns:
        the outcome, and what the deployment was (addresses, identities, refusals) for metrics.json.
    """
    from x0tta6bl4.federated.deployment import DeploymentError, FlowerDeployment
    from x0tta6bl4.federated.outcome import read_outcome, read_rounds

    config = plan.config
    root = plan.run_dir / "deployment"
    out_dir = root / "outcome"
    total = config.rounds + config.lora_rounds
    deadline_s = total * config.round_timeout_s + 600.0
    summary: dict[str, Any] = {}
    with FlowerDeployment(root, config.ca_dir, say, threads=int(config.client_cpus)) as dep:
        dep.start_superlink(svid_ttl_s=max(3600, int(deadline_s) + 600))
        rogue = dep.add_supernodes(
            {
                f"region-{r}": {"partition-id": r, "num-partitions": config.regions, "data-path": str(f)}
                for r, f in files.items()
            },
            rogue=config.rogue_supernode,
        )
        refused = [rogue] if rogue is not None else []
        run_id = dep.run_app(flower_run_config(config, outcome_dir=str(out_dir)))
        started = time.monotonic()
        shown = 0
        last_status = started
        outcome = None
        while outcome is None:
            time.sleep(0.5)
            outcome = read_outcome(out_dir)  # raises what the ServerApp raised
            for rec in read_rounds(out_dir)[shown:]:
                progress_round(rec, total)
                shown += 1
            dep.check_alive("superlink")
            for name in dep.nodes:
                dep.check_alive(name)
            now = time.monotonic()
            if outcome is None and now - last_status > 15.0:
                last_status = now
                status = dep.run_status(run_id)
                if status.startswith("finished") and read_outcome(out_dir) is None:
                    raise DeploymentError(
                        f"flwr run {run_id} ended ({status}) without the ServerApp's outcome; "
                        f"see {root / 'logs' / 'superlink.log'}"
                    )
            if outcome is None and now - started > deadline_s:
                raise DeploymentError(f"flwr run {run_id} did not end within {deadline_s:.0f} s")
        summary = {
            "superlink": dep.address,
            "tls": dep.tls,
            "supernode_auth": True,
            "supernodes": dep.nodes,
            "refused_supernodes": refused,
            "flower_run_id": run_id,
            "logs": str(root / "logs"),
        }
    return outcome, summary


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
    say(f"held-out evaluation: {scenario.nodes} nodes, {scenario.ticks} ticks, seed {scenario.seed}")
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


def train_main(config: TrainConfig) -> TrainResult:
    """Run one federated training job end to end and write a registry version.

    Order: validate (spec, warm-up, LoRA fit, registry writable, topology) before Ray;
    connect Ray; run the mesh shards for ``ticks`` ticks; run the Flower simulation
    (which shuts Ray down when it ends, so this must be its own driver), or with
    ``deployment`` write each region's windows, disconnect Ray and run the same Flower
    app on a SuperLink and SuperNode processes; evaluate on a held-out scenario in
    process; write (and optionally promote) the version. Both modes share everything
    after the federation.

    Raises:
        ConfigError, RegistryError: bad input, found before anything starts (also: this
            process is already connected to Ray, which Flower would disconnect).
        TooFewRepliesError: a round got fewer than ``min_clients`` accepted updates.
        DeploymentError, FederationFailedError: the deployment's processes or its ServerApp failed.
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
    say(f"ray: {conn.address}{' (started here)' if conn.started_here else ''}  run {plan.run_id}")
    mesh = None
    deployment: dict[str, Any] | None = None
    try:
        if not config.deployment:
            _check_pool(config.client_cpus, config.regions)
        t0 = time.perf_counter()
        mesh = _start_mesh(plan)
        mesh_s = time.perf_counter() - t0
        if config.deployment:
            files = _write_regions(plan)
        else:
            t0 = time.perf_counter()
            outcome = _federate(plan, conn.address, mesh)
            federation_s = time.perf_counter() - t0
    finally:
        if mesh is not None and ray.is_initialized():
            mesh.close()  # a no-op when the ServerApp already closed it
        disconnect_ray(conn)
    if config.deployment:  # Flower's deployment runtime needs no Ray: the mesh is done
        t0 = time.perf_counter()
        outcome, deployment = _federate_deployment(plan, files)
        federation_s = time.perf_counter() - t0
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
    metrics = build_metrics(plan, outcome, heldout, timings, deployment)
    from x0tta6bl4.models import lora
    from x0tta6bl4.models.bootstrap import publish_version
    from x0tta6bl4.security.provenance import ProvenanceConfig, ProvenancePolicy

    ca_dir = str(config.ca_dir) if config.ca_dir is not None else None
    version = publish_version(  # signed by the trainer identity; training and promotion in the ledger
        plan.registry,
        plan.spec.name,
        lora.full_arrays(final),
        plan.spec.to_dict(),
        metrics,
        model_card(plan, metrics),
        config.promote,
        ProvenancePolicy(ProvenanceConfig(ca_dir=ca_dir)),
    )
    say(f"registry: wrote {version} signed by the trainer{' (promoted)' if config.promote else ''}")
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
            [sys.executable, "-m", "x0tta6bl4.cli", "train", "--config", fh.name, "--json"],
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
