"""Serve benchmark: anomaly and RAG endpoints vs a no-op ceiling fed the same bodies; hnswlib vs exact.

``--quick`` measures the same figures in shorter windows and overlaps what no figure measures: the
bootstrap detector trains, the RAG app's runbook store is built (its replica then only loads it)
and the hnswlib vectors are embedded while Ray and the apps start, all done before the first
measurement; one load process serves every load; the RAG cache is filled by concurrent requests.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from x0tta6bl4.bench._ceiling import Ceiling
from x0tta6bl4.bench._load import LoadProcess, run_load
from x0tta6bl4.bench._report import result
from x0tta6bl4.connect import connect_ray, disconnect_ray, free_local_port

log = logging.getLogger(__name__)

SNAPSHOT_NODES = 1000
CONCURRENCY = 32

#: A load run: :func:`run_load`'s signature (or :meth:`LoadProcess.run`).
Load = Callable[..., dict[str, Any]]


def _say(message: str) -> None:
    sys.stderr.write(f"bench serve: {message}\n")
    sys.stderr.flush()


def snapshot_bodies(nodes: int, count: int, seed: int = 11) -> tuple[list[bytes], list[bytes]]:
    """``count`` real 1-tick snapshots of a simulated mesh, as JSON and as npz bodies."""
    from x0tta6bl4.mesh.pipeline import LocalMesh
    from x0tta6bl4.mesh.shard import MeshSpec
    from x0tta6bl4.mesh.topology import TopologySpec
    from x0tta6bl4.serve.snapshot import encode_npz

    topo_spec = TopologySpec(nodes, 1, seed=seed)
    topology = topo_spec.build()
    mesh = LocalMesh(topology, MeshSpec(topo_spec, seed=seed))
    frames = [mesh.frame(mesh.step()) for _ in range(count)]
    mesh.close()
    pairs = topology.edges.astype(np.int64)
    json_bodies, npz_bodies = [], []
    for frame in frames:
        ids = [int(i) for i in frame.node_ids]
        values = np.round(frame.features.astype(np.float64), 6)
        json_bodies.append(
            json.dumps(
                {
                    "node_ids": ids,
                    "feature_names": list(frame.feature_names),
                    "features": values.tolist(),
                    "edges": pairs.tolist(),
                }
            ).encode()
        )
        npz_bodies.append(encode_npz(frame.node_ids, frame.feature_names, frame.features, pairs))
    return json_bodies, npz_bodies


def _query_texts(count: int, seed: int) -> list[str]:
    """Distinct incident-like texts (never repeated, so none is a cache hit)."""
    from x0tta6bl4.corpus import load_incidents

    incidents = [i.text for i in load_incidents()]
    rng = np.random.default_rng(seed)
    out = []
    for j in range(count):
        base = incidents[int(rng.integers(len(incidents)))]
        out.append(
            f"{base} [ticket {seed}-{j}, node {int(rng.integers(100000))}, "
            f"{int(rng.integers(1, 60))} min ago]"
        )
    return out


def _serve_results(quick: bool) -> list[dict[str, Any]]:
    from ray import serve

    from x0tta6bl4.models.registry import ModelRegistry
    from x0tta6bl4.serve.config import ServeConfig

    duration = 2.0 if quick else 15.0
    warmup = 0.5 if quick else 3.0
    nodes = 300 if quick else SNAPSHOT_NODES
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="x0-bench-serve-") as tmp:
        # quick: one load process for every run (it starts while Ray does)
        load_process = LoadProcess() if quick else None
        load: Load = load_process.run if load_process is not None else run_load
        registry = ModelRegistry(Path(tmp) / "registry")
        config = ServeConfig.model_validate(
            {
                "anomaly": {"registry": str(registry.uri), "bootstrap": False},
                "rag": {"retriever": {"data_dir": str(Path(tmp) / "rag")}},
            }
        )
        _say("training a bootstrap detector")
        if quick:  # in the background (its imports too), while Ray, Serve and the ceiling start
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-serve")
            trained = pool.submit(_bootstrap, registry, quick)
            # Then the runbook store (the replica waits on its lock, then loads it) and the vectors.
            built = pool.submit(_runbook_store, config)
            embedded = pool.submit(_hnsw_vectors, quick)
            pool.shutdown(wait=False)
        else:
            _bootstrap(registry, quick)
        port = free_local_port()
        conn = connect_ray(dashboard=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            _say("deploying the application and the ceiling")
            from x0tta6bl4.serve.app import build_app

            ceiling_app = Ceiling.bind()  # type: ignore[attr-defined]
            if quick:
                serve.run_many(
                    [serve.RunTarget(ceiling_app, name="ceiling", route_prefix="/ceiling")],
                    wait_for_ingress_deployment_creation=False,
                    wait_for_applications_running=False,
                )
                trained.result()
                serve.run(build_app(config), name="x0tta6bl4", route_prefix="/")
                _wait_running("ceiling")
            else:
                serve.run(build_app(config), name="x0tta6bl4", route_prefix="/")
                serve.run(ceiling_app, name="ceiling", route_prefix="/ceiling")
            base = f"http://127.0.0.1:{port}"
            json_bodies, npz_bodies = snapshot_bodies(nodes, 8)
            if quick:  # nothing runs beside the measurements
                built.result()
                embedded.result()
            common: dict[str, Any] = {"concurrency": CONCURRENCY, "duration_s": duration, "warmup_s": warmup}
            for media, bodies, label in (
                ("application/json", json_bodies, "json"),
                ("application/x-npz", npz_bodies, "npz"),
            ):
                # Ceiling and endpoint in ABBA order (quick: AB), so a drift of the machine's speed
                # weighs on both alike; each figure is the mean of its runs.
                order = ("ceiling", "endpoint") if quick else ("ceiling", "endpoint", "endpoint", "ceiling")
                _say(f"anomaly {label}: {', '.join(order)} ({duration:.0f} s each)")
                loads: dict[str, list[dict[str, Any]]] = {"ceiling": [], "endpoint": []}
                batches = snapshots = 0.0
                urls = {"ceiling": f"{base}/ceiling/score", "endpoint": f"{base}/v1/anomaly/score"}
                for which in order:
                    before = _scoring_batches(base)
                    loads[which].append(load(urls[which], bodies, content_type=media, **common))
                    after = _scoring_batches(base)  # the ceiling scores nothing: no change
                    batches += after[0] - before[0]
                    snapshots += after[1] - before[1]
                ceiling_rps = statistics.mean(r["requests_per_s"] for r in loads["ceiling"])
                served = {
                    key: statistics.mean(r[key] for r in loads["endpoint"])
                    for key in ("requests_per_s", "p50_ms", "p95_ms")
                }
                params = {
                    "nodes": nodes,
                    "encoding": label,
                    "concurrency": CONCURRENCY,
                    "body_bytes": len(bodies[0]),
                    "runs_each": len(loads["endpoint"]),
                }
                rows.append(
                    result(
                        "anomaly_requests_per_s",
                        served["requests_per_s"],
                        "requests/s",
                        params,
                        baseline=("noop_ceiling_requests_per_s", ceiling_rps),
                        target=("ratio", ">=", 0.7),
                    )
                )
                rows.append(result("anomaly_latency_p50_ms", served["p50_ms"], "ms", params))
                rows.append(result("anomaly_latency_p95_ms", served["p95_ms"], "ms", params))
                rows.append(
                    result(
                        "anomaly_mean_batch_size",
                        snapshots / batches if batches else float("nan"),
                        "snapshots/batch",
                        params,
                    )
                )
            rows.extend(_rag_rows(base, quick, common, load))
        finally:
            if load_process is not None:
                load_process.close()
            if not (quick and conn.started_here):  # quick: the Ray started here takes Serve down with it
                serve.shutdown()
            disconnect_ray(conn)
    return rows


def _bootstrap(registry: Any, quick: bool) -> None:
    """Train and promote the detector the app serves (``quick``: the small one)."""
    from x0tta6bl4.models.bootstrap import SMALL_BOOTSTRAP, bootstrap_detector

    bootstrap_detector(registry, SMALL_BOOTSTRAP if quick else None)


def _runbook_store(config: Any) -> None:
    """Build the RAG app's runbook store in its ``data_dir`` as its replica would (with one torch thread)."""
    import torch

    from x0tta6bl4.rag.config import RetrieverConfig
    from x0tta6bl4.rag.retriever import Retriever

    torch.set_num_threads(1)
    Retriever.open(RetrieverConfig.model_validate(config.resolved().rag.retriever))


