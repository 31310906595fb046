"""Thread-safe hnswlib cosine index with integer labels, atomic persistence and exact search."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt

from x0tta6bl4.durable import fsync_file, write_atomic
from x0tta6bl4.rag.errors import IndexInputError, IndexStoreError

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

#: Version of the on-disk layout written by :meth:`VectorIndex.save`.
FORMAT_VERSION = 1
#: Name of the metadata file inside a saved index directory (the commit point of a save).
META_FILE = "index.json"
SPACE = "cosine"


class RWLock:
    """A readers–writer lock: many readers together, one writer alone; waiting writers go first.

    Writer preference keeps a stream of queries from starving an insert.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared for the ``with`` block."""
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively for the ``with`` block (not re-entrant)."""
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def normalise_rows(x: npt.ArrayLike) -> F32:
    """Rows scaled to unit L2 norm (zero rows stay zero).

    Shapes:
        x: ``[n, d]`` → ``[n, d]`` float32.
    """
    arr = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    out: F32 = arr / np.maximum(norms, np.float32(1e-12))
    return out


def exact_search(
    matrix: npt.ArrayLike, queries: npt.ArrayLike, k: int, normalised: bool = False
) -> tuple[I64, F32]:
    """Brute-force cosine top-k with numpy (normalised dot products): the reference for recall.

    Args:
        matrix: the indexed vectors; row ``i`` gets id ``i``.
        queries: the query vectors.
        k: neighbours per query (clamped to the number of rows).
        normalised: the rows of ``matrix`` and ``queries`` already have unit norm (skips a copy).

    Returns:
        Row ids and cosine similarities of the best ``k`` rows per query, best first.

    Shapes:
        matrix: ``[n, d]``; queries: ``[q, d]`` → ids ``[q, min(k, n)]`` int64,
        scores ``[q, min(k, n)]`` float32.

    Raises:
        IndexInputError: ``k < 1``, not 2-D, or dimensions that differ.
    """
    m = np.asarray(matrix, dtype=np.float32)
    q = np.asarray(queries, dtype=np.float32)
    if m.ndim != 2 or q.ndim != 2 or m.shape[1] != q.shape[1] or k < 1:
        raise IndexInputError(
            f"exact_search needs [n, d] and [q, d] arrays and k >= 1, got {m.shape}, {q.shape}, {k}"
        )
    kk = min(k, m.shape[0])
    if kk == 0:
        return np.zeros((q.shape[0], 0), np.int64), np.zeros((q.shape[0], 0), np.float32)
    sims = q @ m.T if normalised else normalise_rows(q) @ normalise_rows(m).T
    part = (
        np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        if kk < m.shape[0]
        else np.tile(np.arange(kk), (len(q), 1))
    )
    part_scores = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return ids, np.take_along_axis(part_scores, order, axis=1).astype(np.float32)


