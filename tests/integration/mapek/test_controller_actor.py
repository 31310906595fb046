"""The MapeKController actor on a local Ray with the Serve apps: it closes the loop, survives being
killed, and keeps its last thresholds when Serve goes away."""

from __future__ import annotations

import os
import signal
import time

import pytest

from x0tta6bl4.mapek.config import ControllerConfig

pytestmark = pytest.mark.ray


def _step_until_alive(ray, controller, tick, timeout_s=90.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(controller.step.remote(tick, 0.0), timeout=60)
        except ray.exceptions.RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_controller_heals_survives_a_kill_and_rides_out_a_serve_outage(ray_local, apps, tmp_path):
    """Uses the package's Serve deployment (``apps``) and deploys it a second time on purpose: the
    outage is the application deleted, and the controller must analyse again once it is back."""
    ray = ray_local
    from ray import serve

    from x0tta6bl4.autonomy.config import RunConfig
    from x0tta6bl4.autonomy.job import plan_run
    from x0tta6bl4.mapek.controller import CONTROLLER_NAME, start_controller
    from x0tta6bl4.mesh.control import ControlParams
    from x0tta6bl4.mesh.pipeline import ShardedMesh
    from x0tta6bl4.mesh.shard import MeshSpec
    from x0tta6bl4.serve.app import build_app

    serve_config, _ = apps
    plan = plan_run(
        RunConfig(
            nodes=300,
            regions=3,
            ticks=80,
            seed=4,
            ebpf=False,
            runs_dir=tmp_path,
            run_id="ctl",
            faults_per_1000_ticks=0,
            faults=[
                {"type": "cpu_exhaustion", "node": 40, "start_tick": 30, "duration_ticks": 45},
                {"type": "node_crash", "node": 210, "start_tick": 32, "duration_ticks": 45},
            ],
        )
    )
    spec = MeshSpec(
        plan.topology_spec, 4, plan.faults, ControlParams(), checkpoint_dir=str(tmp_path / "ckpt")
    )
    mesh = ShardedMesh(plan.topology, spec)
    knowledge = str(tmp_path / "knowledge.sqlite")
    controller = start_controller(
        "ctl",
        plan.topology_spec,
        [],
        ControllerConfig(
            knowledge_path=knowledge, checkpoint_every_ticks=5, push_every_ticks=10**6
        ),  # pushes: the e2e test
        serve_config.model_dump(mode="json"),
    )
    try:
        actions = ()
        for _ in range(25):
            result = mesh.step(actions)
            step = _step_until_alive(ray, controller, result.tick)
            actions = step.actions
        before = ray.get(controller.status.remote())
        assert before["tick"] == 24 and before["restored_tick"] is None
        # The dashboard's view: the controller and the shards are named actors in Ray's state API.
        from ray.util.state import list_actors

        names = {
            a.name
            for a in list_actors(
                address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")]
            )
        }
        assert {CONTROLLER_NAME, "mesh-shard-0", "mesh-shard-2"} <= names

        os.kill(before["pid"], signal.SIGKILL)  # Ray restarts it (max_restarts=-1)
        for _ in range(50):
            result = mesh.step(actions)
            step = _step_until_alive(ray, controller, result.tick)
            actions = step.actions
        after = ray.get(controller.status.remote())
        assert after["pid"] != before["pid"]
        assert after["restored_tick"] == 20  # resumed from the last checkpoint in SQLite, not from scratch
        assert after["tick"] == 74

        faults = {s.fault.kind: s for s in mesh.control.faults}
        assert (
            faults["node_crash"].remediated_by == "restart_node"
        )  # detected, planned from runbooks, applied
        incidents = ray.get(controller.incidents.remote())
        assert any(a["outcome"] == "success" for i in incidents for a in i["attempts"])

        # Serve goes away: the controller reports it, acts on nothing and keeps its thresholds.
        serve.delete(serve_config.app_name)
        outages = []
        for _ in range(2):  # a HEALTHY mesh is analysed every other tick
            result = mesh.step(actions)
            outages.append(_step_until_alive(ray, controller, result.tick))
            actions = ()
        assert any(o.errors for o in outages)
        assert not any(o.actions or o.analysed for o in outages)
        serve.run(build_app(serve_config), name=serve_config.app_name, route_prefix="/")
        result = mesh.step(())
        back = _step_until_alive(ray, controller, result.tick)
        assert back.analysed and not back.errors
    finally:
        ray.kill(controller)
        mesh.close()
