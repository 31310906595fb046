"""Retriever: held-out recall@3, persistence without rebuild, durable ingest, cache path, typed errors, concurrency."""

import json
import shutil
import threading

import numpy as np
import pytest

from x0tta6bl4.corpus import load_incidents
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.rag.config import RetrieverConfig, default_data_dir
from x0tta6bl4.rag.errors import RetrievalInputError
from x0tta6bl4.rag.ranking import QueryResult
from x0tta6bl4.rag.retriever import Retriever

SOLAR_DOC = {
    "title": "Solar brown-out — a solar-powered relay sags at dusk",
    "text": "## Symptoms\n\nEvery evening at sunset the photovoltaic battery of the relay drops below "
    "its cut-off voltage; the relay browns out for a few minutes and its brownout counter increments.\n\n"
    "## Remediation\n\nReplace the battery pack or schedule a maintenance visit.",
}
RUNBOOK_MD = """---
id: fan-failure
title: Fan failure — an enclosure overheats
fault_type: cpu_exhaustion
action: scale_capacity
preconditions: [thermal sensor reads above 80 C]
severity: medium
tags: [thermal, fan]
---
## Symptoms

The enclosure fan stops spinning, the thermal sensor reads above 80 degrees and the
processor throttles its clock.
"""


def embedded(retriever):
    """Texts the retriever has embedded since it was opened (proves what was or was not embedded)."""
    return retriever.stats()["embedder"]["texts_embedded"]


@pytest.fixture(scope="module")
def shared(model, built):
    return Retriever.open(RetrieverConfig(data_dir=built), model=model)


@pytest.fixture
def fresh(model, built, tmp_path):
    """A private copy of the built store."""
    shutil.copytree(built, tmp_path / "rag")
    return Retriever.open(RetrieverConfig(data_dir=tmp_path / "rag"), model=model)


def test_recall_at_3_on_held_out_incidents(shared):
    """Quality gate of the base (not fine-tuned) retriever on the 120 held-out incidents."""
    incidents = load_incidents(split="test")
    results = shared.query_batch([i.text for i in incidents], k=12)  # every runbook ranked
    ranks = np.array(
        [
            next((r for r, p in enumerate(res.passages) if p.fault_type == inc.fault_type), 99)
            for inc, res in zip(incidents, results, strict=True)
        ]
    )
    recall, mrr = float(np.mean(ranks < 3)), float(np.mean(1.0 / (ranks + 1)))
    fault_acc = np.mean(
        [res.fault_type == inc.fault_type for inc, res in zip(incidents, results, strict=True)]
    )
    print(
        f"\nheld-out incidents n={len(incidents)} recall@3={recall:.3f} MRR={mrr:.3f} top fault={fault_acc:.3f}"
    )
    assert len(incidents) >= 100
    assert recall >= 0.9


def test_results_rank_distinct_runbooks_and_recommend_the_fault_runbooks_action(shared):
    result = shared.query(
        "node 812 memory climbs a little every tick, now at 0.93 and the box started swapping", k=5
    )
    ids = [p.runbook_id for p in result.passages]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert [p.score for p in result.passages] == sorted((p.score for p in result.passages), reverse=True)
    assert result.passages[0].runbook_id == "memory-leak"
    assert (result.fault_type, result.action) == ("memory_leak", "restart_node")
    top = result.passages[0]
    assert (
        top.runbook_title.startswith("Memory leak") and top.section and top.text.startswith(top.runbook_title)
    )
    assert json.loads(json.dumps(result.to_dict()))["passages"][0]["runbook_id"] == "memory-leak"


def test_reopen_loads_the_store_without_embedding_and_answers_the_same(model, built):
    first = Retriever.open(RetrieverConfig(data_dir=built), model=model)
    assert embedded(first) == 0  # nothing re-embedded: the persisted index was used
    second = Retriever.open(RetrieverConfig(data_dir=built, cache={"enabled": False}), model=model)
    texts = ["gateway 12 went dark, its subtree moved to other gateways", "queue full, drops on relay 40"]
    a, b = first.query_batch(texts, 4), second.query_batch(texts, 4)
    assert [r.passages for r in a] == [r.passages for r in b]
    assert first.stats()["chunks"] == second.stats()["chunks"] == first.stats()["index_size"] > 12


