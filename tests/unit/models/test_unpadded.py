"""Padding-free BERT encoding: same vectors as sentence-transformers, cheapest padded groups, typed refusals."""

import itertools
import math
import os

import numpy as np
import pytest
import torch

from x0tta6bl4.corpus import load_incidents
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.models.embedder import EmbedderLoRA, EmbedderLoRAConfig, load_embedder
from x0tta6bl4.models.unpadded import UnpaddedBertEncoder, UnsupportedEmbedderError, plan_passes

MIXED = [
    "queue full",
    "  node 4 unreachable, neighbours lost a link  ",
    "MEMORY of the routing daemon on gateway 2 grows by 40 MB an hour and swap is now in use",
    "link 5-9 lossy, retransmits up since the firmware upgrade on the relay at the water tower; "
    "the neighbours report a packet loss ratio of 0.3 and rising",
    "cpu 1.0 on node 3",
]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(min(2, int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)))
    return load_embedder(max_seq_length=64)


def _cosines(a, b):
    return np.sum(a * b, axis=1)


def test_unpadded_embeddings_equal_sentence_transformers_encode(model):
    texts = MIXED + [i.text for i in load_incidents(split="test")[:40]] + ["word " * 200]  # last: truncated
    reference = model.encode(texts, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
    got = UnpaddedBertEncoder(model).encode(texts, max_texts_per_pass=64)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    # Only the float summation order differs: cosine 1 to 6 digits, row by row.
    np.testing.assert_allclose(_cosines(got, reference), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_a_text_embeds_the_same_whatever_else_is_in_its_pass(model):
    encoder = UnpaddedBertEncoder(model)
    alone = np.concatenate([encoder.encode([t]) for t in MIXED])
    for per_pass in (1, 2, 5):
        np.testing.assert_allclose(_cosines(encoder.encode(MIXED, per_pass), alone), 1.0, atol=1e-6)
    assert encoder.encode([]).shape == (0, 384) and encoder.forward([]).shape == (0, 384)
    with pytest.raises(ValueError, match="max_texts_per_pass"):
        encoder.encode(MIXED, 0)


def test_attention_groups_change_nothing_but_the_padding(model):
    texts = [*MIXED, "word " * 60, "a", "b c"]
    one_view = UnpaddedBertEncoder(model, attention_group_overhead_tokens=10**6).encode(texts)
    per_text = UnpaddedBertEncoder(model, attention_group_overhead_tokens=0).encode(texts)
    np.testing.assert_allclose(_cosines(one_view, per_text), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="attention_group_overhead_tokens"):
        UnpaddedBertEncoder(model, attention_group_overhead_tokens=-1)


def test_token_ids_truncate_at_the_models_max_seq_length(model):
    ids = UnpaddedBertEncoder(model).token_ids(["word " * 200, "queue full"])
    assert len(ids[0]) == model.max_seq_length == 64 and len(ids[1]) == 4  # [CLS] queue full [SEP]


def test_adapter_wrapped_projections_are_refused_and_a_merged_model_is_run(model, tmp_path):
    lora = EmbedderLoRA(EmbedderLoRAConfig(max_seq_length=64), base=load_embedder(max_seq_length=64))
    with pytest.raises(UnsupportedEmbedderError, match="wrapped") as refused:
        UnpaddedBertEncoder(lora.model)
    assert isinstance(refused.value, ConfigError)
    rng = np.random.default_rng(0)
    lora.load_adapter_state(
        {k: rng.normal(0.0, 0.05, v.shape).astype(np.float32) for k, v in lora.adapter_state().items()}
    )
    lora.merge_and_save(tmp_path / "merged")
    merged = load_embedder(tmp_path / "merged", max_seq_length=64)
    reference = merged.encode(MIXED, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(_cosines(UnpaddedBertEncoder(merged).encode(MIXED), reference), 1.0, atol=1e-5)
    assert (
        np.min(_cosines(reference, model.encode(MIXED, normalize_embeddings=True))) < 0.9999
    )  # it did change


def test_other_module_stacks_are_refused(model):
    from sentence_transformers import SentenceTransformer

    with pytest.raises(UnsupportedEmbedderError, match="Transformer, Pooling"):
        UnpaddedBertEncoder(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    cls_pooled = SentenceTransformer(
        modules=[model[0], type(model[1])(384, pooling_mode="cls")], device="cpu"
    )
    with pytest.raises(UnsupportedEmbedderError, match="mean pooling"):
        UnpaddedBertEncoder(cls_pooled)


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
