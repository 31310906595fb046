"""Mesh suite: node-ticks/s of the sharded actor pipeline against the same kernel in one process.

The pipeline's shards keep their frames for consumers to pull (as the detector and
federated clients do); ``pipeline_fetch_node_ticks_per_s`` also brings every frame into
the driver each tick.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from typing import Any

import psutil

from x0tta6bl4.bench._report import result
from x0tta6bl4.mesh.faults import random_schedule
from x0tta6bl4.mesh.pipeline import LocalMesh, Mesh, ShardedMesh
from x0tta6bl4.mesh.shard import MeshSpec
from x0tta6bl4.mesh.topology import TopologySpec

REGIONS = 8
#: nodes -> (measured ticks, warm-up ticks); the warm-up builds routing and caches.
SIZES = {1_000: (300, 10), 10_000: (200, 10), 100_000: (20, 3)}
QUICK_SIZES = {500: (40, 5), 2_000: (30, 5)}
#: Quick: fewer shard actors, so fewer worker processes to start on a two-core machine.
QUICK_REGIONS = 4
#: Targets from the foundation issue: pipeline ticks/s and node-ticks/s ratio.
TICK_TARGETS = {10_000: 20.0, 100_000: 1.0}
RATIO_TARGET_NODES = 10_000
MEMORY_LIMIT_BYTES = 4 * 2**30


class _PeakRss:
    """Samples the summed RSS of this process and the given pids until stopped."""

    def __init__(self, pids: list[int] | None = None, every_s: float = 0.05) -> None:
        self.pids = pids or []
        self.peak = 0
        self._stop = threading.Event()
        self._every = every_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = psutil.Process().memory_info().rss
        for pid in self.pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += psutil.Process(pid).memory_info().rss
        return int(total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self._every)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(self.peak, self._sample())
        self._stop.set()
        self._thread.join()


def _spec(nodes: int, regions: int, ticks: int, checkpoint_dir: str | None) -> MeshSpec:
    topo = TopologySpec(nodes, regions, seed=1)
    faults = tuple(random_schedule(topo.build(), ticks, seed=1))
    return MeshSpec(topology=topo, seed=1, faults=faults, checkpoint_dir=checkpoint_dir)


def _rate(mesh: Mesh, ticks: int, warmup: int) -> float:
    for _ in range(warmup):
        mesh.step()
    start = time.perf_counter()
    for _ in range(ticks):
        mesh.step()
    return ticks / (time.perf_counter() - start)


def _log(msg: str) -> None:
    print(f"[bench mesh] {msg}", file=sys.stderr, flush=True)


def results(quick: bool = False) -> list[dict[str, Any]]:
    """Measure every size: kernel in process, then the sharded pipeline, on the same spec."""
    from x0tta6bl4.connect import connect_ray, disconnect_ray

    rows: list[dict[str, Any]] = []
    regions = QUICK_REGIONS if quick else REGIONS
    conn = connect_ray(num_cpus=os.cpu_count(), dashboard=False)
    try:
        for nodes, (ticks, warmup) in (QUICK_SIZES if quick else SIZES).items():
            params = {"nodes": nodes, "regions": regions}
            spec = _spec(nodes, regions, ticks + warmup, None)
            topology = spec.topology.build()
            with _PeakRss() as kernel_mem:
                local = LocalMesh(topology, spec)
                kernel_tps = _rate(local, ticks, warmup)
                local.close()
            del local
            _log(f"{nodes} nodes: kernel {kernel_tps:.1f} ticks/s")
            with tempfile.TemporaryDirectory(prefix="x0tta6bl4-bench-") as ckpt:
                sharded = ShardedMesh(topology, _spec(nodes, regions, ticks + warmup, ckpt))
                pids = [s["pid"] for s in sharded.status()]
                with _PeakRss(pids) as pipeline_mem:
                    pipeline_tps = _rate(sharded, ticks, warmup)
                sharded.close()
            with tempfile.TemporaryDirectory(prefix="x0tta6bl4-bench-") as ckpt:
                sharded = ShardedMesh(
                    topology, _spec(nodes, regions, ticks + warmup, ckpt), fetch_frames=True
                )
                fetch_tps = _rate(sharded, ticks, warmup)
                sharded.close()
            _log(f"{nodes} nodes: pipeline {pipeline_tps:.1f} ticks/s, fetching every frame {fetch_tps:.1f}")
            kernel_rate = kernel_tps * nodes
            rows.append(result("kernel_node_ticks_per_s", kernel_rate, "node-ticks/s", params))
            rows.append(
                result(
                    "pipeline_node_ticks_per_s",
                    pipeline_tps * nodes,
                    "node-ticks/s",
                    params,
                    baseline=("kernel_node_ticks_per_s", kernel_rate),
                    target=("ratio", ">=", 0.5) if nodes == RATIO_TARGET_NODES else None,
                )
            )
            rows.append(
                result(
                    "pipeline_fetch_node_ticks_per_s",
                    fetch_tps * nodes,
                    "node-ticks/s",
                    {**params, "frames": "every frame fetched into the driver"},
                    baseline=("kernel_node_ticks_per_s", kernel_rate),
                )
            )
            target = TICK_TARGETS.get(nodes)
            rows.append(
                result(
                    "pipeline_ticks_per_s",
                    pipeline_tps,
                    "ticks/s",
                    params,
                    target=("value", ">=", target) if target is not None else None,
                )
            )
            if nodes == max(SIZES) or (quick and nodes == max(QUICK_SIZES)):
                rows.append(
                    result(
                        "peak_memory_bytes",
                        pipeline_mem.peak,
                        "bytes",
                        {**params, "measured": "driver + shard actor processes, RSS"},
                        baseline=("kernel_peak_memory_bytes", kernel_mem.peak),
                        target=("value", "<=", MEMORY_LIMIT_BYTES),
                    )
                )
    finally:
        disconnect_ray(conn)
    return rows
