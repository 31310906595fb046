"""`x0tta6bl4 run` on a real multi-node Ray cluster started with `ray start` on this machine: shards
spread over the nodes and survive losing a worker; the head's GCS restarts from Redis mid-run."""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import BIN, REPO, clean_env
from tests.e2e.raynodes import RayNodes, free_port, restart_process, start_redis

pytestmark = [pytest.mark.slow, pytest.mark.ray]

#: The GCS declares a killed node dead after ~3 s instead of Ray's default ~30 s (test speed only).
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@dataclasses.dataclass
class Cluster:
    """The module's Ray cluster: its nodes (the head, and the workers a test adds), their root directory,
    and whether its GCS keeps its tables in Redis (Debian's redis-server; None when not installed)."""

    nodes: RayNodes
    root: Path
    redis_port: int | None


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One `ray start` head for the module's tests: its GCS on Redis when redis-server is installed.

    Each test's run gets its own run id and registry; a worker node is the test's own (started and
    killed inside it), so the tests do not depend on each other's order.
    """
    root = Path(tempfile.mkdtemp(prefix="x0mn-"))  # short (Ray's socket paths must fit): no pytest tmp_path
    redis = None
    extra_env = dict(FAST_NODE_DEATH)
    try:
        redis_port = None
        if shutil.which("redis-server") is not None:
            redis, redis_port = start_redis(root / "redis")
            extra_env.update(
                RAY_REDIS_ADDRESS=f"127.0.0.1:{redis_port}",
                RAY_external_storage_namespace=f"x0mn-{secrets.token_hex(4)}",
            )
        nodes = RayNodes(root, clean_env())
        try:
            nodes.start_head(num_cpus=2, resources={"head": 1}, extra_env=extra_env)
            yield Cluster(nodes, root, redis_port)
        finally:
            nodes.close()
    finally:
        if redis is not None:
            redis.kill()
            redis.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


#: A small run, paced so that it is still running when a node or the GCS is killed.
_SMALL = ("--nodes", "400", "--tick-interval-s", "0.05", "--json")


def _free_serve_ports() -> list[str]:
    return ["--serve-port", str(free_port()), "--front-port", str(free_port())]


def _start_run(nodes: RayNodes, root: Path, run_id: str, args: list[str]) -> subprocess.Popen[str]:
    """The run, started as a driver of the cluster. Its detector comes from the checkout's registry
    (models/registry, bootstrapped once for the suite's runs): training a fresh one is the shared
    small run's proof (tests/e2e/conftest.py), not these tests'."""
    env = {**nodes.env, "RAY_ADDRESS": str(nodes.address)}
    return subprocess.Popen(
        [str(BIN / "x0tta6bl4"), "run", "--state-dir", str(root / "shared"), "--run-id", run_id, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(
    proc: subprocess.Popen[str], run_dir: Path, tick: int, timeout_s: float, shards: int = 1
) -> None:
    """Until ``shards`` shards have written their checkpoints after ``tick`` (the run is that far).

    Shards write their checkpoints on their own, so one shard's being there says nothing of another's.
    """
    deadline = time.monotonic() + timeout_s
    while len(list((run_dir / "checkpoints").glob(f"region-*-t{tick:08d}.ckpt"))) < shards:
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"no checkpoint of tick {tick} within {timeout_s} s"
        time.sleep(0.1)


def test_shards_spread_over_two_nodes_and_the_workers_shards_resume_on_the_head_from_checkpoints(cluster):
    nodes, root = cluster.nodes, cluster.root
    nodes.start_worker("worker", num_cpus=0, resources={"worker": 1})
    run = _start_run(
        nodes,
        root,
        "two-nodes",
        [*_SMALL, "--regions", "4", "--ticks", "200", "--faults-per-1000-ticks", "0", "--no-autonomy"],
    )
    try:
        run_dir = root / "shared" / "runs" / "two-nodes"
        _wait_for_checkpoint(run, run_dir, 39, timeout_s=120, shards=4)
        assert nodes.kill("worker"), "the worker node had no processes to kill"
        _out, err = run.communicate(timeout=150)
    finally:
        nodes.kill("worker")
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "completed" and len(report["timeline"]) == 200
    recovery = report["recovery"]
    shards = recovery["shards"]
    started_on = {s["started_on"] for s in shards}
    (head,) = {s["ended_on"] for s in shards}
    assert recovery["shard_nodes_at_start"] == 2 and len(started_on) == 2 and head in started_on
    moved = [s for s in shards if s["started_on"] != head]
    assert [s["region"] for s in moved] in ([0, 2], [1, 3])  # round-robin over the two nodes
    for shard in moved:  # restarted by Ray on the head, from a checkpoint the worker wrote
        assert shard["moved"] and shard["restarted"] and shard["resumed_from_checkpoint_tick"] >= 39
    for shard in shards:
        if shard not in moved:
            assert not shard["restarted"] and shard["resumed_from_checkpoint_tick"] is None
    assert recovery["shards_moved"] == 2 and recovery["shard_restarts"] >= 2
    # One EbpfSource per node: the head's kept measuring, the worker's is reported gone and why.
    by_node = {h.get("ray_node_id"): h for h in report["hosts"]}
    assert by_node[head]["source"] in ("ebpf", "procfs")
    (lost,) = [h for h in report["hosts"] if h["source"] == "unavailable"]
    assert "ActorUnschedulableError" in lost["error"]
    # Checkpoints, the action journal and the report live under the shared state_dir.
    assert report["config"]["state_dir"] == str(root / "shared")
    assert len(list((run_dir / "checkpoints").glob("region-*.ckpt"))) == 4 * 2  # the last two each
    # Each node ran the driver's package and bpf/ programs, shipped in the job's runtime_env.
    for node in ("head", "worker"):
        unpacked = root / node / "session_latest" / "runtime_resources" / "py_modules_files"
        assert list(unpacked.glob("_ray_pkg_*/x0tta6bl4/mesh/shard.py")), node
        assert list(unpacked.glob("_ray_pkg_*/bpf/*.c")), node
    # The actors' warnings reach the driver's output (what `ray job logs` shows).
    resumed = [line for line in err.splitlines() if "restarted; resumed from its checkpoint" in line]
    assert len(resumed) == 2 and all("(MeshShardActor pid=" in line for line in resumed), err[-3000:]


def test_the_gcs_restarts_from_redis_mid_run_and_detached_actors_and_serve_keep_their_state(cluster):
    if cluster.redis_port is None:
        pytest.skip("redis-server is missing: apt-get install -y redis-server (scripts/setup.sh does)")
    nodes, root = cluster.nodes, cluster.root
    run = _start_run(
        nodes,
        root,
        "gcs-ft",
        [*_SMALL, "--regions", "3", "--ticks", "120", "--no-ebpf", "--keep-mesh", *_free_serve_ports()],
    )
    try:
        run_dir = root / "shared" / "runs" / "gcs-ft"
        _wait_for_checkpoint(run, run_dir, 29, timeout_s=240)
        gcs = nodes.process("head", "gcs_server")
        restarted = restart_process(gcs, root / "gcs-restarted.log")
        _out, err = run.communicate(timeout=240)
        assert run.returncode == 0, err[-3000:]
        # Ask the restarted GCS (its tables reloaded from Redis) for the run's detached actors.
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE],
            cwd=REPO,
            env={**nodes.env, "RAY_ADDRESS": str(nodes.address)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert nodes.process("head", "gcs_server") == restarted.pid != gcs
    finally:
        if run.poll() is None:
            run.kill()
    assert probe.returncode == 0, probe.stderr[-3000:]
    state = json.loads(probe.stdout.strip().splitlines()[-1])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "completed" and len(report["timeline"]) == 120
    recovery = report["recovery"]
    # Nothing restarted: the same shard processes and controller ran through the GCS restart.
    assert recovery["shard_restarts"] == 0 and recovery["controller_failures"] == 0
    assert not any(s["restarted"] for s in recovery["shards"])
    assert report["remediation"]["analyses"] >= 50  # the controller analysed throughout
    assert [s["tick"] for s in state["shards"]] == [119, 119, 119]
    assert [s["restored_tick"] for s in state["shards"]] == [None, None, None]
    assert state["controller"]["run_id"] == "gcs-ft" and state["controller"]["tick"] >= 110
    assert state["controller"]["restored_tick"] is None and state["serve"] == "RUNNING"


#: Run in a fresh driver after the run: the named actors' state and the Serve app's status.
_PROBE = """
import json, ray
from ray import serve
from x0tta6bl4 import RAY_NAMESPACE
from x0tta6bl4.connect import connect_ray
connect_ray()
shards = [ray.get(ray.get_actor(f"mesh-shard-{r}", namespace=RAY_NAMESPACE).status.remote()) for r in range(3)]
controller = ray.get(ray.get_actor("mapek-controller", namespace=RAY_NAMESPACE).status.remote())
app = serve.status().applications["x0tta6bl4"].status
print(json.dumps({"shards": shards, "controller": controller, "serve": str(getattr(app, "value", app))}))
"""
