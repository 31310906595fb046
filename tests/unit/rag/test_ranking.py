"""Ranking: fused scores and the chosen chunk equal the chunk-by-chunk definition."""

import dataclasses

import numpy as np
import pytest

from x0tta6bl4.corpus import load_incidents
from x0tta6bl4.rag.config import RetrieverConfig
from x0tta6bl4.rag.lexical import BM25
from x0tta6bl4.rag.ranking import Ranker
from x0tta6bl4.rag.retriever import Retriever


def _evidence(scores, n):
    """Mean of the best ``n`` scores (all of them when there are fewer)."""
    return float(np.mean(np.sort(scores)[::-1][:n]))


@dataclasses.dataclass
class Definition:
    """What the definition ranks with, the same whatever ``evidence_chunks``: queries as searched,
    their embeddings, every chunk's embedding and BM25 over the chunks."""

    texts: list[str]
    vectors: np.ndarray
    chunk_texts: list[str]
    chunk_vectors: np.ndarray
    bm25: BM25


@pytest.fixture(scope="module")
def definition(model, built):
    config = RetrieverConfig(data_dir=built, candidates=10_000)
    retriever = Retriever.open(config, model=model)
    texts = [retriever.search_text(i.text) for i in load_incidents(split="test")[:40]]
    chunks = [c.text for c in retriever._ranker.chunks]
    bm25 = BM25(b=config.lexical_length_norm)  # equal to the definition: see test_lexical
    bm25.add(chunks)
    return Definition(texts, retriever.embed(texts), chunks, retriever.embed(chunks), bm25)


@pytest.mark.parametrize("evidence_chunks", [1, 2, 3])
def test_ranking_equals_the_chunk_by_chunk_definition(model, built, definition, evidence_chunks):
    """Each runbook scores the mean cosine of its best chunks plus the weighted mean of its best
    scaled BM25 scores; its passage is its chunk of best fused score."""
    config = RetrieverConfig(data_dir=built, candidates=10_000, evidence_chunks=evidence_chunks)
    retriever = Retriever.open(config, model=model)
    records = retriever._ranker.chunks
    assert [c.text for c in records] == definition.chunk_texts  # the chunks the definition embedded
    texts, vectors, chunk_vectors = definition.texts, definition.vectors, definition.chunk_vectors
    weight = config.lexical_weight
    for text, vec, result in zip(
        texts, vectors, retriever.search(vectors, [5] * len(texts), texts), strict=True
    ):
        lexical = definition.bm25.scores(text)
        lexical = lexical / lexical.max() if lexical.max() > 0 else lexical
        cosine = chunk_vectors @ vec
        expected = []
        for doc_id in [d.id for d in retriever.documents]:
            own = [i for i, c in enumerate(records) if c.doc == doc_id]
            score = _evidence(cosine[own], evidence_chunks) + weight * _evidence(
                lexical[own], evidence_chunks
            )
            best = own[int(np.argmax(cosine[own] + weight * lexical[own]))]
            expected.append((-score, doc_id, records[best].heading))
        expected.sort()
        got = [(p.runbook_id, p.section) for p in result.passages]
        assert got == [(doc_id, heading) for _, doc_id, heading in expected[:5]]
        np.testing.assert_allclose(
            [p.score for p in result.passages], [-s for s, _, _ in expected[:5]], atol=1e-5
        )


def test_ranker_refuses_zero_evidence_chunks():
    with pytest.raises(ValueError, match="evidence_chunks"):
        Ranker({}, 0.5, 8, evidence_chunks=0)