def test_store_built_with_other_chunking_is_rebuilt(model, built, tmp_path):
    shutil.copytree(built, tmp_path / "rag")
    before = Retriever.open(RetrieverConfig(data_dir=tmp_path / "rag"), model=model).stats()
    after = Retriever.open(RetrieverConfig(data_dir=tmp_path / "rag", chunk_words=60), model=model)
    assert embedded(after) == after.stats()["chunks"] > before["chunks"]  # every chunk embedded once
    assert after.fingerprint != before["fingerprint"]
    reopened = Retriever.open(RetrieverConfig(data_dir=tmp_path / "rag", chunk_words=60), model=model)
    assert embedded(reopened) == 0


def test_query_batch_embeds_each_miss_once_and_serves_repeats_from_the_cache(fresh):
    retriever = fresh
    texts = [
        "node 4 unreachable, neighbours lost a link",
        "link 5-9 lossy, retransmits up",
        "cpu 1.0 on node 3, runqueue latency 200 ms",
    ]
    first = retriever.query_batch(texts, 3)
    assert embedded(retriever) == 3
    assert not any(r.cached for r in first)
    again = retriever.query_batch([t.upper() + "  " for t in texts], 3)  # exact after normalisation
    assert embedded(retriever) == 3  # exact hits need no embedding
    assert all(r.cached for r in again) and [r.passages for r in again] == [r.passages for r in first]
    similar = retriever.query("node 4 unreachable; neighbours lost a link!", 3)  # semantic hit
    assert embedded(retriever) == 4 and similar.cached and similar.passages == first[0].passages
    assert retriever.cached(texts[1].title(), 3).cached and embedded(retriever) == 4
    assert retriever.cached("never asked", 3) is None
    uncached = retriever.query_batch(texts[:1], 3, use_cache=False)[0]
    assert not uncached.cached and embedded(retriever) == 5
    # Batch padding moves scores in the 7th digit at most: same runbooks, same sections.
    assert [(p.runbook_id, p.section) for p in uncached.passages] == [
        (p.runbook_id, p.section) for p in first[0].passages
    ]
    other_k = retriever.query(texts[0], 2)
    assert not other_k.cached and len(other_k.passages) == 2
    stats = retriever.stats()
    assert stats["queries_served"] == 10
    assert stats["cache"]["hits_exact"] == 4 and stats["cache"]["hits_semantic"] == 1
    assert stats["cache"]["misses"] == 4


def test_per_query_k_in_one_batch(shared):
    results = shared.query_batch(["node 3 crashed", "node 3 crashed"], [1, 4])
    assert [len(r.passages) for r in results] == [1, 4]
    with pytest.raises(RetrievalInputError, match="values of k"):
        shared.query_batch(["a", "b"], [1])


