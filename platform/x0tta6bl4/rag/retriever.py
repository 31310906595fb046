"""Batch runbook retriever: MiniLM + hnswlib dense search fused with BM25, semantic cache, durable ingest."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from x0tta6bl4.corpus import RunbookError, chunk_text, load_runbooks, parse_runbook
from x0tta6bl4.durable import append_synced, write_atomic
from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.mesh.faults import ACTIONS, FAULT_TYPES, HEALED_BY
from x0tta6bl4.rag.cache import CacheConfig, CacheKey, SemanticCache
from x0tta6bl4.rag.encoding import BatchEncoder
from x0tta6bl4.rag.index import IndexStoreError, RWLock, VectorIndex

F32 = npt.NDArray[np.float32]

#: Environment variable naming the default store directory.
DATA_DIR_ENV = "X0TTA6BL4_RAG_DIR"
STORE_VERSION = 1
EMBEDDING_DIM = 384
#: Distinct runbooks the recommended action is chosen from, whatever ``k`` is asked.
ACTION_WINDOW = 3
_DOC_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_TOKEN_RE = re.compile(r"[a-z0-9]+")
_DOC_KEYS = frozenset({"id", "title", "text", "fault_type", "action"})


class RetrievalInputError(ConfigError):
    """A query, ``k`` or document the retriever refuses (the HTTP layer answers 4xx)."""


class RetrievalStoreError(X0tta6bl4Error):
    """The persisted store cannot be read or written."""


def default_data_dir() -> Path:
    """``$X0TTA6BL4_RAG_DIR``, else ``.x0tta6bl4/rag`` (relative to the working directory)."""
    return Path(os.environ.get(DATA_DIR_ENV) or ".x0tta6bl4/rag")


class RetrieverConfig(BaseModel):
    """Where the retriever keeps its store, how it chunks, indexes, ranks and caches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description=f"directory of the index, chunk metadata and ingested documents (default ${DATA_DIR_ENV} "
        "or .x0tta6bl4/rag)",
    )
    embedder_path: Path | None = Field(
        default=None,
        description="merged sentence-transformers model directory; None: packaged all-MiniLM-L6-v2",
    )
    chunk_words: int = Field(
        default=120, ge=20, le=400, description="words per chunk, title and heading included"
    )
    overlap_words: int = Field(
        default=20, ge=0, description="words shared by consecutive chunks of a section"
    )
    ef: int = Field(default=64, ge=1, description="HNSW query candidate list size (recall vs. latency)")
    m: int = Field(default=16, ge=2, le=128, description="HNSW graph degree M")
    ef_construction: int = Field(default=200, ge=1, description="HNSW build candidate list size")
    max_k: int = Field(default=20, ge=1, description="largest number of runbooks one query may ask for")
    max_query_chars: int = Field(default=4000, ge=1, description="longest accepted query, in characters")
    max_document_chars: int = Field(
        default=200_000, ge=1, description="longest accepted ingested document text, in characters"
    )
    lexical_weight: float = Field(
        default=0.3,
        ge=0,
        description="weight of the BM25 score (scaled to 1 for the query's best chunk) added to the cosine "
        "similarity; 0 ranks by embeddings only",
    )
    candidates: int = Field(
        default=64,
        ge=1,
        description="chunks taken from each of the dense and the lexical ranking before fusion",
    )
    max_seq_length: int = Field(
        default=256, ge=16, le=512, description="embedder input tokens; longer is cut"
    )
    encode_batch_size: int = Field(
        default=16, ge=1, description="most texts per forward pass of the embedder"
    )
    unpadded_encoding: bool = Field(
        default=True,
        description="run a mean-pooled BERT embedder (MiniLM and its LoRA merges) without padding: the "
        "same vectors, one pass per encode_batch_size texts; False, or any other model, uses "
        "sentence-transformers' padded encode",
    )
    pass_overhead_tokens: int = Field(
        default=50,
        ge=0,
        description="padded encode only: fixed cost of one forward pass, in padded tokens; a batch is cut "
        "into length-sorted passes wherever the padding saved outweighs another pass (50 embeds random "
        "10-16-query batches 10-15 % faster than one padded pass on a 2-core x86 host)",
    )
    cache: CacheConfig = Field(default_factory=CacheConfig, description="semantic query cache")


