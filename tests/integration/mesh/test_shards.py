"""MeshShard actors on a local Ray: named, detached, identical to the in-process kernel, and crash-safe."""

import contextlib
import os
import signal

import numpy as np
import psutil
import pytest

from x0tta6bl4 import RAY_NAMESPACE
from x0tta6bl4.mesh.faults import Action, random_schedule
from x0tta6bl4.mesh.pipeline import LocalMesh, ShardedMesh
from x0tta6bl4.mesh.shard import MeshSpec, shard_name
from x0tta6bl4.mesh.topology import TopologySpec

pytestmark = pytest.mark.ray

TOPO = TopologySpec(1200, 4, seed=11)
TICKS = 40


def _spec(tmp_path, topology):
    faults = tuple(random_schedule(topology, TICKS, 11, faults_per_1000_ticks=150))
    return MeshSpec(
        topology=TOPO, seed=11, faults=faults, checkpoint_dir=str(tmp_path), checkpoint_every_ticks=10
    )


def _actions(spec):
    first = spec.faults[0]
    return {first.start_tick + 2: (Action("restart_node", first.node),)}


def _run(mesh, actions, ticks=TICKS, on_tick=None):
    frames = []
    for t in range(ticks):
        if on_tick is not None:
            on_tick(t)
        frames.append(mesh.frame(mesh.step(actions.get(t, ()))))
    return frames


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    topology = TOPO.build()
    spec = _spec(tmp_path_factory.mktemp("local"), topology)
    return _run(LocalMesh(topology, spec), _actions(spec))


def test_shards_are_named_detached_actors_in_the_platform_namespace(ray_local, tmp_path):
    from ray.util.state import list_actors

    topology = TOPO.build()
    mesh = ShardedMesh(topology, _spec(tmp_path, topology))
    try:
        mesh.step()
        for r in range(topology.num_regions):
            handle = ray_local.get_actor(shard_name(r), namespace=RAY_NAMESPACE)
            assert ray_local.get(handle.status.remote())["region"] == r
        # What the dashboard shows: every shard alive, named, detached, in our namespace.
        shards = {a.name: a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True) if a.name}
        for r in range(topology.num_regions):
            actor = shards[shard_name(r)]
            assert actor.ray_namespace == RAY_NAMESPACE
            assert actor.is_detached
    finally:
        mesh.close()


def test_sharded_frames_equal_the_in_process_kernel_bit_for_bit(ray_local, tmp_path, reference):
    topology = TOPO.build()
    spec = _spec(tmp_path, topology)
    mesh = ShardedMesh(topology, spec)
    try:
        frames = _run(mesh, _actions(spec))
    finally:
        mesh.close()
    for ref, got in zip(reference, frames, strict=True):
        assert np.array_equal(ref.features, got.features)
        assert np.array_equal(ref.labels, got.labels)
        assert np.array_equal(ref.node_ids, got.node_ids)
    assert any(f.labels.any() for f in frames)  # faults really happened


def test_a_killed_shard_restarts_from_its_checkpoint_and_the_run_is_unchanged(ray_local, tmp_path, reference):
    topology = TOPO.build()
    spec = _spec(tmp_path, topology)
    mesh = ShardedMesh(topology, spec)
    killed = {}

    def kill_mid_run(t):
        if t == 25:
            status = mesh.status()[2]
            killed["pid"] = status["pid"]
            os.kill(status["pid"], signal.SIGKILL)
            with contextlib.suppress(psutil.NoSuchProcess):  # gone before the next step is sent
                psutil.Process(status["pid"]).wait(timeout=30)

    try:
        frames = _run(mesh, _actions(spec), on_tick=kill_mid_run)
        after = mesh.status()[2]
    finally:
        mesh.close()
    assert mesh.restarts == 1
    assert after["pid"] != killed["pid"]
    assert after["restored_tick"] == 19  # the checkpoint written after tick 19 (every 10 ticks)
    for ref, got in zip(reference, frames, strict=True):
        assert np.array_equal(ref.features, got.features)
    journal = (tmp_path / "region-0.journal.jsonl").read_text().splitlines()
    assert journal and '"restart_node"' in journal[0]
