"""hnswlib against exact numpy search, on real MiniLM embeddings of generated mesh texts."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from x0tta6bl4.durable import replacing
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.rag.index import VectorIndex, exact_search, normalise_rows

F32 = npt.NDArray[np.float32]

#: Environment variable naming the embedding cache directory (default ``.x0tta6bl4/cache``).
CACHE_DIR_ENV = "X0TTA6BL4_CACHE_DIR"
#: Bumped whenever :func:`generate_texts` changes, so cached matrices of older texts are not reused.
TEXTS_VERSION = 1
#: Parameters chosen for 100k MiniLM vectors (recall@10 >= 0.98 at >= 10x exact search's queries/s).
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF = 64

_METRICS = {
    "cpu_util": ("{:.2f}", 0.0, 1.0),
    "mem_util": ("{:.2f}", 0.1, 1.0),
    "queue_depth_pkts": ("{:.0f}", 0, 100),
    "rx_bytes_per_s": ("{:.0f}kB/s", 5, 12000),
    "tx_bytes_per_s": ("{:.0f}kB/s", 5, 12000),
    "latency_mean_ms": ("{:.0f}ms", 5, 3000),
    "latency_p95_ms": ("{:.0f}ms", 8, 3000),
    "loss_ratio": ("{:.2f}", 0.0, 1.0),
    "tcp_retransmits_per_s": ("{:.1f}", 0, 40),
    "packet_drops_per_s": ("{:.0f}", 0, 3000),
    "tcp_resets_per_s": ("{:.1f}", 0, 10),
    "links_up": ("{:.0f}", 0, 9),
    "runqueue_latency_p95_ms": ("{:.0f}ms", 0, 400),
}
_LEVELS = ("INFO", "WARN", "ALERT", "CRIT", "PAGE", "FIRING", "resolved")
_TRENDS = ("rising", "falling", "flat", "spiking", "back to baseline", "oscillating", "stuck", "doubled")
_SUBJECTS = ("node", "relay", "gateway", "host", "device", "mesh node", "uplink node", "edge node")
_CAUSES = (
    "after a firmware update",
    "since the storm started",
    "during the nightly backup",
    "after a config push",
    "when the event crowd arrived",
    "with no change in traffic",
    "right after a reboot",
    "while the neighbour was rerouting",
    "since the new agent was installed",
    "for no obvious reason",
)
_TEMPLATES = (
    "{level} r{region} n{node}: {metric} {value} ({trend}) at t={tick}",
    "{level} {subject} {node} in region {region} reports {metric}={value}, {metric2}={value2}",
    "{subject} {node}: {metric} went {trend} {cause}; {metric2} now {value2}",
    "t={tick} r{region} n={node} {metric} {value} vs baseline {value2}, peer {peer}",
    "Ticket #{ticket}: {subject} {node} shows {metric} {value} {cause}. {sentence}",
    "n{node}->n{peer} hop: {metric} {value}, {metric2} {value2}, {trend}",
    "{sentence} Seen on {subject} {node} (region {region}) at tick {tick}.",
    "{incident} [{level}, tick {tick}]",
    "Hi team, {subject} {node} has {metric} at {value} {cause}, is this expected? {sentence}",
    "{level}: {count} nodes behind {subject} {node} see {metric} {value}, {trend}",
)


def generate_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct mesh-operations texts: alert lines, tickets and chat messages mixing
    telemetry values, runbook sentences and incident phrases.

    Raises:
        ConfigError: ``n < 1``.
    """
    from x0tta6bl4.corpus import load_incidents, load_runbooks

    if n < 1:
        raise ConfigError(f"need n >= 1 texts, got {n}")
    rng = np.random.default_rng(seed)
    sentences = [
        " ".join(s.replace("`", "").replace("*", "").split())
        for rb in load_runbooks()
        for s in re.split(r"(?<=[.!?])\s+", rb.body)
        if 4 <= len(s.split()) <= 40 and not s.lstrip().startswith("#")
    ]
    incidents = [i.text for i in load_incidents(split="train")]
    metrics = list(_METRICS)
    out: dict[str, None] = {}
    while len(out) < n:
        m1, m2 = rng.choice(metrics, size=2, replace=False)
        fields = {
            "level": _LEVELS[rng.integers(len(_LEVELS))],
            "region": int(rng.integers(0, 8)),
            "node": int(rng.integers(0, 20000)),
            "peer": int(rng.integers(0, 20000)),
            "tick": int(rng.integers(0, 100000)),
            "ticket": int(rng.integers(1000, 99999)),
            "count": int(rng.integers(2, 40)),
            "subject": _SUBJECTS[rng.integers(len(_SUBJECTS))],
            "trend": _TRENDS[rng.integers(len(_TRENDS))],
            "cause": _CAUSES[rng.integers(len(_CAUSES))],
            "metric": m1,
            "metric2": m2,
            "value": _value(str(m1), rng),
            "value2": _value(str(m2), rng),
            "sentence": sentences[rng.integers(len(sentences))],
            "incident": incidents[rng.integers(len(incidents))],
        }
        out[_TEMPLATES[rng.integers(len(_TEMPLATES))].format(**fields)] = None
    return list(out)


def _value(metric: str, rng: np.random.Generator) -> str:
    fmt, low, high = _METRICS[metric]
    return fmt.format(rng.uniform(low, high))