def _wait_running(app_name: str, timeout_s: float = 300.0) -> None:
    """Wait until Serve app ``app_name`` runs.

    Raises:
        RuntimeError: it failed to deploy, or still is not running after ``timeout_s``.
    """
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(app_name)
        if app is not None and app.status == ApplicationStatus.RUNNING:
            return
        if app is not None and app.status in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
            raise RuntimeError(f"Serve app {app_name!r} is {app.status}: {app.message}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Serve app {app_name!r} is not running after {timeout_s:.0f} s")
        time.sleep(0.2)


def _scoring_batches(base: str) -> tuple[float, float]:
    """The detector replica's scoring passes and snapshots so far (``GET /v1/anomaly/model``)."""
    import requests

    batching = requests.get(f"{base}/v1/anomaly/model", timeout=30).json()["batching"]
    return float(batching["batches"]), float(batching["snapshots"])


def _embedding_rate(encoder: Any, texts: list[str], duration_s: float, chunk: int = 64) -> float:
    """Texts per second ``encoder`` embeds, ``chunk`` of ``texts`` at a time in turn, for ``duration_s``."""
    done = 0
    t0 = time.perf_counter()
    while True:
        start = done % len(texts)
        part = texts[start : start + chunk]
        encoder.encode(part)  # passes of encode_batch_size length-sorted texts
        done += len(part)
        elapsed = time.perf_counter() - t0
        if elapsed >= duration_s:
            return done / elapsed


