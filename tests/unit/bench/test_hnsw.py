"""hnswlib benchmark helpers at small n: generated texts, cached real embeddings, hnswlib against exact search."""

import numpy as np
import pytest

from x0tta6bl4.bench.hnsw import generate_texts, hnsw_vs_exact, real_embeddings
from x0tta6bl4.errors import ConfigError


class _CountingModel:
    def __init__(self):
        from x0tta6bl4.models.embedder import load_embedder

        self.model, self.calls = load_embedder(max_seq_length=128), 0

    def encode(self, texts, **kwargs):
        self.calls += 1
        return self.model.encode(texts, **kwargs)


def test_generated_texts_are_distinct_varied_and_seeded():
    texts = generate_texts(500, seed=3)
    assert len(texts) == len(set(texts)) == 500
    assert texts == generate_texts(500, seed=3) and texts != generate_texts(500, seed=4)
    assert len({t.split()[0] for t in texts}) > 20  # many shapes, not one template


def test_real_embeddings_are_cached_and_hnsw_matches_exact_at_small_n(tmp_path):
    model = _CountingModel()
    matrix = real_embeddings(240, seed=1, cache_dir=tmp_path, model=model)
    assert matrix.shape == (240, 384) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert len(np.unique(matrix.round(5), axis=0)) == 240  # real, distinct texts
    again = real_embeddings(240, seed=1, cache_dir=tmp_path, model=model)
    assert model.calls == 1 and np.array_equal(matrix, again)  # the second call read the .npy
    report = hnsw_vs_exact(matrix, num_queries=40, k=10, ef=64)
    assert {
        "n",
        "k",
        "m",
        "ef",
        "ef_construction",
        "hnsw_queries_per_s",
        "exact_queries_per_s",
        "speedup",
        "recall_at_k",
    } <= set(report)
    assert report["n"] == 200 and 0.0 <= report["recall_at_k"] <= 1.0
    assert (
        report["recall_at_k"] >= 0.98
        and report["hnsw_queries_per_s"] > 0
        and report["exact_queries_per_s"] > 0
    )
    with pytest.raises(ConfigError):
        hnsw_vs_exact(matrix, num_queries=240)
