"""MeshShard actors on a local Ray: named, detached, identical to the in-process kernel, and crash-safe."""

import contextlib
import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest

from x0tta6bl4 import RAY_NAMESPACE
from x0tta6bl4.mesh.faults import Action, random_schedule
from x0tta6bl4.mesh.pipeline import LocalMesh, ShardedMesh
from x0tta6bl4.mesh.shard import MeshSpec, checkpoint_file, shard_name
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
        frames.append(mesh.frame(mesh.step(actions.get(mesh.tick + 1, ()))))
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
        shards = {
            a.name: a
            for a in list_actors(
                address=ray_local.get_runtime_context().gcs_address,
                filters=[("state", "=", "ALIVE")],
                detail=True,
            )
            if a.name
        }
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
            _wait_for_checkpoint(tmp_path, 2, 19)
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
    journal = (tmp_path / "actions.jsonl").read_text().splitlines()  # the driver's, one for all shards
    assert len(journal) == 1 and '"restart_node"' in journal[0]


def _wait_for_checkpoint(directory, region, tick, timeout_s=60):
    """Until ``region``'s checkpoint of ``tick`` is on disk: a shard writes them on a thread of its own."""
    deadline = time.monotonic() + timeout_s
    while not checkpoint_file(directory, region, tick).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _kill(pid):
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=30)


def _restarted(mesh, region, old_pid, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            status = mesh.status()[region]
            if status["pid"] != old_pid:
                return status
        time.sleep(0.2)
    raise AssertionError(f"shard {region} did not restart")


def test_shards_restarted_between_ticks_and_again_while_being_recovered_are_recovered(
    ray_local, tmp_path, reference
):
    topology = TOPO.build()
    spec = _spec(tmp_path, topology)
    mesh = ShardedMesh(topology, spec)
    second_kill: dict[str, int] = {}
    killers: list[threading.Thread] = []

    def kill_between_ticks(t):
        if t == 25:  # shard 1 dies and Ray restarts it at its tick-19 checkpoint before tick 25 is sent
            _wait_for_checkpoint(tmp_path, 1, 19)
            pid = mesh.status()[1]["pid"]
            _kill(pid)
            assert _restarted(mesh, 1, pid)["restored_tick"] == 19
        if t == 32:  # shard 3 dies, and its next incarnation dies once the driver is recovering it
            pid = mesh.status()[3]["pid"]
            recoveries = mesh.restarts
            _kill(pid)

            def again():
                deadline = time.monotonic() + 60
                while mesh.restarts == recoveries and time.monotonic() < deadline:
                    time.sleep(0.01)
                reborn = _restarted(mesh, 3, pid)["pid"]
                _kill(reborn)
                second_kill["pid"] = reborn

            killers.append(threading.Thread(target=again, daemon=True))
            killers[-1].start()

    try:
        frames = _run(mesh, _actions(spec), on_tick=kill_between_ticks)
        for killer in killers:
            killer.join(timeout=90)
        # The second kill can land as the run ends: wait for that incarnation's successor to answer.
        after = _restarted(mesh, 3, second_kill["pid"])["pid"] if "pid" in second_kill else None
    finally:
        mesh.close()
    assert "pid" in second_kill and after != second_kill["pid"]  # three incarnations of shard 3
    # Each death is met by a recovery, unless the second lands before the driver's status call
    # returns, when one recovery waits out both.
    assert mesh.restarts >= 2
    for ref, got in zip(reference, frames, strict=True):
        assert np.array_equal(ref.features, got.features)


def test_a_run_whose_driver_died_resumes_from_the_common_checkpoint_bit_for_bit(
    ray_local, tmp_path, reference
):
    topology = TOPO.build()
    spec = _spec(tmp_path, topology)
    actions = _actions(spec)
    first = ShardedMesh(topology, spec, keep_actors=True)
    _run(first, actions, ticks=27)  # the driver "dies" here: its shards live on at tick 26
    for region in range(topology.num_regions):  # each shard's tick-19 checkpoint, written on its own thread
        _wait_for_checkpoint(tmp_path, region, 19)
    del first
    resumed = ShardedMesh(topology, spec, resume=True)
    try:
        assert resumed.resumed_from == 19 and resumed.tick == 19
        journal = resumed.journal.entries
        frames = _run(resumed, {t: journal.get(t, a) for t, a in actions.items()}, ticks=TICKS - 20)
    finally:
        resumed.close()
    for ref, got in zip(reference[20:], frames, strict=True):
        assert np.array_equal(ref.features, got.features)