def _rag_rows(base: str, quick: bool, common: dict[str, Any], load: Load) -> list[dict[str, Any]]:
    import requests

    from x0tta6bl4.models.embedder import load_embedder
    from x0tta6bl4.rag.config import RetrieverConfig
    from x0tta6bl4.rag.encoding import BatchEncoder
    from x0tta6bl4.serve.config import RagConfig

    n_unique = 400 if quick else 4000
    texts = _query_texts(n_unique, seed=int(time.time()) % 100000)
    uncached = [json.dumps({"query": t, "k": 3}).encode() for t in texts]
    import torch

    torch.set_num_threads(1)
    retriever_config = RetrieverConfig()
    model = load_embedder(max_seq_length=retriever_config.max_seq_length)
    # The replica's own embedding code, with its settings: the same largest forward pass.
    encoder = BatchEncoder(
        model,
        retriever_config.encode_batch_size,
        retriever_config.pass_overhead_tokens,
        retriever_config.unpadded_encoding,
    )
    batch_size = retriever_config.encode_batch_size
    sample = texts[: 64 if quick else 512]
    warm = sample[: 8 if quick else 32]  # first passes of both, outside the measured ones
    encoder.encode(warm)
    model.encode(warm, batch_size=batch_size)
    # In-process embedding and the served endpoint in ABBA order (quick: AB), so a drift of the
    # machine's speed weighs on both alike; each figure is the mean of its runs.
    order = ("in_process", "served") if quick else ("in_process", "served", "served", "in_process")
    _say(f"RAG uncached: {', '.join(order)}")
    window_s = common["duration_s"] + common["warmup_s"]  # what one served run lasts
    rates: list[float] = []
    library_rates: list[float] = []
    loads: list[dict[str, Any]] = []
    for which in order:
        if which == "in_process":
            # As long as a served window, on the same texts, so both see the same drift of the machine.
            rates.append(_embedding_rate(encoder, texts, window_s))
            t0 = time.perf_counter()
            model.encode(sample, batch_size=batch_size)  # the library's padded passes, sorted by length
            library_rates.append(len(sample) / (time.perf_counter() - t0))
        else:
            loads.append(load(f"{base}/v1/rag/query?cache=false", uncached, **common))
    del model, encoder
    embed_qps = statistics.mean(rates)
    served = {key: statistics.mean(r[key] for r in loads) for key in ("requests_per_s", "p95_ms")}
    rows = []
    rows.append(
        result(
            "rag_uncached_queries_per_s",
            served["requests_per_s"],
            "queries/s",
            {
                "concurrency": CONCURRENCY,
                "k": 3,
                "embed_threads": 1,
                "encode_batch_size": batch_size,
                "unpadded_encoding": retriever_config.unpadded_encoding,
                "compute_nice": RagConfig().compute_nice,
                "runs_each": len(loads),
            },
            baseline=("in_process_embedding_per_s", embed_qps),
            target=("ratio", ">=", 0.8),
        )
    )
    rows.append(
        result(
            "in_process_embedding_per_s",
            embed_qps,
            "texts/s",
            {
                "distinct_texts": len(texts),
                "window_s": window_s,
                "library_texts": len(sample),
                "encode_batch_size": batch_size,
                "unpadded_encoding": retriever_config.unpadded_encoding,
                "runs_each": len(rates),
            },
            baseline=("sentence_transformers_encode_per_s", statistics.mean(library_rates)),
        )
    )
    rows.append(result("rag_uncached_latency_p95_ms", served["p95_ms"], "ms", {"concurrency": CONCURRENCY}))
    _say("RAG: cached queries and their ceiling")
    batching = requests.get(f"{base}/v1/rag/stats", timeout=30).json().get("batching", {})
    rows.append(
        result(
            "rag_mean_batch_size",
            float(batching.get("mean_batch_size", float("nan"))),
            "queries/batch",
            {"phase": "uncached", "concurrency": CONCURRENCY},
        )
    )
    hot = uncached[:64]

    def fill(body: bytes) -> None:
        requests.post(
            f"{base}/v1/rag/query", data=body, headers={"content-type": "application/json"}, timeout=60
        )

    with ThreadPoolExecutor(max_workers=8 if quick else 1) as pool:  # fill the cache
        list(pool.map(fill, hot))
    ceiling = load(f"{base}/ceiling/rag", hot, **common)
    cached = load(f"{base}/v1/rag/query", hot, **common)
    rows.append(
        result(
            "rag_cached_queries_per_s",
            cached["requests_per_s"],
            "queries/s",
            {"concurrency": CONCURRENCY, "distinct_queries": len(hot)},
            baseline=("noop_ceiling_requests_per_s", ceiling["requests_per_s"]),
            target=("ratio", ">=", 0.7),
        )
    )
    stats = requests.get(f"{base}/v1/rag/stats", timeout=30).json()
    for name, tier in (("rag_edge_cache_hit_ratio", "edge_cache"), ("rag_cache_hit_ratio", "cache")):
        rate = float(stats.get(tier, {}).get("hit_rate", float("nan")))
        rows.append(result(name, rate, "ratio", {"phase": "whole run", "tier": tier}))
    rows.extend(_recall_rows(base))
    return rows


