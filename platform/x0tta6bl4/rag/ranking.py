"""Ranking: dense and BM25 scores fused per runbook, and the remediation chosen among the best ones.

A runbook's evidence is the mean of its best ``evidence_chunks`` chunk scores, taken for the
cosine and the scaled BM25 apart: one chunk that happens to share words with a query (a
"when not to use it" list naming other faults, say) counts less than a runbook whose
summary, symptoms and report sections all match.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from x0tta6bl4.rag.lexical import BM25
from x0tta6bl4.rag.store import EMBEDDING_DIM, ChunkRecord, Document

F32 = npt.NDArray[np.float32]

#: Distinct runbooks the recommended action is chosen from, whatever ``k`` is asked.
ACTION_WINDOW = 3


@dataclasses.dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved runbook, represented by its best-matching chunk.

    Args:
        text: the chunk text (runbook title and section heading first).
        score: the runbook's fused score: the mean cosine similarity of its best
            ``evidence_chunks`` chunks plus ``lexical_weight`` times the mean of its best
            ``evidence_chunks`` scaled BM25 scores.
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


class Ranker:
    """The retrievable documents and their chunks, laid out to rank runbooks with array operations.

    Chunk labels (the index's) are positions in :attr:`chunks`; documents have positions too
    (packaged first, then ingested in order). Not thread-safe: the retriever ranks under its
    read lock and adds under its write lock.

    Args:
        documents: the documents by id, in position order.
        lexical_weight: weight of the BM25 score (scaled to 1 for the query's best chunk) added to
            the cosine similarity; 0 ranks by embeddings only.
        candidates: chunks taken from the lexical ranking before fusion (the caller takes as many
            from the dense one).
        evidence_chunks: how many of a runbook's best chunks its score averages, for the cosine
            and the BM25 score apart (default 1: its best chunk; a runbook with fewer chunks
            averages all of them).
        length_norm: BM25's document-length normalisation ``b`` (0: none, 1: full).
    """

    def __init__(
        self,
        documents: Mapping[str, Document],
        lexical_weight: float,
        candidates: int,
        evidence_chunks: int = 1,
        length_norm: float = 0.75,
    ) -> None:
        if evidence_chunks < 1:
            raise ValueError(f"evidence_chunks must be at least 1, got {evidence_chunks}")
        self._weight = lexical_weight
        self._candidates = candidates
        self._evidence = evidence_chunks
        self._docs = dict(documents)
        self._doc_order = list(documents)
        self.chunks: list[ChunkRecord] = []
        self._chunk_doc = np.zeros(0, np.int64)  # document position of every chunk label
        # Chunk labels grouped by document position: doc i owns _by_doc[_doc_ptr[i]:_doc_ptr[i + 1]].
        self._by_doc = np.zeros(0, np.int64)
        self._doc_ptr = np.zeros(1, np.int64)
        self._vectors = np.zeros((0, EMBEDDING_DIM), np.float32)
        self._bm25 = BM25(b=length_norm)

    @property
    def documents(self) -> list[Document]:
        """Every document, in position order."""
        return [self._docs[d] for d in self._doc_order]

    @property
    def document_count(self) -> int:
        """How many documents there are."""
        return len(self._docs)

    def document(self, doc_id: str) -> Document | None:
        """The document ``doc_id``, if there is one."""
        return self._docs.get(doc_id)

    def add_documents(self, documents: Sequence[Document]) -> None:
        """Append new documents (their chunks follow with :meth:`add_chunks`)."""
        for d in documents:
            self._docs[d.id] = d
            self._doc_order.append(d.id)

    def add_chunks(self, records: Sequence[ChunkRecord], vectors: F32) -> None:
        """Extend chunk metadata, vectors and BM25; labels continue from the count."""
        order = {d: i for i, d in enumerate(self._doc_order)}
        self.chunks.extend(records)
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

    def rank_many(
        self,
        queries: F32,
        dense_labels: npt.NDArray[np.int64],
        ks: Sequence[int],
        texts: Sequence[str] | None,
    ) -> list[QueryResult]:
        """Rank for each query, BM25 scoring the whole batch in one product.

        Args:
            queries: unit-normalised query embeddings.
            dense_labels: each query's nearest chunk labels (the dense candidates).
            ks: runbooks wanted per query.
            texts: the query texts for lexical scoring (``None``: dense only).

        Shapes:
            queries: ``[q, 384]``; dense_labels: ``[q, c]``; ``ks`` and ``texts``: ``q`` items.
        """
        lexical = self._bm25.scores_many(texts) if texts and self._weight > 0 else None
        return [
            self.rank(queries[i], dense_labels[i], kk, None if lexical is None else lexical[i])
            for i, kk in enumerate(ks)
        ]

    def rank(
        self, vec: F32, dense_labels: npt.NDArray[np.int64], k: int, bm25: npt.NDArray[np.float64] | None
    ) -> QueryResult:
        """Fuse scores for one query, over every chunk of the candidate runbooks at once.

        ``bm25`` is the query's BM25 score of every chunk, or ``None`` to rank by embeddings only.
        """
        weight = self._weight
        candidates = self._chunk_doc[dense_labels]
        lexical: npt.NDArray[np.float64] | None = None
        if bm25 is not None:
            best = bm25.max()
            if best > 0:
                lexical = bm25 / best
                top = np.argpartition(-lexical, min(self._candidates, len(lexical)) - 1)
                top = top[: self._candidates]
                candidates = np.concatenate([candidates, self._chunk_doc[top[lexical[top] > 0]]])
        docs = np.unique(candidates)  # document positions, ascending
        # Every chunk of every candidate runbook, grouped by runbook (segments start at `offsets`).
        starts, sizes = self._doc_ptr[docs], self._doc_ptr[docs + 1] - self._doc_ptr[docs]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        labels = self._by_doc[np.repeat(starts - offsets, sizes) + np.arange(int(sizes.sum()))]
        dense = self._vectors[labels] @ vec
        lex = np.zeros(len(labels)) if lexical is None else lexical[labels]
        doc_scores = self._evidence_mean(dense, offsets, sizes) + weight * self._evidence_mean(
            lex, offsets, sizes
        )
        # Each runbook is represented by its chunk of best fused score (the first one on a tie).
        fused = dense + weight * lex
        best_chunk = labels[np.lexsort((-fused, np.repeat(np.arange(len(docs)), sizes)))[offsets]]
        order = np.lexsort((docs, -doc_scores))[: max(k, ACTION_WINDOW)]  # best first; ties by position
        passages = []
        for j in order.tolist():
            doc, chunk = self._docs[self._doc_order[int(docs[j])]], self.chunks[int(best_chunk[j])]
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

    def _evidence_mean(
        self, values: npt.NDArray[Any], offsets: npt.NDArray[np.int64], sizes: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """Per segment (one runbook's chunks, starting at ``offsets``), the mean of its best
        ``evidence_chunks`` values.

        Shapes:
            values: ``[chunks]``; offsets, sizes and the result: ``[runbooks]``.
        """
        if self._evidence == 1:
            return np.maximum.reduceat(values, offsets).astype(np.float64)
        segment = np.repeat(np.arange(len(offsets)), sizes)
        ordered = values[np.lexsort((-values, segment))]  # each segment sorted, best first
        kept = np.where(np.arange(len(values)) - np.repeat(offsets, sizes) < self._evidence, ordered, 0.0)
        return np.add.reduceat(kept, offsets) / np.minimum(sizes, self._evidence)
