"""`x0tta6bl4 run` traced over OTLP/HTTP to a local receiver: MAPE-K phases, gateway requests, batches, links."""

import secrets
import subprocess
import time

import pytest
import requests

from tests.e2e.conftest import BIN, REPO
from tests.e2e.test_run_job import _free_port, _run
from tests.otlp import OtlpReceiver

pytestmark = pytest.mark.slow

PHASES = {"mapek.tick", "mapek.monitor", "mapek.score", "mapek.analyze", "mapek.plan", "mapek.knowledge"}


def _operator(tmp_path, env):
    issued = _run(["identity", "issue", "operator/ci", "--out", str(tmp_path / "op")], env, 60)
    assert issued.returncode == 0, issued.stderr
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the platform's bundle
    session.cert = (str(tmp_path / "op" / "svid.pem"), str(tmp_path / "op" / "svid.key"))
    session.verify = str(tmp_path / "op" / "bundle.pem")
    return session


def _traceparent(trace_id):
    return {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}


def _score_through_the_front(session, front, trace_id):
    """One scoring request through the mTLS front, with our own W3C ``traceparent``."""
    model = session.get(f"{front}/v1/anomaly/model", timeout=30).json()
    names = model["feature_names"]
    body = {
        "node_ids": [1, 2, 3],
        "feature_names": names,
        "features": [[0.1] * len(names)] * 3,
        "edges": [[1, 2], [2, 3]],
    }
    answer = session.post(f"{front}/v1/anomaly/score", json=body, headers=_traceparent(trace_id), timeout=30)
    assert answer.status_code == 200, answer.text


def test_a_traced_run_links_scoring_action_and_verification_in_one_trace(tmp_path, cli_env):
    serve_port, front_port = _free_port(), _free_port()
    args = ["run", "--nodes", "400", "--regions", "2", "--ticks", "50", "--seed", "3"]
    args += ["--faults-per-1000-ticks", "100", "--no-ebpf", "--runs-dir", str(tmp_path), "--run-id", "traced"]
    args += ["--serve-forever", "--serve-port", str(serve_port), "--front-port", str(front_port)]
    with OtlpReceiver() as otlp:
        env = dict(cli_env)
        env.update(
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint.removesuffix("/v1/traces"),
            OTEL_BSP_SCHEDULE_DELAY="200",
        )
        env.pop("OTEL_SDK_DISABLED", None)
        proc = subprocess.Popen(
            [str(BIN / "x0tta6bl4"), *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        our_trace, rag_trace = secrets.token_hex(16), secrets.token_hex(16)
        try:
            session = _operator(tmp_path, cli_env)
            front = f"https://localhost:{front_port}"
            deadline, healthy = time.time() + 300, False
            while time.time() < deadline and proc.poll() is None and not healthy:
                try:
                    healthy = session.get(f"{front}/healthz", timeout=5).status_code == 200
                except requests.RequestException:
                    time.sleep(1)
            assert healthy, "the front never answered"
            _score_through_the_front(session, front, our_trace)
            query = {"query": "node unreachable after a crash, neighbours lose routes", "k": 2}
            headers = _traceparent(rag_trace)
            answer = session.post(
                f"{front}/v1/rag/query?cache=false", json=query, headers=headers, timeout=60
            )
            assert answer.status_code == 200, answer.text
            deadline = time.time() + 30
            while time.time() < deadline and not (
                any(s["trace_id"] == our_trace for s in otlp.named("anomaly.batch"))
                and any(s["trace_id"] == rag_trace for s in otlp.named("rag.query"))
            ):
                time.sleep(0.2)
        finally:
            proc.terminate()
            _out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        spans = list(otlp.spans)

    names = {s["name"] for s in spans}
    assert names >= PHASES | {"anomaly.batch", "mapek.execute", "mapek.verify", "mesh.action"}, names
    by_id = {s["span_id"]: s for s in spans}
    component = {s["name"]: s["resource"]["x0tta6bl4.component"] for s in spans}
    assert component["mapek.tick"] == "controller" and component["anomaly.batch"] == "anomaly"
    assert component["mesh.action"] == "mesh-shard"
    assert spans[0]["resource"]["service.namespace"] == "x0tta6bl4"

    # The gateway request: the caller's traceparent through the front, the server span, the batch.
    ours = [s for s in spans if s["trace_id"] == our_trace]
    server = [s for s in ours if s["name"] == "POST /v1/anomaly/score"]
    assert server and server[0]["resource"]["x0tta6bl4.component"] == "gateway"
    batch = [s for s in ours if s["name"] == "anomaly.batch"]
    assert batch and batch[0]["resource"]["x0tta6bl4.component"] == "anomaly"
    # A retrieval request likewise reaches the rag replica's span.
    rag = {s["name"]: s for s in spans if s["trace_id"] == rag_trace}
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
