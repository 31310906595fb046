"""LoRA on the MiniLM embedder: adapter-only state, deterministic round trips, training, merged export."""

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from x0tta6bl4.corpus import load_incidents, load_runbooks
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mesh.faults import FAULT_TYPES
from x0tta6bl4.models.embedder import (
    EmbedderLoRA,
    EmbedderLoRAConfig,
    load_embedder,
    retrieval_recall_at_k,
    runbook_passages,
    training_pairs,
)

TEXTS = [
    "node 117 unreachable, loss_ratio 1.0, neighbours lost a link",
    "mem_util climbing 0.4 -> 0.9 over 40 ticks",
    "queue full on 48, rx 9x baseline, drops 800/s",
]


def _random_state(emb, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0.0, 0.05, v.shape).astype(np.float32) for k, v in emb.adapter_state().items()}


@pytest.fixture(scope="module")
def base():
    return load_embedder(max_seq_length=128)


@pytest.fixture(scope="module")
def runbooks():
    return load_runbooks()


@pytest.fixture
def emb():
    return EmbedderLoRA()


def test_adapter_state_holds_only_small_lora_tensors(emb):
    state = emb.adapter_state()
    # 6 BERT layers x (query, key, value) x (A, B).
    assert len(state) == 6 * 3 * 2
    assert all(".lora_A." in k or ".lora_B." in k for k in state)
    assert {k.rsplit(".lora_", 1)[0].rsplit(".", 1)[1] for k in state} == {"query", "key", "value"}
    assert all(v.dtype == np.float32 and 8 in v.shape for v in state.values())
    assert emb.num_adapter_bytes() == sum(v.nbytes for v in state.values())
    assert emb.num_adapter_bytes() <= 0.10 * emb.num_full_bytes()
    assert emb.num_full_bytes() > 80e6  # ~22.7 M float32 parameters


def test_fresh_adapters_are_a_no_op_and_round_trips_are_deterministic(emb, base):
    plain = base.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(emb.encode(TEXTS), plain, atol=1e-6)
    zeros = emb.adapter_state()

    state = _random_state(emb, 1)
    emb.load_adapter_state(state)
    adapted = emb.encode(TEXTS)
    assert np.abs(adapted - plain).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(adapted, axis=1), 1.0, atol=1e-5)
    assert all(np.array_equal(state[k], v) for k, v in emb.adapter_state().items())

    other = EmbedderLoRA()
    other.load_adapter_state(emb.adapter_state())
    np.testing.assert_allclose(other.encode(TEXTS), adapted, atol=1e-6)
    np.testing.assert_allclose(emb.encode(TEXTS), adapted, atol=1e-6)

    emb.load_adapter_state(zeros)
    np.testing.assert_allclose(emb.encode(TEXTS), plain, atol=1e-6)