@dataclasses.dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved runbook, represented by its best-matching chunk.

    Args:
        text: the chunk text (runbook title and section heading first).
        score: the runbook's fused score: best cosine similarity of its chunks plus
            ``lexical_weight`` times its best scaled BM25 score.
        runbook_id: the runbook (document) id.
        runbook_title: its title.
        section: the heading of the chunk's section.
        fault_type: the fault the runbook treats (``None`` for action or reference documents).
        action: the remediation it recommends (``None`` when it names none).
    """

    text: str
    score: float
    runbook_id: str
    runbook_title: str
    section: str
    fault_type: str | None
    action: str | None


_PASSAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Passage))


@dataclasses.dataclass(frozen=True, slots=True)
class QueryResult:
    """The answer to one query.

    Args:
        passages: the best ``k`` distinct runbooks, best first.
        action: the recommended remediation: the action of the best-ranked fault runbook among
            the top three; without one, the action of the best runbook (``None`` if it names none).
        fault_type: the fault that runbook treats (``None`` when no fault runbook ranks in the top three).
        cached: whether the result came from the cache.
    """

    passages: tuple[Passage, ...]
    action: str | None
    fault_type: str | None
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form."""
        return {
            # Field by field: dataclasses.asdict deep-copies every value and cost more than ranking.
            "passages": [{name: getattr(p, name) for name in _PASSAGE_FIELDS} for p in self.passages],
            "action": self.action,
            "fault_type": self.fault_type,
            "cached": self.cached,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    """A retrievable document: a packaged runbook or an ingested one."""

    id: str
    title: str
    body: str
    fault_type: str | None
    action: str | None

    @property
    def digest(self) -> str:
        """SHA-256 of the content (what makes a re-ingest of the same document a no-op)."""
        raw = json.dumps([self.title, self.body, self.fault_type, self.action]).encode("utf-8")
        return hashlib.sha256(raw).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class _ChunkRecord:
    doc: str
    heading: str
    text: str


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric tokens with a plural ``s`` dropped from words longer than 3 letters."""
    return [w[:-1] if len(w) > 3 and w.endswith("s") else w for w in _TOKEN_RE.findall(text.lower())]


class BM25:
    """Okapi BM25 over a growing list of texts (document ids are list positions).

    Every (term, text) weight is computed once per corpus, into a sparse term-by-text matrix, so
    scoring a batch of queries is one sparse product instead of array work per query word.

    Args:
        k1: term-frequency saturation.
        b: document-length normalisation.
    """

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self._postings: dict[str, tuple[list[int], list[int]]] = {}
        self._lengths: list[int] = []
        self._terms: dict[str, int] = {}  # term -> row of the weight matrix
        self._weights: Any = None  # scipy CSR [terms, texts]; None until needed after an add

    def __len__(self) -> int:
        return len(self._lengths)

    def add(self, texts: Sequence[str]) -> None:
        """Append texts (their ids continue from ``len(self)``)."""
        for text in texts:
            counts = Counter(tokenize(text))
            doc = len(self._lengths)
            self._lengths.append(sum(counts.values()))
            for term, tf in counts.items():
                ids, tfs = self._postings.setdefault(term, ([], []))
                ids.append(doc)
                tfs.append(tf)
        self._weights = None  # idf and the length normaliser moved

    def scores(self, query: str) -> npt.NDArray[np.float64]:
        """BM25 score of every text for ``query`` (a repeated query word counts again).

        Shapes:
            ``[len(self)]`` float64.
        """
        out: npt.NDArray[np.float64] = self.scores_many([query])[0]
        return out

    def scores_many(self, queries: Sequence[str]) -> npt.NDArray[np.float64]:
        """BM25 scores of every text for each query, in one sparse product.

        Shapes:
            ``[len(queries), len(self)]`` float64.
        """
        from scipy import sparse

        weights = self._matrix()
        rows: list[int] = []
        cols: list[int] = []
        for i, query in enumerate(queries):
            for term in tokenize(query):
                col = self._terms.get(term)
                if col is not None:
                    rows.append(i)
                    cols.append(col)
        if not rows:
            return np.zeros((len(queries), len(self._lengths)))
        # Duplicate (query, term) entries are summed: a repeated query word counts again.
        counts = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(queries), len(self._terms)))
        return np.asarray((counts @ weights).toarray(), dtype=np.float64)

    def _matrix(self) -> Any:
        """The [terms, texts] matrix of ``idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))``."""
        if self._weights is not None:
            return self._weights
        from scipy import sparse

        n = len(self._lengths)
        lengths = np.asarray(self._lengths, dtype=np.float64)
        norm = self.k1 * (1.0 - self.b + self.b * lengths / max(float(lengths.mean()) if n else 0.0, 1e-9))
        self._terms = {term: row for row, term in enumerate(self._postings)}
        indptr = [0]
        ids_all: list[int] = []
        tfs_all: list[int] = []
        idfs: list[float] = []
        for ids, tfs in self._postings.values():
            ids_all.extend(ids)
            tfs_all.extend(tfs)
            indptr.append(len(ids_all))
            idfs.append(math.log(1.0 + (n - len(ids) + 0.5) / (len(ids) + 0.5)))
        ids_arr = np.asarray(ids_all, np.int64)
        tf = np.asarray(tfs_all, np.float64)
        idf = np.repeat(np.asarray(idfs), np.diff(indptr))
        data = idf * tf * (self.k1 + 1.0) / (tf + norm[ids_arr])
        self._weights = sparse.csr_matrix((data, ids_arr, np.asarray(indptr)), shape=(len(self._terms), n))
        return self._weights


_fingerprints: dict[tuple[Any, ...], str] = {}


def embedder_fingerprint(path: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 of every file of an embedder directory (``None``: the packaged MiniLM); memoised per process.

    Raises:
        ConfigError: ``path`` is not a directory.
    """
    from x0tta6bl4.models.embedder import base_model_path

    root = (base_model_path() if path is None else Path(path)).resolve()
    if not root.is_dir():
        raise ConfigError(f"embedder directory {root} does not exist (models are never downloaded)")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    memo = (str(root), *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if memo not in _fingerprints:
        h = hashlib.sha256()
        for p in files:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        _fingerprints[memo] = h.hexdigest()
    return _fingerprints[memo]


class Retriever:
    """Answers incident descriptions with the best runbooks and the remediation they recommend.

    Construct it with :meth:`open`. Queries run concurrently with each other; :meth:`ingest`
    excludes them only while it appends to the index (embedding happens before). Files in
    ``data_dir``: ``store.json`` (fingerprint), ``documents.jsonl`` (ingested documents, the
    source of truth), ``chunks.jsonl`` (one line per index label) and ``index/``.
    One process writes a store at a time (an ``flock`` on ``data_dir/.lock``); other processes
    see its ingests after :meth:`refresh`.
    """

    def __init__(self, config: RetrieverConfig, model: Any, fingerprint: str) -> None:
        """An empty retriever; use :meth:`open`, which loads or builds the store."""
        self.config = config
        self._encoder = BatchEncoder(
            model, config.encode_batch_size, config.pass_overhead_tokens, config.unpadded_encoding
        )
        self._fingerprint = fingerprint
        self._lock = RWLock()
        self._ingest_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.cache = SemanticCache(config.cache)
        self._queries = 0
        self._docs: dict[str, Document] = {}
        self._chunks: list[_ChunkRecord] = []
        self._chunk_doc = np.zeros(0, np.int64)  # document position of every chunk label
        # Chunk labels grouped by document position: doc i owns _by_doc[_doc_ptr[i]:_doc_ptr[i + 1]].
        self._by_doc = np.zeros(0, np.int64)
        self._doc_ptr = np.zeros(1, np.int64)
        self._doc_order: list[str] = []
        self._vectors = np.zeros((0, EMBEDDING_DIM), np.float32)
        self._bm25 = BM25()
        self._index = VectorIndex(EMBEDDING_DIM, config.m, config.ef_construction, config.ef)
        self._documents_size = -1

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, config: RetrieverConfig | None = None, model: Any = None) -> Retriever:
        """Load the store in ``config.data_dir``, or build it from the packaged runbooks and persist it.

        A store built with another embedder, chunking, HNSW graph parameters or packaged
        corpus (see :meth:`fingerprint`), or left inconsistent by a crash, is rebuilt from the
        packaged runbooks plus ``documents.jsonl``.

        Args:
            config: settings (default: :class:`RetrieverConfig` defaults).
            model: an already loaded sentence-transformers model of ``config.embedder_path``
                (saves loading it again; the caller vouches that it is that model).

        Raises:
            ConfigError: the embedder directory does not exist.
            RetrievalStoreError: the store cannot be read or written.
        """
        cfg = config or RetrieverConfig()
        if model is None:
            from x0tta6bl4.models.embedder import load_embedder

            model = load_embedder(cfg.embedder_path, max_seq_length=cfg.max_seq_length)
        parts = {
            "store_version": STORE_VERSION,
            "embedder": embedder_fingerprint(cfg.embedder_path),
            "chunk_words": cfg.chunk_words,
            "overlap_words": cfg.overlap_words,
            "m": cfg.m,
            "ef_construction": cfg.ef_construction,
            "packaged": hashlib.sha256(
                json.dumps([_doc_json(d) for d in _packaged_documents()]).encode("utf-8")
            ).hexdigest(),
        }
        fingerprint = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        retriever = cls(cfg, model, fingerprint)
        with retriever._store_lock():
            retriever._load_or_build()
        return retriever

    @property
    def fingerprint(self) -> str:
        """Hash of what the index depends on: embedder, chunking, M, ef_construction, packaged runbooks."""
        return self._fingerprint

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        root = self.config.data_dir
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RetrievalStoreError(f"cannot use the store directory {root}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _path(self, name: str) -> Path:
        return self.config.data_dir / name

    def _load_or_build(self) -> None:
        """Replace the in-memory state by the store on disk, rebuilt when stale (store lock held).

        The new state is prepared aside and swapped in at once, so queries never see a half state.
        """
        ingested, torn = self._read_documents()
        docs = {d.id: d for d in [*_packaged_documents(), *ingested]}
        loaded = None if torn else self._try_load(docs)
        if loaded is None:
            index, records, vectors = self._rebuild(docs, ingested)
        else:
            index, records = loaded
            vectors = index.get_vectors(np.arange(len(records)))
        index.ef = self.config.ef
        with self._lock.write():
            self._reset(docs)
            self._index = index
            self._append_chunks(records, vectors)
        self.cache.clear()  # before the version moves: an answer tagged new is never an old entry
        self._documents_size = self._documents_file_size()

    def _try_load(self, docs: Mapping[str, Document]) -> tuple[VectorIndex, list[_ChunkRecord]] | None:
        try:
            store = json.loads(self._path("store.json").read_text(encoding="utf-8"))
            if not isinstance(store, dict) or store.get("fingerprint") != self._fingerprint:
                return None
            records = [
                _ChunkRecord(r["doc"], r["heading"], r["text"])
                for r in map(json.loads, self._path("chunks.jsonl").read_text(encoding="utf-8").splitlines())
            ]
            index = VectorIndex.load(self._path("index"), dim=EMBEDDING_DIM)
        except (OSError, ValueError, KeyError, TypeError, IndexStoreError):
            return None
        if len(index) != len(records) or {r.doc for r in records} != set(docs):
            return None
        if not np.array_equal(np.sort(index.ids()), np.arange(len(records))):
            return None
        return index, records

    def _rebuild(
        self, docs: Mapping[str, Document], ingested: list[Document]
    ) -> tuple[VectorIndex, list[_ChunkRecord], F32]:
        """Chunk, embed and index ``docs``, and write the whole store (``store.json`` last)."""
        cfg = self.config
        records = [r for d in docs.values() for r in self._chunk_document(d)]
        vectors = self.embed([r.text for r in records])
        index = VectorIndex(EMBEDDING_DIM, cfg.m, cfg.ef_construction, cfg.ef, capacity=max(len(records), 1))
        index.add(vectors, np.arange(len(records)))
        try:
            cfg.data_dir.mkdir(parents=True, exist_ok=True)
            self._path("store.json").unlink(missing_ok=True)  # a crash from here on means: rebuild
            write_atomic(
                self._path("documents.jsonl"), "".join(json.dumps(_doc_json(d)) + "\n" for d in ingested)
            )
            write_atomic(self._path("chunks.jsonl"), "".join(_record_line(r) for r in records))
            index.save(self._path("index"))
            store = {"store_version": STORE_VERSION, "fingerprint": self._fingerprint}
            write_atomic(self._path("store.json"), json.dumps(store, indent=2) + "\n")
        except (OSError, IndexStoreError) as exc:
            raise RetrievalStoreError(f"cannot write the store in {cfg.data_dir}: {exc}") from None
        return index, records, vectors

    def _read_documents(self) -> tuple[list[Document], bool]:
        """Ingested documents, and whether a torn last line (a crashed ingest) was dropped."""
        path = self._path("documents.jsonl")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return [], False
        except (OSError, UnicodeDecodeError) as exc:
            raise RetrievalStoreError(f"{path}: unreadable: {exc}") from None
        docs: list[Document] = []
        for lineno, line in enumerate(lines, 1):
            try:
                docs.append(Document(**json.loads(line)))
            except (ValueError, TypeError) as exc:
                if lineno == len(lines):
                    return docs, True
                raise RetrievalStoreError(f"{path}:{lineno}: corrupt document record: {exc}") from None
        return docs, False

    def _documents_file_size(self) -> int:
        try:
            return self._path("documents.jsonl").stat().st_size
        except FileNotFoundError:
            return 0

    def refresh(self) -> bool:
        """Reload the store if another process ingested into it since; returns whether it did.

        Cheap when nothing changed (one ``stat``), so it can run before every batch.
        """
        if self._documents_file_size() == self._documents_size:
            return False
        with self._ingest_lock, self._store_lock():
            if self._documents_file_size() == self._documents_size:  # our own ingest just finished
                return False
            self._load_or_build()
        return True

    @property
    def corpus_version(self) -> int:
        """Which corpus answers come from: the size of the durable log of ingested documents.

        It changes with every ingest (0 when only the packaged runbooks are loaded), so two
        answers with the same version were computed on the same documents.
        """
        return max(self._documents_size, 0)

    # ------------------------------------------------------------------ state
    def _reset(self, docs: Mapping[str, Document]) -> None:
        self._docs = dict(docs)
        self._doc_order = list(docs)
        self._chunks = []
        self._chunk_doc = np.zeros(0, np.int64)
        self._by_doc = np.zeros(0, np.int64)
        self._doc_ptr = np.zeros(1, np.int64)
        self._vectors = np.zeros((0, EMBEDDING_DIM), np.float32)
        self._bm25 = BM25()

    def _append_chunks(self, records: Sequence[_ChunkRecord], vectors: F32) -> None:
        """Extend chunk metadata, vectors and BM25; labels continue from the count (write lock held)."""
        order = {d: i for i, d in enumerate(self._doc_order)}
        self._chunks.extend(records)
        self._chunk_doc = np.concatenate(
            [self._chunk_doc, np.asarray([order[r.doc] for r in records], np.int64)]
        )
        self._vectors = np.concatenate(
            [self._vectors, np.asarray(vectors, np.float32).reshape(-1, EMBEDDING_DIM)]
        )
        self._bm25.add([r.text for r in records])
        # Stable: each document's labels stay in ascending order (ties in ranking go to the first chunk).
        self._by_doc = np.argsort(self._chunk_doc, kind="stable").astype(np.int64)
        counts = np.bincount(self._chunk_doc, minlength=len(self._doc_order))
        self._doc_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _chunk_document(self, doc: Document) -> list[_ChunkRecord]:
        pieces = chunk_text(doc.title, doc.body, self.config.chunk_words, self.config.overlap_words, doc.id)
        return [_ChunkRecord(doc.id, heading, text) for heading, text in pieces]

    # ------------------------------------------------------------------ querying
    def embed(self, texts: Sequence[str]) -> F32:
        """Unit-normalised embeddings of ``texts`` (see :class:`~x0tta6bl4.rag.encoding.BatchEncoder`).

        Shapes:
            ``[len(texts), 384]`` float32.
        """
        return self._encoder.encode(texts)

    def check_query(self, text: Any, k: Any) -> None:
        """Check one query before it is batched.

        Raises:
            RetrievalInputError: ``text`` is not a string, is blank or longer than ``max_query_chars``;
                ``k`` is not an integer in ``1..max_k``.
        """
        if not isinstance(text, str) or not text.strip():
            raise RetrievalInputError("the query must be a non-empty text")
        if len(text) > self.config.max_query_chars:
            raise RetrievalInputError(
                f"the query has {len(text)} characters; at most {self.config.max_query_chars} are accepted"
            )
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or not 1 <= k <= self.config.max_k:
            raise RetrievalInputError(f"k must be an integer from 1 to {self.config.max_k}, got {k!r}")

    def query(self, text: str, k: int = 3) -> QueryResult:
        """The best ``k`` runbooks for one incident description (see :meth:`query_batch`).

        Raises:
            RetrievalInputError: an invalid query or ``k``.
        """
        return self.query_batch([text], k)[0]

    def cached(self, text: str, k: int = 3) -> QueryResult | None:
        """The cached result of exactly this query (after case/whitespace normalisation), without embedding.

        Raises:
            RetrievalInputError: an invalid query or ``k``.
        """
        self.check_query(text, k)
        hit: QueryResult | None = self.cache.get_exact(CacheKey.of(text, int(k)))
        if hit is None:
            return None
        with self._stats_lock:
            self._queries += 1
        return dataclasses.replace(hit, cached=True)

    def query_batch(
        self, texts: Sequence[str], k: int | Sequence[int] = 3, use_cache: bool = True
    ) -> list[QueryResult]:
        """Answer many queries with one embedder call.

        Exact cache hits are answered without embedding; the misses are embedded together,
        checked against the semantic cache, searched, and cached.

        Args:
            texts: incident descriptions.
            k: runbooks per query, one value for all or one per query.
            use_cache: look up and store results in the cache (False: always search).

        Returns:
            One result per text, in order.

        Raises:
            RetrievalInputError: any invalid text or ``k`` (checked before any work), or ``k``
                given per query with another length than ``texts``.
        """
        ks = list(k) if isinstance(k, Sequence) and not isinstance(k, str) else [k] * len(texts)
        if len(ks) != len(texts):
            raise RetrievalInputError(f"got {len(ks)} values of k for {len(texts)} queries")
        for text, kk in zip(texts, ks, strict=True):
            self.check_query(text, kk)
        keys = [CacheKey.of(t, int(kk)) for t, kk in zip(texts, ks, strict=True)]
        cached: list[QueryResult | None] = [self.cache.get_exact(key) if use_cache else None for key in keys]
        results = [None if r is None else dataclasses.replace(r, cached=True) for r in cached]
        todo = [i for i, r in enumerate(results) if r is None]
        if todo:
            vectors = self.embed([texts[i] for i in todo])
            rows: list[int] = []
            for row, i in enumerate(todo):
                hit: QueryResult | None = self.cache.get_similar(keys[i], vectors[row]) if use_cache else None
                if hit is None:
                    rows.append(row)
                else:
                    results[i] = dataclasses.replace(hit, cached=True)
            found = self.search(
                vectors[rows], [int(ks[todo[r]]) for r in rows], [texts[todo[r]] for r in rows]
            )
            for row, result in zip(rows, found, strict=True):
                if use_cache:
                    self.cache.put(keys[todo[row]], vectors[row], result)
                results[todo[row]] = result
        with self._stats_lock:
            self._queries += len(texts)
        return [r for r in results if r is not None]

    def search(
        self, embeddings: npt.ArrayLike, ks: Sequence[int], texts: Sequence[str] | None = None
    ) -> list[QueryResult]:
        """Rank distinct runbooks for query embeddings, fusing dense and (given ``texts``) BM25 scores.

        Candidates are the runbooks of the ``candidates`` nearest chunks in the HNSW index and
        of the ``candidates`` best BM25 chunks; each candidate runbook scores its best chunk
        cosine plus ``lexical_weight`` × its best BM25 score scaled by the query's best.

        Args:
            embeddings: unit-normalised query embeddings (see :meth:`embed`).
            ks: runbooks wanted per query.
            texts: the query texts for lexical scoring (``None``: dense only).

        Shapes:
            embeddings: ``[q, 384]``; ``ks`` and ``texts``: ``q`` items.

        Raises:
            RetrievalInputError: lengths that differ, or a ``k`` out of ``1..max_k``.
        """
        q = np.asarray(embeddings, dtype=np.float32).reshape(-1, EMBEDDING_DIM)
        if len(ks) != len(q) or (texts is not None and len(texts) != len(q)):
            raise RetrievalInputError(
                f"search got {len(q)} embeddings, {len(ks)} ks, {len(texts or ())} texts"
            )
        if any(not 1 <= kk <= self.config.max_k for kk in ks):
            raise RetrievalInputError(f"k must be from 1 to {self.config.max_k}, got {list(ks)}")
        if not len(q):
            return []
        with self._lock.read():
            if not self._chunks:
                return [QueryResult((), None, None) for _ in ks]
            # One thread: hnswlib starts its threads anew on every call, which costs 4-10x the
            # search itself for a served batch, and the replica embeds on one core anyway.
            labels, _ = self._index.query(q, self.config.candidates, num_threads=1)
            lexical = self._bm25.scores_many(texts) if texts and self.config.lexical_weight > 0 else None
            return [
                self._rank(q[i], labels[i], kk, None if lexical is None else lexical[i])
                for i, kk in enumerate(ks)
            ]

    def _rank(
        self, vec: F32, dense_labels: npt.NDArray[np.int64], k: int, bm25: npt.NDArray[np.float64] | None
    ) -> QueryResult:
        """Fuse scores for one query, over every chunk of the candidate runbooks at once (read lock held).

        ``bm25`` is the query's BM25 score of every chunk, or ``None`` to rank by embeddings only.
        """
        weight = self.config.lexical_weight
        candidates = self._chunk_doc[dense_labels]
        lexical: npt.NDArray[np.float64] | None = None
        if bm25 is not None:
            best = bm25.max()
            if best > 0:
                lexical = bm25 / best
                top = np.argpartition(-lexical, min(self.config.candidates, len(lexical)) - 1)
                top = top[: self.config.candidates]
                candidates = np.concatenate([candidates, self._chunk_doc[top[lexical[top] > 0]]])
        docs = np.unique(candidates)  # document positions, ascending
        # Every chunk of every candidate runbook, grouped by runbook (segments start at `offsets`).
        starts, sizes = self._doc_ptr[docs], self._doc_ptr[docs + 1] - self._doc_ptr[docs]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        labels = self._by_doc[np.repeat(starts - offsets, sizes) + np.arange(int(sizes.sum()))]
        dense = self._vectors[labels] @ vec
        lex = np.zeros(len(labels)) if lexical is None else lexical[labels]
        doc_scores = np.maximum.reduceat(dense, offsets) + weight * np.maximum.reduceat(lex, offsets)
        # Each runbook is represented by its chunk of best fused score (the first one on a tie).
        fused = dense + weight * lex
        best_chunk = labels[np.lexsort((-fused, np.repeat(np.arange(len(docs)), sizes)))[offsets]]
        order = np.lexsort((docs, -doc_scores))[: max(k, ACTION_WINDOW)]  # best first; ties by position
        passages = []
        for j in order.tolist():
            doc, chunk = self._docs[self._doc_order[int(docs[j])]], self._chunks[int(best_chunk[j])]
            score = float(doc_scores[j])
            passages.append(
                Passage(chunk.text, score, doc.id, doc.title, chunk.heading, doc.fault_type, doc.action)
            )
        fault = next((p for p in passages[:ACTION_WINDOW] if p.fault_type is not None), None)
        chosen = fault or (passages[0] if passages else None)
        return QueryResult(
            tuple(passages[:k]),
            chosen.action if chosen else None,
            fault.fault_type if fault else None,
        )

    # ------------------------------------------------------------------ ingest
    def ingest(self, documents: Sequence[str | Mapping[str, Any]]) -> dict[str, Any]:
        """Add documents durably: they are on disk (fsynced) and in the index before this returns.

        A document is runbook Markdown with front matter (see :func:`~x0tta6bl4.corpus.parse_runbook`)
        or a mapping ``{title, text, id?, fault_type?, action?}`` (the action defaults to the one
        that heals ``fault_type``). Ingesting a document identical to a stored one of the same id
        is a no-op; a different document under a taken id is refused. The cache is cleared.

        Args:
            documents: the documents; all are validated before any is stored.

        Returns:
            ``documents``: the documents' ids, in order; ``added``: how many were new;
            ``chunks``: chunks added to the index.

        Raises:
            RetrievalInputError: no documents, an invalid one (empty or too long text, bad front
                matter, unknown fault type or action), or an id taken by another document.
            RetrievalStoreError: the store cannot be written.
        """
        if isinstance(documents, str | Mapping) or not documents:
            raise RetrievalInputError("ingest takes a non-empty list of documents")
        docs = [self._parse_document(d, i) for i, d in enumerate(documents)]
        ids = [d.id for d in docs]
        if len(set(ids)) != len(ids):
            raise RetrievalInputError(
                f"documents share an id: {sorted(i for i in ids if ids.count(i) > 1)[0]!r}"
            )
        with self._ingest_lock, self._store_lock():
            if self._documents_file_size() != self._documents_size:
                self._load_or_build()
            new = []
            for doc in docs:
                old = self._docs.get(doc.id)
                if old is None:
                    new.append(doc)
                elif old.digest != doc.digest:
                    raise RetrievalInputError(f"document id {doc.id!r} is taken by a different document")
            if not new:
                return {"documents": ids, "added": 0, "chunks": 0}
            records = [r for d in new for r in self._chunk_document(d)]
            vectors = self.embed([r.text for r in records])
            start = len(self._chunks)
            try:
                append_synced(self._path("documents.jsonl"), [json.dumps(_doc_json(d)) for d in new])
                append_synced(self._path("chunks.jsonl"), [_record_line(r).rstrip("\n") for r in records])
            except OSError as exc:
                raise RetrievalStoreError(
                    f"cannot append to the store in {self.config.data_dir}: {exc}"
                ) from None
            with self._lock.write():
                for d in new:
                    self._docs[d.id] = d
                    self._doc_order.append(d.id)
                self._append_chunks(records, vectors)
                self._index.add(vectors, np.arange(start, start + len(records)))
            try:
                self._index.save(self._path("index"))
            except IndexStoreError as exc:
                raise RetrievalStoreError(str(exc)) from None
            self.cache.clear()
            self._documents_size = self._documents_file_size()
        return {"documents": ids, "added": len(new), "chunks": len(records)}

    def _parse_document(self, raw: str | Mapping[str, Any], i: int) -> Document:
        limit = self.config.max_document_chars
        if isinstance(raw, str):
            if len(raw) > limit:
                raise RetrievalInputError(
                    f"document {i} has {len(raw)} characters; at most {limit} are accepted"
                )
            try:
                rb = parse_runbook(raw, f"document {i}")
            except RunbookError as exc:
                raise RetrievalInputError(str(exc)) from None
            doc = Document(rb.id, rb.title, rb.body, rb.fault_type, rb.action)
        elif isinstance(raw, Mapping):
            doc = _mapping_document(raw, i, limit)
        else:
            raise RetrievalInputError(
                f"document {i} must be runbook Markdown or a mapping, got {type(raw).__name__}"
            )
        try:
            chunks = self._chunk_document(doc)
        except ConfigError as exc:
            raise RetrievalInputError(f"document {i}: {exc}") from None
        if not chunks:
            raise RetrievalInputError(f"document {i} ({doc.id}) has no text to index")
        return doc

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict[str, Any]:
        """Counts: ``documents``, ``chunks``, ``ef``, ``index_size``, ``queries_served``, ``cache`` (its
        stats), ``embedder`` (how texts are embedded, and how many were), the ``corpus_version`` and
        the store ``fingerprint``."""
        with self._lock.read():
            out: dict[str, Any] = {
                "documents": len(self._docs),
                "chunks": len(self._chunks),
                "ef": self._index.ef,
                "index_size": len(self._index),
            }
        with self._stats_lock:
            out["queries_served"] = self._queries
        out["cache"] = self.cache.stats()
        out["embedder"] = self._encoder.describe()
        out["corpus_version"] = self.corpus_version
        out["fingerprint"] = self._fingerprint
        return out

    @property
    def documents(self) -> list[Document]:
        """Every retrievable document (packaged first, then ingested in order)."""
        with self._lock.read():
            return [self._docs[d] for d in self._doc_order]


# ---------------------------------------------------------------------- helpers
def _packaged_documents() -> list[Document]:
    return [Document(rb.id, rb.title, rb.body, rb.fault_type, rb.action) for rb in load_runbooks()]


def _doc_json(doc: Document) -> dict[str, Any]:
    return dataclasses.asdict(doc)


def _record_line(record: _ChunkRecord) -> str:
    return json.dumps({"doc": record.doc, "heading": record.heading, "text": record.text}) + "\n"


def _mapping_document(raw: Mapping[str, Any], i: int, limit: int) -> Document:
    unknown = sorted(str(key) for key in raw if key not in _DOC_KEYS)
    if unknown:
        raise RetrievalInputError(f"document {i}: unknown keys {unknown} (known: {sorted(_DOC_KEYS)})")
    title, text = raw.get("title"), raw.get("text")
    if not isinstance(title, str) or not title.strip():
        raise RetrievalInputError(f"document {i}: 'title' must be a non-empty string")
    if not isinstance(text, str) or not text.strip():
        raise RetrievalInputError(f"document {i}: 'text' must be a non-empty string")
    if len(text) > limit:
        raise RetrievalInputError(f"document {i} has {len(text)} characters; at most {limit} are accepted")
    fault, action = raw.get("fault_type"), raw.get("action")
    if fault is not None and fault not in FAULT_TYPES:
        raise RetrievalInputError(
            f"document {i}: unknown fault_type {fault!r} (known: {', '.join(FAULT_TYPES)})"
        )
    if action is not None and action not in ACTIONS:
        raise RetrievalInputError(f"document {i}: unknown action {action!r} (known: {', '.join(ACTIONS)})")
    if action is None and fault is not None:
        action = HEALED_BY[fault]
    doc_id = raw.get("id")
    if doc_id is None:
        slug = "-".join(_TOKEN_RE.findall(title.lower()))[:48].strip("-") or "doc"
        doc_id = f"{slug}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"
    if not isinstance(doc_id, str) or not _DOC_ID_RE.match(doc_id):
        raise RetrievalInputError(
            f"document {i}: id {doc_id!r} must be lower-case letters, digits, '-' or '_'"
        )
    return Document(doc_id, " ".join(title.split()), text.strip(), fault, action)
