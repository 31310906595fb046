"""The retriever façade: embeds queries, searches the index, ranks, caches, ingests durably.

Retrieval is MiniLM + hnswlib dense search fused with BM25 (:mod:`~x0tta6bl4.rag.ranking`),
over a store on disk (:mod:`~x0tta6bl4.rag.store`), with a semantic cache in front.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from x0tta6bl4.observability import tracing
from x0tta6bl4.observability.metrics import domain_metrics
from x0tta6bl4.rag.cache import CacheKey, SemanticCache, count_lookups
from x0tta6bl4.rag.config import RetrieverConfig, embedder_fingerprint
from x0tta6bl4.rag.encoding import BatchEncoder
from x0tta6bl4.rag.errors import RetrievalInputError
from x0tta6bl4.rag.index import RWLock, VectorIndex
from x0tta6bl4.rag.provenance import SignatureRecords, document_claim
from x0tta6bl4.rag.ranking import QueryResult, Ranker
from x0tta6bl4.rag.readings import expand_query
from x0tta6bl4.rag.store import (
    EMBEDDING_DIM,
    ChunkRecord,
    Document,
    Store,
    chunk_document,
    packaged_documents,
    parse_document,
    store_fingerprint,
)
from x0tta6bl4.security.identity import WorkloadKind
from x0tta6bl4.security.provenance import RUNBOOK_CONTEXT, ProvenancePolicy
from x0tta6bl4.security.signing import SignatureError

F32 = npt.NDArray[np.float32]

#: Retrieval metrics (recorded per batch).
_METRICS = domain_metrics("rag")


def _unwrapped(document: str | Mapping[str, Any]) -> str | Mapping[str, Any]:
    """A document without its signature; ``{"text": markdown}`` alone (as HTTP sends it) is the markdown."""
    if not isinstance(document, Mapping):
        return document
    body = {k: v for k, v in document.items() if k != "signature" and v is not None}
    return body["text"] if set(body) == {"text"} and isinstance(body["text"], str) else body


class Retriever:
    """Answers incident descriptions with the best runbooks and the remediation they recommend.

    Construct it with :meth:`open`. Queries run concurrently with each other; :meth:`ingest`
    excludes them only while it appends to the index (embedding happens before). The files in
    ``data_dir`` are described in :mod:`~x0tta6bl4.rag.store`. One process writes a store at a
    time (a file lock on ``data_dir/.lock``); other processes see its ingests after :meth:`refresh`.
    """

    def __init__(self, config: RetrieverConfig, model: Any, fingerprint: str) -> None:
        """An empty retriever; use :meth:`open`, which loads or builds the store."""
        self.config = config
        self._encoder = BatchEncoder(
            model, config.encode_batch_size, config.pass_overhead_tokens, config.unpadded_encoding
        )
        self._store = Store(config.data_dir, fingerprint)
        self._lock = RWLock()
        self._ingest_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.cache = SemanticCache(config.cache)
        self._queries = 0
        self._ranker = self._new_ranker({})
        self._index = VectorIndex(EMBEDDING_DIM, config.m, config.ef_construction, config.ef)
        self._documents_size = -1
        self._signatures = SignatureRecords(config.data_dir)
        self._policy = ProvenancePolicy(config.provenance)

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
        fingerprint = store_fingerprint(
            embedder_fingerprint(cfg.embedder_path),
            cfg.chunk_words,
            cfg.overlap_words,
            cfg.m,
            cfg.ef_construction,
        )
        retriever = cls(cfg, model, fingerprint)
        with retriever._store.lock():
            retriever._load_or_build()
            retriever._sign_packaged()
        return retriever

    def _sign_packaged(self) -> None:
        """Sign packaged runbooks that lack a current signature as ``sign_packaged_as`` (lock held)."""
        if self.config.sign_packaged_as is None:
            return
        self._signatures.load()
        unsigned = [d for d in packaged_documents() if self._signatures.matching(d) is None]
        if not unsigned:
            return
        audit = self._policy.recorder(self.config.sign_packaged_as)
        entries = []
        for doc in unsigned:
            claim = document_claim(doc)
            entries.append((doc.id, claim, audit.signer.sign(claim, RUNBOOK_CONTEXT).to_dict()))
            audit.record(
                "runbook.ingest", doc.id, {"digest": doc.digest, "action": doc.action, "packaged": True}
            )
        self._signatures.add(entries)

    @property
    def fingerprint(self) -> str:
        """Hash of what the index depends on: embedder, chunking, M, ef_construction, packaged runbooks."""
        return self._store.fingerprint

    def _load_or_build(self) -> None:
        """Replace the in-memory state by the store on disk, rebuilt when stale (store lock held).

        The new state is prepared aside and swapped in at once, so queries never see a half state.
        """
        ingested, torn = self._store.read_documents()
        docs = {d.id: d for d in [*packaged_documents(), *ingested]}
        loaded = None if torn else self._store.load(docs)
        if loaded is None:
            index, records, vectors = self._rebuild(docs, ingested)
        else:
            index, records = loaded
            vectors = index.get_vectors(np.arange(len(records)))
        index.ef = self.config.ef
        ranker = self._new_ranker(docs)
        ranker.add_chunks(records, vectors)
        with self._lock.write():
            self._ranker, self._index = ranker, index
        self.cache.clear()  # before the version moves: an answer tagged new is never an old entry
        self._documents_size = self._store.documents_size()
        _METRICS["index_documents"].set(ranker.document_count)

    def _new_ranker(self, docs: Mapping[str, Document]) -> Ranker:
        cfg = self.config
        return Ranker(docs, cfg.lexical_weight, cfg.candidates, cfg.evidence_chunks, cfg.lexical_length_norm)

    def _rebuild(
        self, docs: Mapping[str, Document], ingested: list[Document]
    ) -> tuple[VectorIndex, list[ChunkRecord], F32]:
        """Chunk, embed and index ``docs``, and write the whole store."""
        cfg = self.config
        records = [r for d in docs.values() for r in self._chunk(d)]
        vectors = self.embed([r.text for r in records])
        index = VectorIndex(EMBEDDING_DIM, cfg.m, cfg.ef_construction, cfg.ef, capacity=max(len(records), 1))
        index.add(vectors, np.arange(len(records)))
        self._store.write(ingested, records, index)
        return index, records, vectors

    def _chunk(self, doc: Document) -> list[ChunkRecord]:
        return chunk_document(doc, self.config.chunk_words, self.config.overlap_words)

    def refresh(self) -> bool:
        """Reload the store if another process ingested into it since; returns whether it did.

        Cheap when nothing changed (one ``stat``), so it can run before every batch.
        """
        if self._store.documents_size() == self._documents_size:
            return False
        with self._ingest_lock, self._store.lock():
            if self._store.documents_size() == self._documents_size:  # our own ingest just finished
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

        Exact cache hits are answered without embedding; the misses are embedded together
        (as :meth:`search_text` words them), checked against the semantic cache, searched, and
        cached.

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
        started = time.perf_counter()
        retrieval = tracing.start_span("rag.retrieve", {"queries": len(texts), "use_cache": use_cache})
        keys = [CacheKey.of(t, int(kk)) for t, kk in zip(texts, ks, strict=True)]
        cached: list[QueryResult | None] = [self.cache.get_exact(key) if use_cache else None for key in keys]
        results = [None if r is None else dataclasses.replace(r, cached=True) for r in cached]
        todo = [i for i, r in enumerate(results) if r is None]
        searched = 0
        if todo:
            # What is embedded and BM25-scored; the cache keys stay the texts as sent.
            search_texts = {i: self.search_text(texts[i]) for i in todo}
            vectors = self.embed([search_texts[i] for i in todo])
            rows: list[int] = []
            for row, i in enumerate(todo):
                hit: QueryResult | None = self.cache.get_similar(keys[i], vectors[row]) if use_cache else None
                if hit is None:
                    rows.append(row)
                else:
                    results[i] = dataclasses.replace(hit, cached=True)
            found = self.search(
                vectors[rows], [int(ks[todo[r]]) for r in rows], [search_texts[todo[r]] for r in rows]
            )
            for row, result in zip(rows, found, strict=True):
                if use_cache:
                    self.cache.put(keys[todo[row]], vectors[row], result)
                results[todo[row]] = result
            searched = len(rows)
        with self._stats_lock:
            self._queries += len(texts)
        _METRICS["retrieval_seconds"].observe(time.perf_counter() - started)  # metrics once per batch
        _METRICS["batch_size"].observe(len(texts))
        _METRICS["queries"].inc(len(texts))
        if use_cache:
            count_lookups(len(texts), len(texts) - len(todo), len(todo) - searched)
        retrieval.set_attribute("embedded", len(todo))
        retrieval.end()
        return [r for r in results if r is not None]

    def search_text(self, text: str) -> str:
        """The text embedded and BM25-scored for a query: with ``expand_queries``, ``text`` plus
        :func:`~x0tta6bl4.rag.readings.expand_query`'s readings of its telemetry values."""
        return expand_query(text) if self.config.expand_queries else text

    def search(
        self, embeddings: npt.ArrayLike, ks: Sequence[int], texts: Sequence[str] | None = None
    ) -> list[QueryResult]:
        """Rank distinct runbooks for query embeddings, fusing dense and (given ``texts``) BM25 scores.

        Candidates are the runbooks of the ``candidates`` nearest chunks in the HNSW index and
        of the ``candidates`` best BM25 chunks; each candidate runbook scores the mean cosine of
        its best ``evidence_chunks`` chunks plus ``lexical_weight`` × the mean of its best
        ``evidence_chunks`` BM25 scores, each scaled by the query's best.

        Args:
            embeddings: unit-normalised query embeddings (see :meth:`embed`).
            ks: runbooks wanted per query.
            texts: the texts for lexical scoring, as embedded (see :meth:`search_text`; ``None``:
                dense only).

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
            if not self._ranker.chunks:
                return [QueryResult((), None, None) for _ in ks]
            # One thread: hnswlib starts its threads anew on every call, which costs 4-10x the
            # search itself for a served batch, and the replica embeds on one core anyway.
            labels, _ = self._index.query(q, self.config.candidates, num_threads=1)
            return self._ranker.rank_many(q, labels, ks, texts)

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
                matter, unknown fault type or action), an id taken by another document, or
                more chunks in all than ``max_ingest_chunks``.
            RetrievalStoreError: the store cannot be written.
        """
        if isinstance(documents, str | Mapping) or not documents:
            raise RetrievalInputError("ingest takes a non-empty list of documents")
        cfg = self.config
        signatures = [d.get("signature") if isinstance(d, Mapping) else None for d in documents]
        docs = [
            parse_document(_unwrapped(d), i, cfg.max_document_chars, cfg.chunk_words, cfg.overlap_words)
            for i, d in enumerate(documents)
        ]
        chunks = sum(len(chunk_document(d, cfg.chunk_words, cfg.overlap_words)) for d in docs)
        if chunks > cfg.max_ingest_chunks:
            raise RetrievalInputError(
                f"these documents make {chunks} chunks; one ingest may add at most "
                f"{cfg.max_ingest_chunks} (send them in smaller requests)"
            )
        signed = self._verify_signatures(docs, signatures)
        ids = [d.id for d in docs]
        if len(set(ids)) != len(ids):
            raise RetrievalInputError(
                f"documents share an id: {sorted(i for i in ids if ids.count(i) > 1)[0]!r}"
            )
        with self._ingest_lock, self._store.lock():
            if self._store.documents_size() != self._documents_size:
                self._load_or_build()
            new = []
            for doc in docs:
                old = self._ranker.document(doc.id)
                if old is None:
                    new.append(doc)
                elif old.digest != doc.digest:
                    raise RetrievalInputError(f"document id {doc.id!r} is taken by a different document")
            self._record_ingest(docs, signed)
            if not new:
                return {"documents": ids, "added": 0, "chunks": 0}
            records = [r for d in new for r in self._chunk(d)]
            vectors = self.embed([r.text for r in records])
            start = len(self._ranker.chunks)
            self._store.append(new, records)
            with self._lock.write():
                self._ranker.add_documents(new)
                self._ranker.add_chunks(records, vectors)
                self._index.add(vectors, np.arange(start, start + len(records)))
            self._store.save_index(self._index)
            self.cache.clear()
            self._documents_size = self._store.documents_size()
        _METRICS["ingested_documents"].inc(len(new))
        _METRICS["index_documents"].set(self._ranker.document_count)
        return {"documents": ids, "added": len(new), "chunks": len(records)}

    def _verify_signatures(
        self, docs: Sequence[Document], signatures: Sequence[Any]
    ) -> dict[str, tuple[bytes, dict[str, Any], str]]:
        """(claim, signature, signer) by document id for the signed documents; a bad signature refuses all."""
        out: dict[str, tuple[bytes, dict[str, Any], str]] = {}
        for i, (doc, sig) in enumerate(zip(docs, signatures, strict=True)):
            if sig is None:
                continue
            claim = document_claim(doc)
            try:
                signer = self._policy.check_runbook(sig, claim)
            except SignatureError as exc:
                raise RetrievalInputError(
                    f"document {i} ({doc.id}): signature refused ({exc.reason}): {exc}"
                ) from None
            out[doc.id] = (claim, dict(sig), signer)
        return out

    def _record_ingest(
        self, docs: Sequence[Document], signed: Mapping[str, tuple[bytes, dict[str, Any], str]]
    ) -> None:
        """Keep verified signatures and write one ledger entry per document (store lock held)."""
        self._signatures.add((doc_id, claim, sig) for doc_id, (claim, sig, _) in signed.items())
        audit = self._policy.recorder(WorkloadKind.SERVE_RAG)
        for doc in docs:
            signer = signed[doc.id][2] if doc.id in signed else None
            audit.record(
                "runbook.ingest", doc.id, {"digest": doc.digest, "action": doc.action, "signed_by": signer}
            )

    def signatures(self, doc_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The current signature record (``claim``, ``signature``) of each signed document among ``doc_ids``.

        A record whose claim no longer matches the stored document is left out.
        """
        self._signatures.load()
        out: dict[str, dict[str, Any]] = {}
        for doc_id in doc_ids:
            doc = self._ranker.document(doc_id)
            rec = None if doc is None else self._signatures.matching(doc)
            if rec is not None:
                out[doc_id] = rec
        return out

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict[str, Any]:
        """Counts: ``documents``, ``chunks``, ``ef``, ``index_size``, ``queries_served``, ``cache`` (its
        stats), ``embedder`` (how texts are embedded, and how many were), the ``corpus_version`` and
        the store ``fingerprint``."""
        with self._lock.read():
            out: dict[str, Any] = {
                "documents": self._ranker.document_count,
                "chunks": len(self._ranker.chunks),
                "ef": self._index.ef,
                "index_size": len(self._index),
            }
        with self._stats_lock:
            out["queries_served"] = self._queries
        out["cache"] = self.cache.stats()
        out["embedder"] = self._encoder.describe()
        out["corpus_version"] = self.corpus_version
        out["fingerprint"] = self._store.fingerprint
        return out

    @property
    def documents(self) -> list[Document]:
        """Every retrievable document (packaged first, then ingested in order)."""
        with self._lock.read():
            return self._ranker.documents
