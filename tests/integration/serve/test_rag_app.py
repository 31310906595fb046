"""The RAG app over HTTP: answers with actions, the cache, bad input as 4xx JSON, durable ingest across restarts."""

from __future__ import annotations

import time

import pytest
import requests

pytestmark = pytest.mark.ray

INCIDENT = "node 412 stopped answering pings, its neighbours lost their links to it and traffic rerouted"
NEW_RUNBOOK = {
    "title": "Solar storm radio interference",
    "text": (
        "When a geomagnetic solar storm hits, long 5 GHz radio links show bursty errors on every node at once. "
        "Do not restart nodes. Lower the modulation rate and wait for the storm to pass; reroute the longest links."
    ),
    "fault_type": "link_degradation",
    "action": "reroute",
}


def rag(base: str, path: str, body: object, **params: str) -> requests.Response:
    return requests.post(f"{base}/v1/rag/{path}", json=body, params=params, timeout=120)


def test_a_query_returns_ranked_runbooks_and_a_remediation(deployed) -> None:
    resp = rag(deployed.base, "query", {"query": INCIDENT, "k": 3})
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert len(doc["passages"]) == 3
    scores = [p["score"] for p in doc["passages"]]
    assert scores == sorted(scores, reverse=True)
    assert len({p["runbook_id"] for p in doc["passages"]}) == 3
    assert doc["fault_type"] == "node_crash" and doc["action"] == "restart_node"


def test_a_repeated_query_comes_from_the_cache_unless_asked_not_to(deployed) -> None:
    body = {"query": "queue depth climbing on gateway uplink, drops rising at peak hour", "k": 2}
    first = rag(deployed.base, "query", body).json()
    second = rag(deployed.base, "query", body).json()
    fresh = rag(deployed.base, "query", body, cache="false").json()
    assert second["cached"] is True and fresh["cached"] is False
    assert [p["runbook_id"] for p in second["passages"]] == [p["runbook_id"] for p in first["passages"]]
    stats = requests.get(f"{deployed.base}/v1/rag/stats", timeout=30).json()
    # The exact repeat was answered by the gateway's tier, with the version it was computed on.
    assert stats["edge_cache"]["hits"] >= 1 and 0 < stats["edge_cache"]["hit_rate"] <= 1
    assert second["corpus_version"] == first["corpus_version"] == stats["corpus_version"]


def _may_lower_nice() -> bool:
    """Whether this process (and so the Ray workers it started) has CAP_SYS_NICE."""
    with open("/proc/self/status") as status:
        caps = next(line for line in status if line.startswith("CapEff:"))
    return bool(int(caps.split()[1], 16) >> 23 & 1)  # CAP_SYS_NICE is capability 23


def test_the_embedding_thread_runs_at_the_configured_nice_value_or_says_why_not(deployed) -> None:
    rag(deployed.base, "query", {"query": "fan failure, chassis temperature alarms", "k": 1}, cache="false")
    thread = requests.get(f"{deployed.base}/v1/rag/stats", timeout=30).json()["compute_thread"]
    requested = deployed.config.rag.compute_nice
    assert thread["requested_nice"] == requested
    if thread["error"] is None:
        assert thread["nice"] == requested
    else:  # refused: only lowering needs the privilege, so the thread keeps a higher value
        assert not _may_lower_nice()
        assert f"cannot set nice {requested}" in thread["error"] and thread["nice"] > requested
    if _may_lower_nice():
        assert thread["error"] is None


def test_the_replica_embeds_queries_without_padding(deployed) -> None:
    before = requests.get(f"{deployed.base}/v1/rag/stats", timeout=30).json()["embedder"]
    assert before["unpadded"] and before["why_padded"] is None
    queries = [{"query": f"relay {i} drops packets, queue depth {10 * i}", "k": 1} for i in range(3)]
    assert rag(deployed.base, "batch", {"queries": queries}, cache="false").status_code == 200
    after = requests.get(f"{deployed.base}/v1/rag/stats", timeout=30).json()["embedder"]
    assert after["texts_embedded"] == before["texts_embedded"] + 3
    # One pass per batch the gateway formed (normally one, for three concurrent queries).
    assert before["forward_passes"] < after["forward_passes"] <= before["forward_passes"] + 3