def test_load_adapter_state_refuses_foreign_tensors(emb):
    state = emb.adapter_state()
    name = next(iter(state))
    with pytest.raises(ConfigError, match="does not match"):
        emb.load_adapter_state({**state, "encoder.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ConfigError, match="shape"):
        emb.load_adapter_state({**state, name: np.zeros((2, 2), np.float32)})


def test_config_is_validated_and_targets_must_exist():
    assert EmbedderLoRAConfig().rank == 8 and EmbedderLoRAConfig().alpha == 16
    with pytest.raises(ValueError, match="rank"):
        EmbedderLoRAConfig(rank=0)
    with pytest.raises(ConfigError, match="no modules named"):
        EmbedderLoRA(EmbedderLoRAConfig(target_modules=("q_proj",)))


def test_short_fit_lowers_the_contrastive_loss(emb, runbooks):
    train = load_incidents("train", region=0)
    faults = ("node_crash", "congestion", "memory_leak", "blackhole")
    pairs = training_pairs(
        [next(i for i in train if i.fault_type == f) for f in faults], runbooks, max_words=40
    )
    before = emb.contrastive_loss(pairs)
    stats = emb.fit(pairs, epochs=3, batch_size=4, lr=2e-3, seed=0)
    after = emb.contrastive_loss(pairs)
    assert stats["steps"] == 3 and stats["seconds"] > 0
    assert after < before
    with pytest.raises(ConfigError):
        emb.fit(pairs[:1])


def test_extra_negatives_join_every_batch(emb, runbooks):
    passages = runbook_passages(runbooks, max_words=20)
    assert len(passages) == len(runbooks)
    test = load_incidents("test", region=3)
    incidents = [next(i for i in test if i.fault_type == f) for f in ("congestion", "blackhole")]
    pairs = training_pairs(incidents, runbooks, max_words=20)
    # More candidates in the softmax can only raise the loss of the same anchors.
    assert emb.contrastive_loss(pairs, negatives=passages) > emb.contrastive_loss(pairs) > 0


def test_merged_directory_loads_without_peft_and_matches(emb, tmp_path):
    emb.load_adapter_state(_random_state(emb, 2))
    expected = emb.encode(TEXTS)
    emb.merge_and_save(tmp_path / "merged")
    merged = SentenceTransformer(str(tmp_path / "merged"), device="cpu")
    np.testing.assert_allclose(merged.encode(TEXTS, normalize_embeddings=True), expected, atol=1e-4)
    # The adapters themselves are untouched by the export.
    np.testing.assert_allclose(emb.encode(TEXTS), expected, atol=1e-6)
    files = emb.files_for_registry(prefix="embedder/")
    assert {"embedder/modules.json", "embedder/config.json", "embedder/model.safetensors"} <= files.keys()
    assert all(isinstance(v, bytes) for v in files.values())


def test_training_pairs_use_the_faults_canonical_runbook(runbooks):
    incidents = load_incidents("train", region=0)
    pairs = training_pairs(incidents, runbooks)
    assert len(pairs) == len(incidents)
    crash = next(p for i, p in zip(incidents, pairs, strict=True) if i.fault_type == "node_crash")
    assert crash[0] != crash[1] and crash[1].startswith("Node crash")
    with pytest.raises(ConfigError, match="no runbook"):
        training_pairs(incidents, [rb for rb in runbooks if rb.fault_type != "blackhole"])


def test_recall_at_k_bounds_with_a_bag_of_words_encoder(runbooks):
    vocab: dict[str, int] = {}

    def bow(texts):
        rows = []
        for t in texts:
            v = np.zeros(4096)
            for w in t.lower().split():
                v[vocab.setdefault(w, len(vocab) % 4096)] += 1
            rows.append(v)
        return np.array(rows)

    incidents = load_incidents("test", region=2)
    r3 = retrieval_recall_at_k(bow, incidents, runbooks, k=3)
    assert r3["n"] == len(incidents) and r3["k"] == 3
    assert 0 <= r3["recall_at_k"] <= 1 and r3["mrr"] >= r3["recall_at_k"] / 3
    assert {f"recall_at_k/{f}" for f in FAULT_TYPES} <= r3.keys()
    assert retrieval_recall_at_k(bow, incidents, runbooks, k=len(runbooks))["recall_at_k"] == 1.0


def test_load_embedder_never_treats_a_missing_path_as_a_hub_id(tmp_path):
    with pytest.raises(ConfigError, match="never downloaded"):
        load_embedder(tmp_path / "sentence-transformers" / "all-MiniLM-L6-v2")


def test_an_embedder_with_a_nan_weight_is_refused_at_load(tmp_path):
    import torch

    broken = load_embedder(max_seq_length=128)
    with torch.no_grad():
        next(iter(broken.parameters()))[0, 0] = float("nan")
    broken.save(str(tmp_path / "nan"))
    with pytest.raises(ConfigError, match="NaN or infinite weights"):
        load_embedder(tmp_path / "nan")
