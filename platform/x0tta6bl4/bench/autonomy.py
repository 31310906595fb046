"""Autonomy suite: seeded fault scenarios run three ways (no remediation, static, learning) and the
controller's tick rate on a 10,000-node mesh through Serve.

The scenario runs put the mesh kernel, the detector and the retriever in this process
(:class:`~x0tta6bl4.mapek.clients.LocalScorer`, ``LocalRunbooks``), with the same controller
code the actor runs, so thirty runs fit in minutes and differ only in the controller's mode.
Each mode keeps one knowledge store and one runbook corpus across the scenarios, in order, as
a deployment would. ``controller_ticks_per_s`` goes through the real path: shard actors, the
detached controller actor, and the anomaly and RAG apps on Ray Serve.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from x0tta6bl4.bench._report import result
from x0tta6bl4.connect import free_local_port

MODES = ("no_remediation", "static", "learning")
#: (seeds, nodes, ticks) of the scenarios; each schedule cycles through every fault type.
#: A scenario evaluates about ten faults, so one seed's F1 moves by 0.1 with the draw
#: alone: ten seeds keep the mean's standard error near 0.02.
SCENARIOS = (tuple(range(101, 111)), 1000, 300)
QUICK_SCENARIOS = ((101, 102), 400, 120)
#: nodes, measured ticks, warm-up ticks of the controller throughput run.
THROUGHPUT = (10_000, 40, 8)
QUICK_THROUGHPUT = (1_000, 10, 3)
#: Shard actors (regions) of the throughput run; quick: fewer worker processes to start on two cores.
THROUGHPUT_REGIONS = 8
QUICK_THROUGHPUT_REGIONS = 2


def _log(msg: str) -> None:
    print(f"bench autonomy: {msg}", file=sys.stderr, flush=True)


def run_scenario(
    seed: int,
    nodes: int,
    ticks: int,
    mode: str,
    scorer: Any,
    runbooks: Any,
    knowledge_path: str,
) -> dict[str, Any]:
    """One seeded scenario under one controller mode, in process; its evaluation."""
    from x0tta6bl4.autonomy.config import RunConfig
    from x0tta6bl4.autonomy.job import plan_run
    from x0tta6bl4.mapek.config import ControllerConfig
    from x0tta6bl4.mapek.controller import mesh_view
    from x0tta6bl4.mapek.core import ControllerCore
    from x0tta6bl4.mapek.evaluate import AlarmLedger, evaluate
    from x0tta6bl4.mapek.knowledge import KnowledgeStore
    from x0tta6bl4.mesh.control import ControlParams
    from x0tta6bl4.mesh.pipeline import LocalMesh
    from x0tta6bl4.mesh.shard import MeshSpec

    plan = plan_run(RunConfig(nodes=nodes, regions=4, ticks=ticks, seed=seed, ebpf=False, in_process=True))
    mesh = LocalMesh(plan.topology, MeshSpec(plan.topology_spec, seed, plan.faults, ControlParams()))
    config = ControllerConfig(mode=mode, knowledge_path=knowledge_path, stream_id=f"s{seed}-{mode}")  # type: ignore[arg-type]
    core = ControllerCore(
        mesh_view(plan.topology, 0),
        config,
        scorer,
        runbooks,
        KnowledgeStore(knowledge_path),
        f"bench-s{seed}-{mode}",
    )
    ledger = AlarmLedger(core.adjacency, config.correlation_hops)
    actions: tuple[Any, ...] = ()
    serviceable = []
    started = time.perf_counter()
    for _ in range(ticks):
        res = mesh.step(actions)
        s = res.summary_dict()
        serviceable.append(s["serviceable"] / s["nodes"])
        step = core.step(res.tick, mesh.frame(res).features, 1.0 - serviceable[-1])
        actions = step.actions
        at_fault = [
            n for st in mesh.control.active_faults() for n in (st.fault.node, st.fault.peer) if n is not None
        ]
        ledger.add(step.alarmed, at_fault, nodes)
    out = evaluate(
        [st.to_dict() for st in mesh.control.faults], [i.to_dict() for i in core.incidents], ticks, ledger
    )
    out["availability"] = float(np.mean(serviceable))
    out["wall_s"] = time.perf_counter() - started
    out["actions"] = sum(len(i.attempts) for i in core.incidents)
    core.knowledge.close()
    return out


def _scenario_results(quick: bool, scorer: Any = None) -> list[dict[str, Any]]:
    """Every seed under every mode, in process (``scorer``: a LocalScorer already made, or None)."""
    from x0tta6bl4.mapek.clients import LocalRunbooks, LocalScorer
    from x0tta6bl4.models.embedder import load_embedder
    from x0tta6bl4.rag.config import RetrieverConfig

    seeds, nodes, ticks = QUICK_SCENARIOS if quick else SCENARIOS
    scorer = scorer or LocalScorer()
    figures: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in MODES}
    with tempfile.TemporaryDirectory(prefix="x0tta6bl4-bench-autonomy-") as tmp:
        # One embedder and one built store, copied for each mode (each mode's ingests stay its own).
        model = load_embedder(max_seq_length=RetrieverConfig().max_seq_length)
        built = Path(tmp) / "rag-built"
        LocalRunbooks(str(built), model=model)
        runbooks = {}
        for m in MODES:
            shutil.copytree(built, Path(tmp) / f"rag-{m}")
            runbooks[m] = LocalRunbooks(str(Path(tmp) / f"rag-{m}"), model=model)
        for seed in seeds:
            for mode in MODES:
                ev = run_scenario(
                    seed, nodes, ticks, mode, scorer, runbooks[mode], str(Path(tmp) / f"{mode}.sqlite")
                )
                figures[mode][seed] = ev
                _log(
                    f"seed {seed} {mode}: f1 {ev['f1']:.3f} (p {ev['precision']:.2f} r {ev['recall']:.2f}) "
                    f"mttd {ev['mttd_ticks']} mttr {ev['mttr_ticks']} false alarms "
                    f"{ev['false_alarms_per_1000_node_ticks']:.2f}/1000 node-ticks, first actions right "
                    f"{ev['first_action_success_ratio']} of {ev['faults_acted_on']}, {ev['wall_s']:.0f} s"
                )
    return scenario_rows(figures, seeds, {"nodes": nodes, "ticks": ticks, "regions": 4})


def scenario_rows(
    figures: dict[str, dict[int, dict[str, Any]]], seeds: tuple[int, ...], params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Result rows per seed and over all seeds from each mode's evaluations (``figures[mode][seed]``)."""
    rows: list[dict[str, Any]] = []
    for key in [*seeds, "all"]:
        p = {**params, "scenario": key if key == "all" else f"seed-{key}"}

        def fig(mode: str, name: str, key: Any = key) -> float:
            if key == "all":
                values = [v[name] for v in figures[mode].values() if v[name] is not None]
                return float(np.mean(values)) if values else float("nan")
            value = figures[mode][key][name]
            return float(value) if value is not None else float("nan")

        learn_f1, static_f1 = fig("learning", "f1"), fig("static", "f1")
        rows.append(result("f1", learn_f1, "f1", p, baseline=("static_thresholds_f1", static_f1)))
        rows.append(result("f1_gain", learn_f1 - static_f1, "f1", p, target=("value", ">=", 0.1)))
        rows.append(
            result(
                "mttr_ticks",
                fig("learning", "mttr_ticks"),
                "ticks",
                p,
                baseline=("no_remediation_mttr_ticks", fig("no_remediation", "mttr_ticks")),
                target=("ratio", "<=", 0.5),
            )
        )
        rows.append(
            result(
                "mttr_ticks_static",
                fig("static", "mttr_ticks"),
                "ticks",
                p,
                baseline=("no_remediation_mttr_ticks", fig("no_remediation", "mttr_ticks")),
            )
        )
        for mode in ("learning", "static"):  # the right fix first: a right root and a right plan
            rows.append(
                result(
                    "first_action_success_ratio",
                    fig(mode, "first_action_success_ratio"),
                    "share",
                    {**p, "mode": mode},
                    target=("value", ">=", 0.8),
                )
            )
        rows.append(result("mttd_ticks", fig("learning", "mttd_ticks"), "ticks", p))
        rows.append(
            result(
                "false_alarms_per_1000_node_ticks",
                fig("learning", "false_alarms_per_1000_node_ticks"),
                "alarms",
                p,
                baseline=(
                    "static_false_alarms_per_1000_node_ticks",
                    fig("static", "false_alarms_per_1000_node_ticks"),
                ),
                target=("value", "<=", 10.0),
            )
        )
        rows.append(
            result(
                "availability",
                fig("learning", "availability"),
                "share",
                p,
                baseline=("no_remediation_availability", fig("no_remediation", "availability")),
            )
        )
    return rows