def _recall_rows(base: str) -> list[dict[str, Any]]:
    import requests

    from x0tta6bl4.corpus import load_incidents

    incidents = load_incidents(split="test")
    body: dict[str, Any] = {"queries": [{"query": i.text, "k": 3} for i in incidents]}
    resp = requests.post(f"{base}/v1/rag/batch?cache=false", json=body, timeout=300)
    resp.raise_for_status()
    hits, rr = 0, 0.0
    for incident, answer in zip(incidents, resp.json()["answers"], strict=False):
        faults = [p["fault_type"] for p in answer["passages"]]
        if incident.fault_type in faults:
            hits += 1
            rr += 1.0 / (faults.index(incident.fault_type) + 1)
    params = {"incidents": len(incidents), "k": 3, "through": "POST /v1/rag/batch"}
    return [
        result("rag_recall_at_3", hits / len(incidents), "fraction", params, target=("value", ">=", 0.95)),
        result("rag_mrr", rr / len(incidents), "fraction", params, target=("value", ">=", 0.85)),
    ]


def _hnsw_vectors(quick: bool) -> Any:
    """The real MiniLM embeddings the hnswlib figures search (cached after the first run), embedded
    with one torch thread as the replicas do."""
    import torch

    from x0tta6bl4.bench.hnsw import real_embeddings

    torch.set_num_threads(1)
    return real_embeddings(600 if quick else 100_000, seed=0)


def _hnsw_rows(quick: bool) -> list[dict[str, Any]]:
    from x0tta6bl4.bench.hnsw import hnsw_vs_exact

    n = 600 if quick else 100_000
    _say(f"hnswlib vs exact search on {n} real MiniLM embeddings (cached after the first run)")
    matrix = _hnsw_vectors(quick)
    out = hnsw_vs_exact(matrix, num_queries=100 if quick else 1000, k=10)
    params: dict[str, Any] = {"vectors": n, "k": 10}
    params.update({key: out[key] for key in ("m", "ef_construction", "ef") if key in out})
    return [
        result(
            "hnsw_queries_per_s",
            out["hnsw_queries_per_s"],
            "queries/s",
            params,
            baseline=("exact_queries_per_s", out["exact_queries_per_s"]),
            target=("ratio", ">=", 10.0),
        ),
        result("hnsw_recall_at_10", out["recall_at_k"], "fraction", params, target=("value", ">=", 0.98)),
    ]


def results(quick: bool = False) -> list[dict[str, Any]]:
    """Every figure of the serve suite (see ../shared/BENCHMARKS.md)."""
    os.environ.setdefault("RAY_SERVE_RUN_SYNC_IN_THREADPOOL", "1")
    rows = _serve_results(quick)
    rows.extend(_hnsw_rows(quick))
    return rows
