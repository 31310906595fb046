"""Lexical scoring: BM25 batch scores equal the textbook definition, and follow added texts."""

import numpy as np

from x0tta6bl4.rag.lexical import BM25, tokenize


def _bm25_reference(texts, query, k1=1.2, b=0.75):
    """Okapi BM25 term by term, straight from its definition."""
    from collections import Counter

    docs = [Counter(tokenize(t)) for t in texts]
    lengths = np.array([sum(d.values()) for d in docs], dtype=np.float64)
    out = np.zeros(len(texts))
    for term in tokenize(query):
        df = sum(term in d for d in docs)
        if not df:
            continue
        idf = np.log(1.0 + (len(docs) - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            tf = d.get(term, 0)
            out[i] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[i] / lengths.mean()))
    return out


def test_bm25_batch_scores_equal_the_definition_and_follow_added_texts():
    texts = ["link flaps on relay 7", "relay queue overflow, queue drops", "disk full on gateway"]
    queries = ["queue queue relay", "nothing matches here", "gateway disk", ""]
    bm25 = BM25()
    bm25.add(texts)
    many = bm25.scores_many(queries)
    assert many.shape == (4, 3)
    for row, query in zip(many, queries, strict=True):
        np.testing.assert_allclose(row, _bm25_reference(texts, query), rtol=1e-12)
        np.testing.assert_allclose(bm25.scores(query), row, rtol=1e-12)
    assert not many[1].any() and not many[3].any()
    bm25.add(["gateway reboot loop"])  # idf and the average length move
    np.testing.assert_allclose(
        bm25.scores("gateway disk"),
        _bm25_reference([*texts, "gateway reboot loop"], "gateway disk"),
        rtol=1e-12,
    )
    assert BM25().scores_many(["anything"]).shape == (1, 0)