def _throughput_results(quick: bool, before_timing: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
    """Controller steps/s on the real path, against the sharded mesh's own ticks/s in the same run.

    ``before_timing`` is called once everything is up, before the first tick.
    """
    import ray

    from x0tta6bl4.autonomy.config import RunConfig
    from x0tta6bl4.autonomy.job import plan_run
    from x0tta6bl4.autonomy.serving import deploy_serve
    from x0tta6bl4.connect import connect_ray, disconnect_ray
    from x0tta6bl4.mapek.config import ControllerConfig
    from x0tta6bl4.mapek.controller import start_controller
    from x0tta6bl4.mesh.control import ControlParams
    from x0tta6bl4.mesh.pipeline import ShardedMesh
    from x0tta6bl4.mesh.shard import MeshSpec

    nodes, ticks, warmup = QUICK_THROUGHPUT if quick else THROUGHPUT
    regions = QUICK_THROUGHPUT_REGIONS if quick else THROUGHPUT_REGIONS
    with tempfile.TemporaryDirectory(prefix="x0tta6bl4-bench-ctl-") as tmp:
        config = RunConfig(
            nodes=nodes,
            regions=regions,
            ticks=ticks + warmup,
            seed=5,
            ebpf=False,
            serve_port=free_local_port(),
            runs_dir=Path(tmp),
            run_id="throughput",
        )
        plan = plan_run(config)
        conn = connect_ray(dashboard=not quick)  # quick: the dashboard's start alone costs CPU-seconds
        try:
            spec = MeshSpec(
                plan.topology_spec,
                config.seed,
                plan.faults,
                ControlParams(),
                checkpoint_dir=str(Path(tmp) / "ckpt"),
            )
            mesh = ShardedMesh(plan.topology, spec)
            serve_config = deploy_serve(config)
            controller = start_controller(
                "throughput",
                plan.topology_spec,
                [],
                ControllerConfig(knowledge_path=str(Path(tmp) / "k.sqlite")),
                serve_config,
            )
            if before_timing is not None:
                before_timing()
            mesh_s, ctl_s = [], []
            actions: tuple[Any, ...] = ()
            for i in range(ticks + warmup):
                t0 = time.perf_counter()
                res = mesh.step(actions)
                t1 = time.perf_counter()
                step = ray.get(controller.step.remote(res.tick, 0.0))
                t2 = time.perf_counter()
                actions = step.actions
                if i >= warmup:
                    mesh_s.append(t1 - t0)
                    ctl_s.append(t2 - t1)
            mesh.close()
            ray.kill(controller)
            from ray import serve

            serve.delete(serve_config["app_name"])
        finally:
            disconnect_ray(conn)
    ctl_rate = 1.0 / float(np.mean(ctl_s))
    mesh_rate = 1.0 / float(np.mean(mesh_s))
    _log(f"controller {ctl_rate:.1f} ticks/s at {nodes} nodes (mesh alone {mesh_rate:.1f} ticks/s)")
    p = {"nodes": nodes, "regions": regions, "ticks": ticks}
    return [
        result(
            "controller_ticks_per_s",
            ctl_rate,
            "ticks/s",
            p,
            baseline=("mesh_pipeline_ticks_per_s", mesh_rate),
            target=("value", ">=", 5.0),
        ),
        result("controller_step_p95_ms", 1000.0 * float(np.quantile(ctl_s, 0.95)), "ms", p),
    ]


def results(quick: bool = False) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    if not quick:
        rows = _scenario_results(quick)
        rows += _throughput_results(quick)
        return rows
    # Quick: the scenarios (every figure counted in ticks, none in seconds) run in a thread while
    # Ray, the shards, Serve and the controller start; the timed ticks start once they are done.
    from concurrent.futures import ThreadPoolExecutor

    from x0tta6bl4.mapek.clients import LocalScorer

    scorer = LocalScorer()  # first: it bootstraps the registry Serve then loads, if it has no model
    with ThreadPoolExecutor(1) as pool:
        scenarios = pool.submit(_scenario_results, quick, scorer)
        throughput = _throughput_results(quick, before_timing=scenarios.result)
    return scenarios.result() + throughput