class VectorIndex:
    """An hnswlib HNSW index over cosine similarity with int64 labels.

    Queries share a read lock and run together; :meth:`add`, resizing, :meth:`save` and
    changing :attr:`ef` take the write lock (hnswlib is not safe for a query concurrent
    with an insert). Adding an id that is already present replaces its vector.

    Args:
        dim: vector dimension.
        m: HNSW graph degree ``M`` (links per node per layer).
        ef_construction: candidate list size while building (higher: better graph, slower inserts).
        ef: candidate list size while querying (higher: better recall, slower queries); ``k`` at least.
        capacity: initial number of slots; the index doubles it when full.
        seed: seed of hnswlib's level generator.

    Raises:
        IndexInputError: a parameter out of range.
    """

    def __init__(
        self,
        dim: int,
        m: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        capacity: int = 1024,
        seed: int = 100,
    ) -> None:
        if dim < 1 or m < 2 or ef_construction < 1 or ef < 1 or capacity < 1:
            raise IndexInputError(
                f"need dim >= 1, m >= 2, ef_construction >= 1, ef >= 1, capacity >= 1 "
                f"(got {dim}, {m}, {ef_construction}, {ef}, {capacity})"
            )
        self.dim, self.m, self.ef_construction, self.seed = dim, m, ef_construction, seed
        self._lock = RWLock()
        self._index: Any = hnswlib.Index(space=SPACE, dim=dim)
        self._index.init_index(max_elements=capacity, ef_construction=ef_construction, M=m, random_seed=seed)
        self._ef = ef
        self._index.set_ef(ef)

    # ---------------------------------------------------------------- properties
    def __len__(self) -> int:
        return int(self._index.get_current_count())

    @property
    def capacity(self) -> int:
        """Slots allocated (grows by doubling on :meth:`add`)."""
        return int(self._index.get_max_elements())

    @property
    def ef(self) -> int:
        """Query-time candidate list size."""
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        if value < 1:
            raise IndexInputError(f"ef must be >= 1, got {value}")
        with self._lock.write():
            self._index.set_ef(value)
            self._ef = int(value)

    # ---------------------------------------------------------------- writes
    def add(self, vectors: npt.ArrayLike, ids: npt.ArrayLike, num_threads: int = -1) -> None:
        """Insert (or replace) vectors under the given ids, growing the index when full.

        Args:
            vectors: the vectors (normalised by hnswlib's cosine space; zero vectors are refused).
            ids: one non-negative label per vector.
            num_threads: hnswlib insertion threads (-1: all cores).

        Shapes:
            vectors: ``[n, dim]`` float32; ids: ``[n]`` int64.

        Raises:
            IndexInputError: wrong shapes, negative or repeated ids, non-finite or zero vectors.
        """
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        labels = np.asarray(ids, dtype=np.int64)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim or labels.shape != (vecs.shape[0],):
            raise IndexInputError(
                f"add needs vectors [n, {self.dim}] and ids [n], got {vecs.shape}, {labels.shape}"
            )
        if not len(labels):
            return
        if labels.min() < 0 or len(np.unique(labels)) != len(labels):
            raise IndexInputError("ids must be non-negative and distinct within one add")
        if not np.isfinite(vecs).all() or not (np.linalg.norm(vecs, axis=1) > 0).all():
            raise IndexInputError(
                "vectors must be finite and non-zero (cosine similarity is undefined otherwise)"
            )
        with self._lock.write():
            needed = len(self) + len(labels)
            if needed > self.capacity:
                self._index.resize_index(max(needed, 2 * self.capacity))
            self._index.add_items(vecs, labels.astype(np.uint64), num_threads=num_threads)

    # ---------------------------------------------------------------- reads
    def query(self, vectors: npt.ArrayLike, k: int, num_threads: int = -1) -> tuple[I64, F32]:
        """Approximate top-k by cosine similarity.

        Args:
            vectors: query vectors (any non-zero scale).
            k: neighbours per query; clamped to ``len(self)``.
            num_threads: hnswlib threads across the queries of this call (-1: all cores).

        Returns:
            ``(ids, scores)``: labels and cosine similarities (higher is better), best first.

        Shapes:
            vectors: ``[q, dim]`` (or ``[dim]`` for one) → ids ``[q, min(k, len)]`` int64,
            scores ``[q, min(k, len)]`` float32.

        Raises:
            IndexInputError: ``k < 1`` or a wrong shape.
        """
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim or k < 1:
            raise IndexInputError(f"query needs vectors [q, {self.dim}] and k >= 1, got {q.shape}, k={k}")
        with self._lock.read():
            kk = min(k, len(self))
            if kk == 0 or not len(q):
                return np.zeros((len(q), kk), np.int64), np.zeros((len(q), kk), np.float32)
            labels, dists = self._index.knn_query(q, k=kk, num_threads=num_threads)
        return labels.astype(np.int64), (1.0 - dists).astype(np.float32)

    def get_vectors(self, ids: npt.ArrayLike) -> F32:
        """The stored (unit-normalised) vectors of ``ids``.

        Shapes:
            ids: ``[n]`` → ``[n, dim]`` float32.

        Raises:
            IndexInputError: an id that is not in the index.
        """
        labels = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(labels):
            return np.zeros((0, self.dim), np.float32)
        with self._lock.read():
            try:
                out = self._index.get_items(labels.astype(np.uint64), return_type="numpy")
            except RuntimeError as exc:
                raise IndexInputError(f"unknown id among {labels[:5].tolist()}...: {exc}") from None
        return np.asarray(out, dtype=np.float32).reshape(len(labels), self.dim)

    def ids(self) -> I64:
        """Every label in the index (unordered).

        Shapes:
            ``[len(self)]`` int64.
        """
        with self._lock.read():
            return np.asarray(self._index.get_ids_list(), dtype=np.int64)

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Persist the index durably and atomically into ``directory``.

        The graph goes to a new uniquely named file (fsynced), then ``index.json`` — dim,
        space, M, ef_construction, ef, count, size and SHA-256 of that file, format version —
        replaces the previous metadata (temp file + fsync + ``os.replace``). A crash leaves
        either the old or the new index; superseded graph files are removed afterwards.

        Raises:
            IndexStoreError: the directory cannot be written.
        """
        root = Path(directory)
        with self._lock.write():
            try:
                root.mkdir(parents=True, exist_ok=True)
                name = f"hnsw-{uuid.uuid4().hex}.bin"
                self._index.save_index(str(root / name))
                fsync_file(root / name)
                meta = {
                    "format_version": FORMAT_VERSION,
                    "space": SPACE,
                    "dim": self.dim,
                    "M": self.m,
                    "ef_construction": self.ef_construction,
                    "ef": self._ef,
                    "seed": self.seed,
                    "count": len(self),
                    "capacity": self.capacity,
                    "index_file": name,
                    "index_bytes": (root / name).stat().st_size,
                    "index_sha256": _sha256(root / name),
                }
                write_atomic(root / META_FILE, json.dumps(meta, indent=2) + "\n")
            except OSError as exc:
                raise IndexStoreError(f"cannot save the index to {root}: {exc}") from None
        for old in root.glob("hnsw-*.bin"):
            if old.name != name:
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], dim: int | None = None) -> VectorIndex:
        """Load an index written by :meth:`save`, with its ``ef`` restored.

        Args:
            directory: the directory given to :meth:`save`.
            dim: the dimension the caller expects (``None``: whatever was saved).

        Raises:
            IndexStoreError: no metadata, unreadable or inconsistent metadata, another format
                version or space, a dimension other than ``dim``, or a graph file whose size or
                checksum differs from the metadata.
        """
        root = Path(directory)
        meta_path = root / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IndexStoreError(f"no saved index in {root} ({META_FILE} missing)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexStoreError(f"{meta_path}: unreadable index metadata: {exc}") from None
        meta = _check_meta(meta, meta_path)
        if dim is not None and meta["dim"] != dim:
            raise IndexStoreError(
                f"{meta_path}: saved dimension {meta['dim']} differs from the expected {dim}"
            )
        graph = root / meta["index_file"]
        try:
            size = graph.stat().st_size
        except OSError as exc:
            raise IndexStoreError(f"{graph}: index file missing: {exc}") from None
        if size != meta["index_bytes"] or _sha256(graph) != meta["index_sha256"]:
            raise IndexStoreError(
                f"{graph}: index file is corrupt (size or checksum differs from {META_FILE})"
            )
        obj = cls.__new__(cls)
        obj.dim, obj.m, obj.ef_construction, obj.seed = (
            meta["dim"],
            meta["M"],
            meta["ef_construction"],
            meta["seed"],
        )
        obj._lock = RWLock()
        obj._index = hnswlib.Index(space=SPACE, dim=meta["dim"])
        try:
            obj._index.load_index(str(graph), max_elements=max(meta["capacity"], meta["count"], 1))
        except RuntimeError as exc:
            raise IndexStoreError(f"{graph}: hnswlib cannot load it: {exc}") from None
        if len(obj) != meta["count"]:
            raise IndexStoreError(f"{graph}: holds {len(obj)} vectors, metadata says {meta['count']}")
        obj._ef = meta["ef"]
        obj._index.set_ef(obj._ef)
        return obj


_META_INTS = (
    "format_version",
    "dim",
    "M",
    "ef_construction",
    "ef",
    "seed",
    "count",
    "capacity",
    "index_bytes",
)


def _check_meta(meta: Any, where: Path) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise IndexStoreError(f"{where}: index metadata must be a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexStoreError(
            f"{where}: format version {meta.get('format_version')!r} is not {FORMAT_VERSION} "
            "(rebuild the index)"
        )
    if meta.get("space") != SPACE:
        raise IndexStoreError(f"{where}: space {meta.get('space')!r} is not {SPACE!r}")
    bad = [
        k
        for k in _META_INTS
        if not isinstance(meta.get(k), int) or isinstance(meta.get(k), bool) or meta[k] < 0
    ]
    if bad or meta["dim"] < 1 or meta["ef"] < 1:
        raise IndexStoreError(f"{where}: invalid or missing fields {', '.join(bad) or 'dim/ef'}")
    name, digest = meta.get("index_file"), meta.get("index_sha256")
    if not isinstance(name, str) or "/" in name or "\\" in name or not name.endswith(".bin"):
        raise IndexStoreError(f"{where}: invalid index_file {name!r}")
    if not isinstance(digest, str) or len(digest) != 64:
        raise IndexStoreError(f"{where}: invalid index_sha256")
    return meta


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