def real_embeddings(
    n: int,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    model: Any = None,
    batch_size: int = 64,
) -> F32:
    """MiniLM embeddings of :func:`generate_texts` ``(n, seed)``, cached as ``.npy``.

    The first call embeds (100,000 short texts take a few minutes on two CPU cores); later
    calls load the file keyed by ``n``, ``seed``, the text generator version and the model.

    Args:
        n: number of texts (and rows).
        seed: seed of the text generator.
        cache_dir: where the matrix is kept (default ``$X0TTA6BL4_CACHE_DIR`` or ``.x0tta6bl4/cache``).
        model: a loaded sentence-transformers model of the packaged MiniLM (default: load it).
        batch_size: texts per forward pass.

    Returns:
        Unit-normalised embeddings.

    Shapes:
        ``[n, 384]`` float32.

    Raises:
        ConfigError: ``n < 1``.
    """
    from x0tta6bl4.rag.config import embedder_fingerprint

    root = Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or ".x0tta6bl4/cache")
    path = root / f"minilm-texts-v{TEXTS_VERSION}-n{n}-seed{seed}-{embedder_fingerprint()[:16]}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape == (n, 384) and cached.dtype == np.float32:
            return np.asarray(cached, dtype=np.float32)
    from x0tta6bl4.models.embedder import encode_unit, load_embedder

    texts = generate_texts(n, seed)
    if model is None:
        model = load_embedder(max_seq_length=128)
    matrix = encode_unit(model, texts, batch_size)
    root.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, matrix)
    return matrix


def ef_sweep(
    matrix: npt.ArrayLike,
    num_queries: int,
    efs: Sequence[int],
    k: int = 10,
    m: int = DEFAULT_M,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    batch_size: int = 1,
    seed: int = 0,
) -> list[dict[str, float]]:
    """:func:`hnsw_vs_exact` for several ``ef`` values on one index build (see there)."""
    data = normalise_rows(matrix)
    if data.ndim != 2 or not 0 < num_queries < len(data) or k < 1 or batch_size < 1 or not efs:
        raise ConfigError(
            f"need a [n, d] matrix, 0 < num_queries < n, k >= 1, batch_size >= 1 and some ef "
            f"(got {data.shape}, {num_queries}, {k}, {batch_size}, {list(efs)})"
        )
    order = np.random.default_rng(seed).permutation(len(data))
    queries = np.ascontiguousarray(data[order[:num_queries]])
    base = np.ascontiguousarray(data[order[num_queries:]])
    index = VectorIndex(base.shape[1], m=m, ef_construction=ef_construction, capacity=len(base), seed=seed)
    started = time.perf_counter()
    index.add(base, np.arange(len(base)))
    build_s = time.perf_counter() - started
    batches = [queries[i : i + batch_size] for i in range(0, num_queries, batch_size)]

    def exact(batch: F32) -> npt.NDArray[np.int64]:
        return exact_search(base, batch, k, normalised=True)[0]

    exact(batches[0])  # warm-up
    started = time.perf_counter()
    truth = np.concatenate([exact(b) for b in batches])
    exact_qps = num_queries / (time.perf_counter() - started)
    rows = []
    for ef in efs:
        index.ef = ef
        index.query(batches[0], k)  # warm-up
        started = time.perf_counter()
        found = np.concatenate([index.query(b, k)[0] for b in batches])
        hnsw_qps = num_queries / (time.perf_counter() - started)
        recall = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found, truth, strict=True)])
        rows.append(
            {
                "n": float(len(base)),
                "dim": float(base.shape[1]),
                "num_queries": float(num_queries),
                "k": float(k),
                "m": float(m),
                "ef_construction": float(ef_construction),
                "ef": float(ef),
                "batch_size": float(batch_size),
                "build_s": build_s,
                "hnsw_queries_per_s": hnsw_qps,
                "exact_queries_per_s": exact_qps,
                "speedup": hnsw_qps / exact_qps,
                "recall_at_k": float(recall),
            }
        )
    return rows


def hnsw_vs_exact(
    matrix: npt.ArrayLike,
    num_queries: int = 1000,
    k: int = 10,
    ef: int = DEFAULT_EF,
    m: int = DEFAULT_M,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    batch_size: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """hnswlib against exact numpy search on the same held-out queries, batched the same way.

    ``num_queries`` random rows become the queries; the rest are indexed. Both sides answer
    the same batches of ``batch_size`` queries (1: one query per call; hnswlib and numpy's
    BLAS each use the cores they use by default). Recall is the share of the exact top-``k``
    that hnswlib returns.

    Args:
        matrix: the vectors.
        num_queries: rows held out as queries.
        k: neighbours per query.
        ef: hnswlib query candidate list size.
        m: hnswlib graph degree.
        ef_construction: hnswlib build candidate list size.
        batch_size: queries per call on both sides.
        seed: seed of the query choice and of hnswlib's levels.

    Returns:
        ``n`` (indexed vectors), ``dim``, ``num_queries``, ``k``, ``m``, ``ef_construction``, ``ef``,
        ``batch_size``, ``build_s``, ``hnsw_queries_per_s``, ``exact_queries_per_s``, ``speedup``
        (their ratio) and ``recall_at_k``.

    Shapes:
        matrix: ``[n, d]``.

    Raises:
        ConfigError: invalid sizes.
    """
    return ef_sweep(matrix, num_queries, [ef], k, m, ef_construction, batch_size, seed)[0]
