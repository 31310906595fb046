"""Federated suite: detector vs non-graph baselines, federated vs centralised, LoRA bytes, throughput.

Everything is measured in one run on the same simulated data: training scenarios
(unlabelled for training) and a held-out scenario with other seeds and another fault
schedule (labels used only to evaluate).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from x0tta6bl4.bench._report import result
from x0tta6bl4.models import evaluate as ev
from x0tta6bl4.models.data import GraphSeries, ScenarioSpec, simulate, visible_faults
from x0tta6bl4.models.graphsage import DetectorSpec, GraphSAGEDetector
from x0tta6bl4.models.training import score_series, train_detector

#: Targets from the federated issue.
BEST_F1_TARGET = 0.9
GRAPH_VS_BASELINE_TARGET = 1.2
RECALL_AT_BEST_F1_TARGET = 0.5
GRAPH_TARGET_FAULTS = ("congestion", "blackhole")
FEDERATED_GAP_TARGET = 0.03
LORA_BYTES_TARGET = 0.10
INFERENCE_NODES = 10_000


def _log(msg: str) -> None:
    print(f"[bench federated] {msg}", file=sys.stderr, flush=True)


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "nodes": 200,
            "regions": 2,
            "ticks": 60,
            "train_seeds": (11,),
            "eval_ticks": 60,
            "epochs": 1,
            # A third of the spec's snapshots per epoch, for every training of the run alike.
            "steps_per_epoch": 20,
            "rounds": 1,
            "lora_rounds": 2,
            "central_seeds": (0,),
            "inference_nodes": 500,
            "inference_ticks": 1,
        }
    return {
        "nodes": 2000,
        "regions": 4,
        "ticks": 240,
        "train_seeds": (11, 12),
        "eval_ticks": 200,
        "epochs": 8,
        "steps_per_epoch": None,  # the spec's
        "rounds": 5,
        "lora_rounds": 3,
        "central_seeds": (0, 1, 2),
        "inference_nodes": INFERENCE_NODES,
        "inference_ticks": 5,
    }


def _quality(
    spec: DetectorSpec, train: list[GraphSeries], test: GraphSeries, epochs: int, ceiling: dict[str, Any]
) -> list[dict[str, Any]]:
    """GraphSAGE against z-score, IsolationForest and the MLP on the held-out scenario.

    ``ceiling`` is the F1 of an oracle that flags exactly the faulty node-ticks whose fault
    changes any telemetry (``evaluate.f1_ceiling``); best F1 is reported against it.
    """
    labels = ev.labels_of(test)
    metrics: dict[str, dict[str, Any]] = {}
    train_spec = spec.train.model_copy(update={"epochs": epochs})
    for name, graph in (("graphsage", True), ("mlp", False)):
        torch.manual_seed(0)
        model = GraphSAGEDetector(spec.model_copy(update={"graph": graph}))
        started = time.perf_counter()
        train_detector(model, train, train_spec)
        _log(f"{name} trained in {time.perf_counter() - started:.1f} s")
        metrics[name] = ev.detection_metrics(score_series(model, test), labels)
    metrics["zscore"] = ev.detection_metrics(ev.zscore_scores(test), labels)
    metrics["isolation_forest"] = ev.detection_metrics(ev.isolation_forest_scores(train, test), labels)
    baselines = ("zscore", "isolation_forest", "mlp")
    params = {
        "nodes": test.num_nodes,
        "node_ticks": int(labels.size),
        "faulty_node_ticks": int((labels > 0).sum()),
    }
    rows: list[dict[str, Any]] = []
    g = metrics["graphsage"]
    best = max(baselines, key=lambda b: float(metrics[b]["auprc"]))
    rows.append(
        result(
            "graphsage_auprc",
            float(g["auprc"]),
            "auprc",
            {**params, "fault_type": "all"},
            baseline=(f"{best}_auprc", float(metrics[best]["auprc"])),
        )
    )
    faults = sorted(g["by_fault"])  # type: ignore[arg-type]
    for fault in faults:
        best_f = max(baselines, key=lambda b: metrics[b]["by_fault"].get(fault, {}).get("auprc", 0.0))  # type: ignore[union-attr]
        target = ("ratio", ">=", GRAPH_VS_BASELINE_TARGET) if fault in GRAPH_TARGET_FAULTS else None
        base_auprc = float(metrics[best_f]["by_fault"][fault]["auprc"])  # type: ignore[index]
        rows.append(
            result(
                "graphsage_auprc",
                g["by_fault"][fault]["auprc"],
                "auprc",
                # AUPRC cannot exceed 1: no detector beats the best baseline by more than this.
                {**params, "fault_type": fault, "reachable_ratio": round(1.0 / base_auprc, 3)},  # type: ignore[index]
                baseline=(f"{best_f}_auprc", base_auprc),
                target=target,  # type: ignore[index]
            )
        )
    rows.append(
        result(
            "best_f1",
            float(g["best_f1"]),
            "f1",
            {
                **params,
                "invisible_faulty_node_ticks": int(ceiling["invisible_node_ticks"]),
                "visible_share_by_fault": {
                    k: round(v, 3) for k, v in ceiling["visible_share_by_fault"].items()
                },
            },
            baseline=("visible_faults_f1_ceiling", float(ceiling["f1"])),
            target=("value", ">=", BEST_F1_TARGET),
        )
    )
    # Recall at the best-F1 threshold of every fault type the telemetry shows at all (issue 26).
    for fault, share in sorted(ceiling["visible_share_by_fault"].items()):
        if share <= 0 or fault not in g["by_fault"]:  # type: ignore[operator]
            continue
        rows.append(
            result(
                "recall_at_best_f1",
                g["by_fault"][fault]["recall"],  # type: ignore[index]
                "recall",
                {
                    **params,
                    "fault_type": fault,
                    "visible_share": round(share, 3),
                    "threshold": round(float(g["threshold"]), 6),  # type: ignore[arg-type]
                },
                target=("value", ">=", RECALL_AT_BEST_F1_TARGET),
            )
        )
    for name in ("graphsage", *baselines):
        m = metrics[name]
        rows.append(
            result(
                f"{name}_detection",
                float(m["auprc"]),
                "auprc",
                {
                    "auroc": round(float(m["auroc"]), 4),  # type: ignore[arg-type]
                    "best_f1": round(float(m["best_f1"]), 4),  # type: ignore[arg-type]
                    "recall_by_fault": {k: round(v["recall"], 3) for k, v in m["by_fault"].items()},  # type: ignore[attr-defined]
                    "auprc_by_fault": {k: round(v["auprc"], 3) for k, v in m["by_fault"].items()},  # type: ignore[attr-defined]
                },
            )
        )
    return rows


def _throughput(spec: DetectorSpec, nodes: int, ticks: int) -> list[dict[str, Any]]:
    """Node-scores/s of the detector (every masking pass included) on one 10,000-node mesh snapshot."""
    scenario = ScenarioSpec(nodes=nodes, regions=8, ticks=spec.window.warmup_ticks + ticks, seed=5)
    series, _ = simulate(scenario, spec.window)
    model = GraphSAGEDetector(spec).eval()
    score_series(model, series, [series.valid_ticks[0]])  # warm-up
    started = time.perf_counter()
    score_series(model, series)
    elapsed = time.perf_counter() - started
    passes = int(series.groups.max()) + 1
    return [
        result(
            "detector_node_scores_per_s",
            nodes * len(series.valid_ticks) / elapsed,
            "node-scores/s",
            {
                "nodes": nodes,
                "snapshots": len(series.valid_ticks),
                "mask_passes": passes,
                "torch_threads": torch.get_num_threads(),
            },
        )
    ]


def results(quick: bool = False) -> list[dict[str, Any]]:
    size = _sizes(quick)
    spec = DetectorSpec.load()
    if size["steps_per_epoch"] is not None:
        steps = spec.train.model_copy(update={"steps_per_epoch": size["steps_per_epoch"]})
        spec = spec.model_copy(update={"train": steps})
    # Quick: one thread. Its graphs are small, and two threads meeting at a barrier for every small
    # op slow scoring tenfold as soon as anything else (a Ray node, another job) wants the cores.
    torch.set_num_threads(1 if quick else 2)
    # Quick: the Ray head boots while this process simulates and trains (no figure there is a time).
    with _shared_ray(quick) as ray_address:
        started = time.perf_counter()
        train = [
            simulate(
                ScenarioSpec(nodes=size["nodes"], regions=size["regions"], ticks=size["ticks"], seed=s),
                spec.window,
            )[0]
            for s in size["train_seeds"]
        ]
        heldout = ScenarioSpec(
            nodes=size["nodes"], regions=size["regions"], ticks=size["eval_ticks"], seed=101
        )
        test, _ = simulate(heldout, spec.window)
        took = time.perf_counter() - started
        _log(f"simulated {len(train)} training and 1 held-out scenarios in {took:.1f} s")
        started = time.perf_counter()
        visible = visible_faults(heldout, spec.window)[list(test.valid_ticks)]
        ceiling = ev.f1_ceiling(visible, ev.labels_of(test))
        took = time.perf_counter() - started
        _log(f"F1 ceiling {ceiling['f1']:.3f} (one re-run per held-out fault) in {took:.1f} s")
        rows = _quality(spec, train, test, size["epochs"], ceiling)
        address = ray_address()
        # Measured before the federations, while no Ray job runs (the quick head idles).
        throughput = _throughput(spec, size["inference_nodes"], size["inference_ticks"])
        rows += _federated(spec, size, address)
        embedder = _embedder(quick, address)
    return rows + throughput + embedder


@contextlib.contextmanager
def _shared_ray(quick: bool) -> Iterator[Callable[[], str | None]]:
    """Quick: start one local Ray head, without the dashboard, that both Flower runs join.

    Yields a function that waits until the head is up and returns its address (None when not
    quick: then each run starts a Ray of its own, as ``x0tta6bl4 train`` does).

    Flower's Ray backend ends each run with ``ray.shutdown()``, which stops a Ray its driver
    started: without this head, each run starts a Ray of its own, dashboard included (tens of
    CPU-seconds each on two cores). A driver that joins this head only disconnects. Like the
    Ray ``connect_ray`` starts, it runs in token mode with the platform's token, its workers
    import the package from this environment (nothing shipped), and its temp dir is its own, so
    no other process on the machine finds it.
    """
    if not quick:
        yield lambda: None
        return
    from x0tta6bl4.connect import SHIP_PACKAGE_ENV, free_local_port
    from x0tta6bl4.security import ray_auth

    before = ray_auth.auth_env_snapshot()
    ship = os.environ.get(SHIP_PACKAGE_ENV)
    if ray_auth.auth_enabled():
        ray_auth.use_token_auth()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_auth.restore_auth_env(before)
    heads: list[tuple[subprocess.Popen[bytes], str]] = []

    def start() -> tuple[subprocess.Popen[bytes], str, Path]:
        temp = tempfile.mkdtemp(prefix="x0fed", dir="/tmp")  # short: Ray's socket paths must fit
        address = f"127.0.0.1:{free_local_port()}"
        ports = ("node-manager", "object-manager", "metrics-export", "dashboard-agent-listen",
                 "dashboard-agent-grpc", "runtime-env-agent", "ray-client-server")  # fmt: skip
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block"]
        cmd += [
            f"--port={address.rsplit(':', 1)[1]}",
            *(f"--{name}-port={free_local_port()}" for name in ports),
        ]
        cmd += [f"--num-cpus={os.cpu_count() or 1}", "--include-dashboard=false", f"--temp-dir={temp}"]
        cmd += ["--disable-usage-stats"]
        log_path = Path(temp) / "ray-start.log"
        with log_path.open("wb") as log:
            head = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        heads.append((head, temp))
        return head, address, log_path

    head, address, log_path = start()

    def ready() -> str:
        nonlocal head, address, log_path
        deadline = time.monotonic() + 300
        for attempt in range(2):
            while b"Ray runtime started" not in log_path.read_bytes():
                if head.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            else:
                _log(f"one Ray head for both Flower runs at {address} (no dashboard)")
                return address
            failed = log_path.read_text(errors="replace")
            # `ray start` gives its raylet 30 s to register (hard-coded): a loaded machine may need longer.
            if attempt == 0 and head.poll() is not None and "timed out during startup" in failed:
                _stop(*heads[-1])
                head, address, log_path = start()
                continue
            raise RuntimeError(f"ray start failed: {failed[-2000:]}")
        raise AssertionError("unreachable")

    os.environ[SHIP_PACKAGE_ENV] = "off"
    try:
        yield ready
    finally:
        if ship is None:
            os.environ.pop(SHIP_PACKAGE_ENV, None)
        else:
            os.environ[SHIP_PACKAGE_ENV] = ship
        for started in heads:
            _stop(*started)


def _stop(head: subprocess.Popen[bytes], temp: str) -> None:
    """Stop a head of :func:`_shared_ray` and every process of its node, and remove its temp dir."""
    if head.poll() is None:
        head.terminate()  # `ray start --block` stops every process of its node on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
    with contextlib.suppress(ProcessLookupError):  # anything of the node still alive
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


def _federated(spec: DetectorSpec, size: dict[str, Any], ray_address: str | None) -> list[dict[str, Any]]:
    """A real Flower run (``train_main``: shards, ServerApp, ClientApps on Ray) and centralised training.

    The centralised model trains on the same windows pooled from every region, with as
    many gradient steps as all clients together; both are scored on the job's held-out
    scenario. ``ray_address``: the Ray to train on (None: ``train_main`` starts one).
    """
    import yaml

    from x0tta6bl4.federated.config import TrainConfig
    from x0tta6bl4.federated.run import train_main

    with tempfile.TemporaryDirectory(prefix="x0-bench-fed-") as tmp:
        extra: dict[str, Any] = {"ray_address": ray_address}
        if size["steps_per_epoch"] is not None:  # the clients train with the bench's spec
            extra["spec"] = Path(tmp) / "spec.yaml"
            extra["spec"].write_text(yaml.safe_dump(spec.to_dict()))
        config = TrainConfig.model_validate({
            "nodes": size["nodes"], "regions": size["regions"], "ticks": size["ticks"], "seed": 11,
            "rounds": size["rounds"], "lora_rounds": size["lora_rounds"], "registry": f"{tmp}/registry",
            "runs_dir": f"{tmp}/runs", "eval_nodes": size["nodes"], "eval_ticks": size["eval_ticks"],
            "eval_seed": 101, **extra,
        })  # fmt: skip
        fed = train_main(config)
    rounds = fed.rounds
    heldout = fed.metrics["heldout"]
    scenario = ScenarioSpec(
        nodes=config.nodes, regions=config.regions, ticks=config.ticks, seed=config.seed,
        faults_per_1000_ticks=config.faults_per_1000_ticks,
    )  # fmt: skip
    pooled = [simulate(scenario, spec.window)[0].region_series(r) for r in range(config.regions)]
    test = simulate(ScenarioSpec.model_validate(heldout["scenario"]), spec.window)[0]
    # One centralised run's AUPRC moves by about 0.05 with the seed alone: compare with the
    # mean over several seeds, and report their spread.
    central_auprcs = []
    for seed in size["central_seeds"]:
        central_train = spec.train.model_copy(
            update={
                "epochs": config.rounds * config.local_epochs,
                "steps_per_epoch": spec.train.steps_per_epoch * config.regions,
                "seed": seed,
            }
        )
        torch.manual_seed(seed)
        central = GraphSAGEDetector(spec)
        train_detector(central, pooled, central_train)
        central_metrics = ev.detection_metrics(score_series(central, test), ev.labels_of(test))
        central_auprcs.append(float(central_metrics["auprc"]))  # type: ignore[arg-type]
    central_auprc = float(np.mean(central_auprcs))
    fed_auprc = float(heldout["pretrained"]["auprc"])
    params = {
        "nodes": config.nodes,
        "regions": config.regions,
        "rounds": config.rounds,
        "strategy": config.strategy,
    }
    central_params = {
        **params,
        "centralised_seeds": list(size["central_seeds"]),
        "centralised_auprc_min": min(central_auprcs),
        "centralised_auprc_max": max(central_auprcs),
    }
    rows = [
        result("federated_auprc", fed_auprc, "auprc", central_params,
               baseline=("centralised_auprc_mean", central_auprc)),
        result("federated_auprc_gap", abs(fed_auprc - central_auprc), "auprc", central_params,
               target=("value", "<=", FEDERATED_GAP_TARGET)),
    ]  # fmt: skip
    for phase in ("full", "lora"):
        mine = [r for r in rounds if r["phase"] == phase]
        if not mine:
            continue
        p = {**params, "phase": phase, "rounds": len(mine)}
        rows += [
            result("round_wall_s", float(np.mean([r["round_s"] for r in mine])), "s", p),
            result("round_local_train_s", float(np.mean([r["local_train_s"] for r in mine])), "s", p),
            # Transport, serialisation, scheduling, aggregation of the training half of the round.
            result("round_federation_overhead_s", float(np.mean([r["overhead_s"] for r in mine])), "s", p),
            result("round_evaluation_s", float(np.mean([r["eval_s"] for r in mine])), "s", p),
        ]  # fmt: skip
    # Steady-state traffic: the last round of each phase (the first LoRA round also ships the base
    # weights once to every client; that one-time cost is reported separately).
    traffic = {ph: float([r["bytes_down"] + r["bytes_up"] for r in rounds if r["phase"] == ph][-1])
               for ph in ("full", "lora") if any(r["phase"] == ph for r in rounds)}  # fmt: skip
    lora_rounds = [r for r in rounds if r["phase"] == "lora"]
    if len(lora_rounds) > 1:
        first = lora_rounds[0]["bytes_down"] + lora_rounds[0]["bytes_up"]
        rows.append(result("lora_base_shipment_bytes", float(first - traffic["lora"]), "B", params))
    if "lora" in traffic:
        rows.append(result("lora_bytes_per_round", traffic["lora"], "B", params,
                           baseline=("full_model_bytes_per_round", traffic["full"]),
                           target=("ratio", "<=", LORA_BYTES_TARGET)))  # fmt: skip
    # Personalised = the region's own adapters in the federation's error scale (task.personalised),
    # scored on the training mesh after its window (what personalisation is for) and on the
    # held-out mesh's region of the same number (transfer to other nodes).
    for key, evaluation in (("regions_later", "training_mesh_later_ticks"), ("regions", "heldout_mesh")):
        for region, entry in sorted(heldout.get(key, {}).items()):
            if "personalised" in entry and "auprc" in entry["personalised"] and "auprc" in entry["global"]:
                rows.append(result("lora_personalised_auprc", entry["personalised"]["auprc"], "auprc",
                                   {**params, "region": int(region), "evaluation": evaluation},
                                   baseline=("global_model_auprc", entry["global"]["auprc"])))  # fmt: skip
    return rows


def _embedder(quick: bool, ray_address: str | None) -> list[dict[str, Any]]:
    """Federated LoRA fine-tuning of the RAG embedder: recall@3 on held-out incidents before and after.

    Each region's Flower ClientApp fine-tunes the shared adapters on its own (incident,
    runbook) pairs; the ServerApp screens the updates and averages them by pair count
    (FedAvg) after every round, and only adapters travel (``federated.embedder``).
    """
    from x0tta6bl4.corpus import load_incidents, load_runbooks
    from x0tta6bl4.federated.embedder import EmbedderFederation, federate_embedder
    from x0tta6bl4.models.embedder import EmbedderLoRA, retrieval_recall_at_k

    runbooks = load_runbooks()
    test = load_incidents("test")
    regions = sorted({i.region for i in load_incidents("train")})
    rounds = 1 if quick else 2
    if quick:
        test = test[:40]
    embedder = EmbedderLoRA()
    before = retrieval_recall_at_k(embedder.encode, test, runbooks)
    started = time.perf_counter()
    fed = EmbedderFederation(
        regions=tuple(regions[:2] if quick else regions), rounds=rounds, max_pairs=16 if quick else None
    )
    state, fed_rounds = federate_embedder(fed, embedder.adapter_state(), ray_address=ray_address)
    took = time.perf_counter() - started
    _log(f"embedder: {rounds} Flower round(s) over {len(fed.regions)} regions ({took:.0f} s)")
    embedder.load_adapter_state(state)
    after = retrieval_recall_at_k(embedder.encode, test, runbooks)
    params = {
        "held_out_incidents": len(test),
        "regions": len(fed.regions),
        "rounds": rounds,
        "k": 3,
        "rejected_updates": sum(r["rejected"] for r in fed_rounds),
    }
    adapter_bytes = float(sum(v.nbytes for v in state.values()))
    return [
        result(
            "embedder_recall_at_3",
            after["recall_at_k"],
            "recall",
            params,
            baseline=("embedder_recall_at_3_before_lora", before["recall_at_k"]),
        ),
        result(
            "embedder_mrr", after["mrr"], "mrr", params, baseline=("embedder_mrr_before_lora", before["mrr"])
        ),
        result(
            "embedder_lora_bytes_per_round",
            adapter_bytes,
            "B",
            params,
            baseline=("embedder_full_bytes_per_round", float(embedder.num_full_bytes())),
        ),
    ]