def test_ingest_is_durable_and_retrievable_after_reopen(fresh, model):
    retriever = fresh
    added = retriever.ingest([SOLAR_DOC, RUNBOOK_MD])
    ids = added["documents"]
    assert added["added"] == 2 and added["chunks"] == 3
    assert ids[1] == "fan-failure" and ids[0].startswith("solar-brown-out")
    query = "relay browns out every evening at sunset, battery below cut-off voltage"
    assert retriever.query(query, 3).passages[0].runbook_id == ids[0]
    reopened = Retriever.open(retriever.config, model=model)
    assert embedded(reopened) == 0  # the store was loaded, not rebuilt
    result = reopened.query(query, 3)
    assert result.passages[0].runbook_id == ids[0] and result.passages[0].fault_type is None
    fan = reopened.query("enclosure fan stopped, thermal sensor above 80 degrees, clock throttled", 1)
    assert fan.passages[0].runbook_id == "fan-failure"
    assert (fan.fault_type, fan.action) == ("cpu_exhaustion", "scale_capacity")
    assert reopened.stats()["documents"] == 14
    lines = (retriever.config.data_dir / "documents.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ids


def test_ingest_clears_the_cache_and_is_idempotent_per_id(fresh):
    retriever = fresh
    retriever.query("solar battery browns out", 3)
    doc = {**SOLAR_DOC, "id": "solar", "fault_type": "node_crash"}
    assert retriever.ingest([doc]) == {"documents": ["solar"], "added": 1, "chunks": 2}
    assert len(retriever.cache) == 0
    chunks = retriever.stats()["chunks"]
    assert retriever.ingest([doc]) == {"documents": ["solar"], "added": 0, "chunks": 0}  # same content
    assert retriever.stats()["chunks"] == chunks
    hit = retriever.query("solar battery browns out", 3)
    assert hit.passages[0].runbook_id == "solar" and hit.passages[0].action == "restart_node"  # healed_by
    with pytest.raises(RetrievalInputError, match="taken"):
        retriever.ingest([{**doc, "text": "something else entirely"}])
    with pytest.raises(RetrievalInputError, match="taken"):
        retriever.ingest([RUNBOOK_MD.replace("id: fan-failure", "id: node-crash")])


def test_a_torn_ingest_is_dropped_and_the_store_rebuilt(fresh, model):
    retriever = fresh
    retriever.ingest([{**SOLAR_DOC, "id": "solar"}])
    with (retriever.config.data_dir / "documents.jsonl").open("a") as f:
        f.write('{"id": "half-writ')  # a crash in the middle of the next ingest
    reopened = Retriever.open(retriever.config, model=model)
    assert embedded(reopened) == reopened.stats()["chunks"]  # rebuilt
    assert [d.id for d in reopened.documents][-1] == "solar"
    assert reopened.stats()["documents"] == 13
    assert "half" not in (retriever.config.data_dir / "documents.jsonl").read_text()


def test_another_process_ingest_is_seen_after_refresh(fresh, model):
    retriever = fresh
    other = Retriever.open(retriever.config, model=model)
    assert not retriever.refresh()
    assert retriever.corpus_version == other.corpus_version == 0  # the packaged runbooks only
    other.ingest([RUNBOOK_MD])
    assert other.corpus_version > 0 and retriever.corpus_version == 0
    assert retriever.refresh()
    assert "fan-failure" in [d.id for d in retriever.documents]
    assert retriever.stats()["chunks"] == other.stats()["chunks"]
    assert retriever.corpus_version == other.corpus_version == retriever.stats()["corpus_version"]


@pytest.mark.parametrize(
    ("text", "k", "message"),
    [
        ("", 3, "non-empty"),
        ("   \n", 3, "non-empty"),
        (None, 3, "non-empty"),
        ("x" * 4001, 3, "4001 characters"),
        ("node down", 0, "k must be"),
        ("node down", 21, "k must be"),
        ("node down", True, "k must be"),
        ("node down", 2.0, "k must be"),
    ],
)
def test_invalid_queries_raise_a_typed_error(shared, text, k, message):
    with pytest.raises(RetrievalInputError, match=message) as info:
        shared.query_batch(["fine", text], k)
    assert isinstance(info.value, ConfigError)
    with pytest.raises(RetrievalInputError, match=message):
        shared.check_query(text, k)
    with pytest.raises(RetrievalInputError, match=message):
        shared.cached(text, k)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"title": "t", "text": "  "}, "'text' must be"),
        ({"title": "", "text": "body"}, "'title' must be"),
        ({"title": "t", "text": "x" * 200_001}, "200001 characters"),
        ({"title": "t", "text": "body", "fault_type": "meteor"}, "unknown fault_type"),
        ({"title": "t", "text": "body", "action": "pray"}, "unknown action"),
        ({"title": "t", "text": "body", "owner": "me"}, "unknown keys"),
        ({"title": "t", "text": "body", "id": "Bad Id"}, "id 'Bad Id'"),
        ("## No front matter\n\ntext", "front matter"),
        (RUNBOOK_MD.replace("fault_type: cpu_exhaustion", "fault_type: meteor"), "unknown fault type"),
        (42, "Markdown or a mapping"),
    ],
)
def test_invalid_documents_raise_a_typed_error_and_store_nothing(fresh, document, message):
    retriever = fresh
    with pytest.raises(RetrievalInputError, match=message):
        retriever.ingest([SOLAR_DOC, document])
    assert embedded(retriever) == 0 and retriever.stats()["documents"] == 12
    assert not (retriever.config.data_dir / "documents.jsonl").read_text()


