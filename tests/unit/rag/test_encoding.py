"""Batch encoding: cheapest padded passes, the unpadded path and its fallbacks, counts."""

import itertools
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from x0tta6bl4.models.embedder import load_embedder
from x0tta6bl4.rag.encoding import BatchEncoder, plan_passes

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

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return load_embedder(max_seq_length=256)


def _brute_force_cost(lengths, max_rows, overhead):
    """Cheapest split of the length-sorted texts into contiguous passes, by trying every cut set."""
    ordered = sorted(lengths)
    best = math.inf
    for cuts in itertools.product([False, True], repeat=max(0, len(ordered) - 1)):
        passes, start = [], 0
        for i, cut in enumerate(cuts, start=1):
            if cut:
                passes.append(ordered[start:i])
                start = i
        passes.append(ordered[start:])
        if all(len(p) <= max_rows for p in passes):
            best = min(best, sum(overhead + len(p) * max(p) for p in passes))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_plan_passes_finds_the_cheapest_split_and_uses_every_text_once(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 90, size=int(rng.integers(1, 11))).tolist()
    max_rows, overhead = int(rng.integers(1, 6)), int(rng.integers(0, 120))
    passes = plan_passes(lengths, max_rows, overhead)
    assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
    assert all(1 <= len(p) <= max_rows for p in passes)
    cost = sum(overhead + len(p) * max(lengths[i] for i in p) for p in passes)
    assert cost == _brute_force_cost(lengths, max_rows, overhead)


def test_plan_passes_splits_where_padding_outweighs_a_pass():
    lengths = [10, 80, 11, 79, 12]
    assert plan_passes(lengths, 16, 50) == [[0, 2, 4], [3, 1]]  # 5 x 80 padded costs more than a pass
    assert plan_passes(lengths, 16, 10_000) == [[0, 2, 4, 3, 1]]  # passes too dear to split
    assert plan_passes(lengths, 2, 10_000) == [[0], [2, 4], [3, 1]]  # ...but never more than max_rows
    assert plan_passes([], 16, 50) == []
    with pytest.raises(ValueError, match="max_rows"):
        plan_passes(lengths, 0, 50)


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