def test_calls_sent_while_a_batch_embeds_share_batches_and_keep_their_own_answers(deployed) -> None:
    """Six small calls sent right behind a long one: each gets its own answers, every query is embedded
    once, and a call's queries are never spread over several batches.

    How many calls share a batch depends on when each reaches the replica; the merging itself is
    shown, ordered by events, by the ThreadBatcher unit tests. The bounds here hold under any timing.
    """
    from ray import serve

    handle = serve.get_deployment_handle("RunbookRetriever", app_name="x0tta6bl4")
    before = requests.get(f"{deployed.base}/v1/rag/stats", timeout=30).json()["batching"]
    long_text = "relay {} lost power after the storm and its neighbours report the link down; " * 6
    busy = handle.query_many.remote([(long_text.replace("{}", str(i)), 3, False) for i in range(32)])
    calls = [
        handle.query_many.remote([(f"gateway {k}{j} drops packets under load", k, False) for j in range(3)])
        for k in range(1, 7)
    ]
    assert all(isinstance(a, dict) for a in busy.result(timeout_s=120))
    for k, call in enumerate(calls, start=1):
        answers = call.result(timeout_s=120)
        assert [len(a["passages"]) for a in answers] == [k] * 3  # each call its own answers
    after = requests.get(f"{deployed.base}/v1/rag/stats", timeout=30).json()["batching"]
    batches = after["batches"] - before["batches"]
    queries = after["batches"] * after["mean_batch_size"] - before["batches"] * before["mean_batch_size"]
    assert round(queries) == 32 + 18
    max_batch = deployed.config.rag.max_batch_size
    # At least what the batch size forces; at most what each call alone would take.
    assert -(-(32 + 18) // max_batch) <= batches <= -(-32 // max_batch) + 6


def test_a_near_repeat_comes_from_the_retrievers_semantic_tier(deployed) -> None:
    body = {"query": "Memory use on node 77 keeps growing hour after hour until it swaps", "k": 2}
    rag(deployed.base, "query", body)
    before = requests.get(f"{deployed.base}/v1/rag/stats", timeout=30).json()["cache"]["hits_semantic"]
    near = rag(deployed.base, "query", {**body, "query": body["query"] + "."}).json()
    after = requests.get(f"{deployed.base}/v1/rag/stats", timeout=30).json()["cache"]["hits_semantic"]
    assert near["cached"] is True and after == before + 1


def test_an_ingest_through_another_gateway_empties_this_ones_cache(deployed) -> None:
    """The retriever is called directly, as another gateway replica would; the version check catches it."""
    from ray import serve

    body = {"query": "aurora borealis making long radio links flap all night", "k": 1}
    first = rag(deployed.base, "query", body).json()
    assert rag(deployed.base, "query", body).json()["cached"] is True
    handle = serve.get_deployment_handle("RunbookRetriever", app_name="x0tta6bl4")
    doc = {
        "title": "Aurora radio flapping",
        "text": "Aurora borealis nights make long radio links flap. Reroute the polar links until dawn.",
        "fault_type": "link_degradation",
        "action": "reroute",
    }
    answer = handle.ingest.remote([doc]).result(timeout_s=120)
    assert answer["corpus_version"] > first["corpus_version"]
    deadline = time.monotonic() + 10 * deployed.config.rag.corpus_check_s + 10
    while True:
        again = rag(deployed.base, "query", body).json()
        if again["corpus_version"] == answer["corpus_version"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again["corpus_version"] == answer["corpus_version"]
    assert again["passages"][0]["runbook_title"] == "Aurora radio flapping"
    stats = requests.get(f"{deployed.base}/v1/rag/stats", timeout=30).json()["edge_cache"]
    assert stats["invalidations"] >= 1 and stats["corpus_version"] == answer["corpus_version"]


def test_a_batch_is_answered_in_order(deployed) -> None:
    queries = [{"query": INCIDENT, "k": 1}, {"query": "memory keeps growing until the node swaps", "k": 2}]
    resp = rag(deployed.base, "batch", {"queries": queries})
    assert resp.status_code == 200, resp.text
    answers = resp.json()["answers"]
    assert [len(a["passages"]) for a in answers] == [1, 2]
    assert answers[1]["fault_type"] == "memory_leak"
    again = rag(deployed.base, "batch", {"queries": queries}).json()["answers"]
    assert [a["cached"] for a in again] == [True, True]
    assert [a["passages"] for a in again] == [a["passages"] for a in answers]


def test_a_bad_query_batched_with_good_ones_fails_alone(deployed) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bodies = [{"query": f"link flapping between node {i} and node {i + 1}", "k": 2} for i in range(12)]
    bodies[5] = {"query": "link flapping", "k": 1000}  # out of range: refused by the retriever
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: rag(deployed.base, "query", b, cache="false"), bodies))
    assert [a.status_code for a in answers] == [422 if i == 5 else 200 for i in range(len(bodies))]
    assert "k must be" in answers[5].json()["message"]
    assert all(len(a.json()["passages"]) == 2 for i, a in enumerate(answers) if i != 5)


