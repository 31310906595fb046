"""The autonomy suite's controller rate: steps/s through shard actors, the controller actor and Serve."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from x0tta6bl4.bench._report import result
from x0tta6bl4.connect import free_local_port

#: nodes, measured ticks, warm-up ticks of the controller throughput run.
THROUGHPUT = (10_000, 40, 8)
QUICK_THROUGHPUT = (1_000, 10, 3)
#: Shard actors (regions) of the throughput run; quick: fewer worker processes to start on two cores.
THROUGHPUT_REGIONS = 8
QUICK_THROUGHPUT_REGIONS = 2


def controller_rate_results(
    quick: bool, before_timing: Callable[[], Any] | None = None
) -> list[dict[str, Any]]:
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
    rates = f"controller {ctl_rate:.1f} ticks/s at {nodes} nodes (mesh alone {mesh_rate:.1f} ticks/s)"
    print(f"bench autonomy: {rates}", file=sys.stderr, flush=True)
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