def test_ingest_refuses_empty_lists_and_duplicate_ids(fresh):
    retriever = fresh
    with pytest.raises(RetrievalInputError, match="non-empty list"):
        retriever.ingest([])
    with pytest.raises(RetrievalInputError, match="non-empty list"):
        retriever.ingest(SOLAR_DOC)
    with pytest.raises(RetrievalInputError, match="share an id"):
        retriever.ingest([SOLAR_DOC, SOLAR_DOC])


def test_an_ingest_of_more_chunks_than_allowed_is_refused_before_any_embedding(model, built, tmp_path):
    shutil.copytree(built, tmp_path / "rag")
    retriever = Retriever.open(RetrieverConfig(data_dir=tmp_path / "rag", max_ingest_chunks=3), model=model)
    long_doc = {"title": "Long", "text": " ".join(f"word{i}" for i in range(2000))}
    before = embedded(retriever)
    with pytest.raises(RetrievalInputError, match="at most 3"):
        retriever.ingest([long_doc])
    assert embedded(retriever) == before
    assert not (retriever.config.data_dir / "documents.jsonl").read_text()
    assert retriever.ingest([SOLAR_DOC])["added"] == 1  # a small one still fits


def test_queries_run_safely_while_documents_are_ingested(fresh):
    retriever = fresh
    errors, results = [], []
    stop = threading.Event()

    def ask():
        try:
            while not stop.is_set():
                results.extend(retriever.query_batch(["node 77 is dark, zero counters"], 3))
                retriever.cache.clear()
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=ask) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for n in range(3):
            retriever.ingest(
                [{"title": f"Site note {n}", "text": f"Tower {n} has a spare radio in cabinet {n}."}]
            )
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=30)
    assert not errors and results
    assert all(r.passages[0].runbook_id in {"node-crash", "gateway-outage"} for r in results)
    stats = retriever.stats()
    assert stats["documents"] == 15 and stats["chunks"] == stats["index_size"]


def test_config_defaults_describe_every_field(monkeypatch, tmp_path):
    assert all(f.description for f in RetrieverConfig.model_fields.values())
    monkeypatch.setenv("X0TTA6BL4_RAG_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path and RetrieverConfig().data_dir == tmp_path
    monkeypatch.delenv("X0TTA6BL4_RAG_DIR")
    cfg = RetrieverConfig()
    assert str(cfg.data_dir) == ".x0tta6bl4/rag" and (cfg.ef, cfg.m, cfg.max_k) == (64, 16, 20)


def test_search_takes_embeddings_directly_and_stats_count(shared):
    vectors = shared.embed(["relay queue 100 packets, ingress flood", "rogue route advertisements"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    dense = shared.search(vectors, [2, 2])
    assert all(isinstance(r, QueryResult) and len(r.passages) == 2 for r in dense)
    stats = shared.stats()
    assert stats["documents"] == 12 and stats["ef"] == 64 and stats["index_size"] == stats["chunks"]


def test_result_dict_carries_every_field_of_its_passages(shared):
    import dataclasses

    result = shared.query("gateway uplink is down, nothing leaves the region", 3)
    assert result.to_dict()["passages"] == [dataclasses.asdict(p) for p in result.passages]