def test_bad_queries_are_4xx_json(deployed) -> None:
    cases = [
        ({"query": "", "k": 3}, 422),
        ({"query": "x", "k": 0}, 422),
        ({"query": "x", "k": 1000}, 422),
        ({"k": 3}, 422),
        ({"query": "x" * 5000, "k": 3}, 422),
        ({"query": "x", "k": 3, "unexpected": True}, 422),
    ]
    for body, status in cases:
        resp = rag(deployed.base, "query", body)
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["message"]
    raw = requests.post(
        f"{deployed.base}/v1/rag/query",
        data=b'{"query": ',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert raw.status_code == 400 and raw.json()["error"] == "malformed_json"
    big = requests.post(
        f"{deployed.base}/v1/rag/query",
        data=b'{"query": "' + b"y" * (deployed.config.http.query_max_bytes + 10) + b'"}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert big.status_code == 413
    assert rag(deployed.base, "batch", {"queries": []}).status_code == 422
    assert rag(deployed.base, "query", {"query": INCIDENT, "k": 3}).status_code == 200


def test_ingested_documents_are_retrievable_and_survive_an_application_restart(deployed) -> None:
    from ray import serve

    before = requests.get(f"{deployed.base}/v1/rag/stats", timeout=30).json()["documents"]
    resp = rag(deployed.base, "documents", {"documents": [NEW_RUNBOOK]})
    assert resp.status_code == 201, resp.text
    assert resp.json()["documents"] == 1 and resp.json()["total_documents"] == before + 1
    query = {"query": "geomagnetic solar storm making radio links bursty everywhere", "k": 3}
    top = rag(deployed.base, "query", query, cache="false").json()["passages"][0]
    assert top["runbook_title"] == NEW_RUNBOOK["title"]

    serve.delete("x0tta6bl4")
    deployed.redeploy(deployed.config)
    after = rag(deployed.base, "query", query, cache="false").json()
    assert after["passages"][0]["runbook_title"] == NEW_RUNBOOK["title"]
    assert requests.get(f"{deployed.base}/v1/rag/stats", timeout=30).json()["documents"] == before + 1


def test_bad_documents_are_refused_and_nothing_is_stored(deployed) -> None:
    before = requests.get(f"{deployed.base}/v1/rag/stats", timeout=30).json()["documents"]
    assert rag(deployed.base, "documents", {"documents": [{"text": "   "}]}).status_code == 422
    assert rag(deployed.base, "documents", {"documents": []}).status_code == 422
    assert requests.get(f"{deployed.base}/v1/rag/stats", timeout=30).json()["documents"] == before


def test_health_and_openapi_are_served(deployed) -> None:
    health = requests.get(f"{deployed.base}/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["model_version"]
    spec = requests.get(f"{deployed.base}/openapi.json", timeout=30).json()
    assert {
        "/v1/anomaly/score",
        "/v1/rag/query",
        "/v1/rag/batch",
        "/v1/rag/documents",
        "/v1/rag/stats",
    } <= set(spec["paths"])
    assert requests.get(f"{deployed.base}/docs", timeout=30).status_code == 200
