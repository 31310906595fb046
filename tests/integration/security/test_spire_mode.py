"""SPIRE mode: with SPIFFE_ENDPOINT_SOCKET set, SVIDs and bundles come from a real gRPC Workload API."""

import http.client
import json
import threading

import grpc
import pytest
from spiffe._proto import workload_pb2, workload_pb2_grpc

from tests.integration.security.workload_api import WorkloadApiServer
from x0tta6bl4.security.authz import Policy
from x0tta6bl4.security.ca import EmbeddedCA
from x0tta6bl4.security.front import BackgroundFront, MtlsFront
from x0tta6bl4.security.source import WorkloadApiSource, open_source
from x0tta6bl4.security.tls import client_context

FRONT_ID = "spiffe://x0tta6bl4.local/front"


@pytest.fixture
def agent(tmp_path):
    ca = EmbeddedCA.open(tmp_path / "ca")
    server = WorkloadApiServer(ca, FRONT_ID, str(tmp_path / "agent.sock")).start()
    yield server
    server.stop()


def test_the_source_takes_svid_and_bundle_from_the_workload_api(agent, monkeypatch):
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", agent.address)
    source = open_source("spiffe://x0tta6bl4.local/ignored-spire-names-the-id")
    try:
        assert isinstance(source, WorkloadApiSource)
        assert str(source.svid().spiffe_id) == FRONT_ID
        bundle = source.bundles()[agent.ca.trust_domain]
        assert set(bundle.authorities) == set(agent.ca.bundle().authorities)
    finally:
        source.close()


def test_a_rotation_pushed_by_the_agent_reaches_the_source_and_its_subscribers(agent):
    source = WorkloadApiSource(agent.address, timeout_s=10)
    try:
        changed = threading.Event()
        source.subscribe(changed.set)
        before = source.svid().serial
        after = agent.rotate().serial
        assert changed.wait(10)
        assert source.svid().serial == after != before
    finally:
        source.close()


def test_the_agent_refuses_calls_without_the_security_header(agent):
    with grpc.insecure_channel(agent.address) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert agent.refused_without_header == 1


def test_the_mtls_front_runs_on_workload_api_svids(agent, tmp_path):
    import asyncio

    from aiohttp import web

    async def ok(request):
        return web.json_response({"peer": request.headers.get("X-X0tta6bl4-Peer-Id")})

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start_upstream():
        app = web.Application()
        app.router.add_get("/v1/x", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    upstream_port = asyncio.run_coroutine_threadsafe(start_upstream(), loop).result(10)
    source = WorkloadApiSource(agent.address, timeout_s=10)
    policy = Policy.model_validate(
        {"rules": [{"path": "/v1/**", "allow": ["spiffe://x0tta6bl4.local/operator/*"]}]}
    )
    front = BackgroundFront(
        MtlsFront(source, policy, f"http://127.0.0.1:{upstream_port}", "s" * 43), "127.0.0.1", 0
    )
    port = front.start()
    try:
        operator = agent.ca.issue_svid("spiffe://x0tta6bl4.local/operator/alice")
        ctx = client_context(operator, {agent.ca.trust_domain: agent.ca.bundle()})
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        conn.request("GET", "/v1/x")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read()) == {"peer": "spiffe://x0tta6bl4.local/operator/alice"}
        from cryptography import x509

        served = x509.load_der_x509_certificate(conn.sock.getpeercert(binary_form=True))
        assert served.serial_number == source.svid().serial  # the front presents the agent's SVID
    finally:
        front.stop()
        source.close()
        loop.call_soon_threadsafe(loop.stop)
