"""Batch encoding: the unpadded path, padded passes as its fallback, counts."""

import os

import numpy as np
import pytest

from x0tta6bl4.models.embedder import load_embedder
from x0tta6bl4.rag.encoding import BatchEncoder

TEXTS = [
    "node 4 unreachable",
    "link 5-9 lossy, retransmits up since the firmware upgrade on the relay at the water tower",
    "cpu 1.0 on node 3",
    "memory of the routing daemon on gateway 2 grows by 40 MB an hour and swap is now in use",
    "queue full",
]


@pytest.fixture(scope="module")
def model():
    import torch

    torch.set_num_threads(min(2, int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)))
    return load_embedder(max_seq_length=256)


def test_unpadded_and_planned_padded_passes_equal_one_padded_encode(model):
    one_pass = model.encode(TEXTS, batch_size=len(TEXTS), normalize_embeddings=True, convert_to_numpy=True)
    unpadded = BatchEncoder(model, 16, 50)
    padded = BatchEncoder(model, 16, 50, unpadded=False)
    assert unpadded.describe()["unpadded"] and not padded.describe()["unpadded"]
    # Padding changes only the float summation order: cosine 1 to 6 digits, row by row.
    for encoder in (unpadded, padded):
        np.testing.assert_allclose(np.sum(encoder.encode(TEXTS) * one_pass, axis=1), 1.0, atol=1e-5)


def test_counts_say_how_many_texts_and_passes_were_embedded(model):
    unpadded = BatchEncoder(model, 2, 50)
    unpadded.encode(TEXTS)
    unpadded.encode([])
    assert unpadded.describe() == {
        "unpadded": True,
        "why_padded": None,
        "max_texts_per_pass": 2,
        "texts_embedded": 5,
        "forward_passes": 3,  # 5 texts, at most 2 a pass
    }
    padded = BatchEncoder(model, 16, 50, unpadded=False)
    padded.encode(TEXTS)
    assert padded.describe()["texts_embedded"] == 5 and padded.describe()["forward_passes"] == 2  # plan above
    assert padded.describe()["why_padded"] == "disabled by configuration"


def test_a_model_the_unpadded_path_cannot_run_falls_back_to_padded_passes(model):
    from sentence_transformers import SentenceTransformer

    cls_pooled = SentenceTransformer(
        modules=[model[0], type(model[1])(384, pooling_mode="cls")], device="cpu"
    )
    encoder = BatchEncoder(cls_pooled, 16, 50)
    assert not encoder.describe()["unpadded"] and "mean pooling" in encoder.describe()["why_padded"]
    expected = cls_pooled.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(np.sum(encoder.encode(TEXTS) * expected, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="max_texts_per_pass"):
        BatchEncoder(model, 0, 50)
