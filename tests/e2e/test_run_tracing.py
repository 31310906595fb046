"""`x0tta6bl4 run` traced over OTLP/HTTP to a local receiver: MAPE-K phases, gateway requests, batches, links.

The run is the session's shared small run (tests/e2e/conftest.py): its processes export to the
session's receiver (tests/otlp.py, decoded with opentelemetry-proto), and once the run is over its
``--serve-forever`` front took a scoring request and a retrieval request, each carrying a W3C
``traceparent`` of ours.
"""

import pytest
import requests

from tests.e2e.conftest import RAG_TRACE, SCORE_TRACE

pytestmark = pytest.mark.slow

PHASES = {"mapek.tick", "mapek.monitor", "mapek.score", "mapek.analyze", "mapek.plan", "mapek.knowledge"}


def test_a_traced_run_links_scoring_action_and_verification_in_one_trace(small_run):
    front = small_run.front
    health = front.health
    assert isinstance(health, requests.Response) and health.status_code == 200, (
        f"the front never answered: {health}; {small_run.proc.stderr[-3000:]}"
    )
    for answer in (front.score, front.rag_query):  # through the mTLS front, with our traceparent
        assert isinstance(answer, requests.Response) and answer.status_code == 200, getattr(
            answer, "text", answer
        )
    assert small_run.proc.returncode == 0, small_run.proc.stderr[-3000:]
    spans = small_run.spans

    names = {s["name"] for s in spans}
    assert names >= PHASES | {"anomaly.batch", "mapek.execute", "mapek.verify", "mesh.action"}, names
    by_id = {s["span_id"]: s for s in spans}
    component = {s["name"]: s["resource"]["x0tta6bl4.component"] for s in spans}
    assert component["mapek.tick"] == "controller" and component["anomaly.batch"] == "anomaly"
    assert component["mesh.action"] == "mesh-shard"
    assert spans[0]["resource"]["service.namespace"] == "x0tta6bl4"

    # The gateway request: the caller's traceparent through the front, the server span, the batch.
    ours = [s for s in spans if s["trace_id"] == SCORE_TRACE]
    server = [s for s in ours if s["name"] == "POST /v1/anomaly/score"]
    assert server and server[0]["resource"]["x0tta6bl4.component"] == "gateway"
    batch = [s for s in ours if s["name"] == "anomaly.batch"]
    assert batch and batch[0]["resource"]["x0tta6bl4.component"] == "anomaly"
    # A retrieval request likewise reaches the rag replica's span.
    rag = {s["name"]: s for s in spans if s["trace_id"] == RAG_TRACE}
    assert {"POST /v1/rag/query", "rag.query"} <= rag.keys(), rag.keys()
    assert rag["rag.query"]["resource"]["x0tta6bl4.component"] == "rag"

    # One controller trace: the tick's scoring request and batch, the action, where it was applied,
    # and its verification ticks later.
    linked = []
    for verify in (s for s in spans if s["name"] == "mapek.verify"):
        execute = by_id.get(verify["parent_span_id"])
        if execute is None or execute["name"] != "mapek.execute":
            continue
        trace = [s for s in spans if s["trace_id"] == execute["trace_id"]]
        trace_names = {s["name"] for s in trace}
        if {"mapek.tick", "mapek.score", "anomaly.batch", "mesh.action"} <= trace_names:
            linked.append((execute, verify, trace))
    assert linked, "no trace holds a scoring request, an action and its verification"
    execute, verify, trace = linked[0]
    score = next(s for s in trace if s["name"] == "mapek.score")
    assert any(s["name"] == "anomaly.batch" and s["parent_span_id"] == score["span_id"] for s in trace)
    assert any(s["name"] == "mesh.action" and s["parent_span_id"] == execute["span_id"] for s in trace)
    assert verify["attributes"]["action"] == execute["attributes"]["action"]
    assert verify["links"], "the verification links the tick that judged it"
