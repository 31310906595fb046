"""The mTLS front, with real TLS 1.3 handshakes on loopback: who gets refused, how, and rotation under load.

The six refusals the zero-trust issue names: no client certificate, wrong trust domain, an ID not
allowed on the route (403 there only), an expired SVID, a revoked SVID (within one refresh), a
TLS 1.2 client. The app behind the front is a real aiohttp server that echoes what it received.
"""

import asyncio
import datetime as dt
import http.client
import json
import ssl
import threading
import time

import pytest
from aiohttp import web

from x0tta6bl4.observability.metrics import REGISTRY
from x0tta6bl4.security.authz import Policy
from x0tta6bl4.security.ca import EmbeddedCA
from x0tta6bl4.security.front import BackgroundFront, MtlsFront
from x0tta6bl4.security.front_token import FRONT_TOKEN_HEADER, PEER_ID_HEADER
from x0tta6bl4.security.source import EmbeddedSource
from x0tta6bl4.security.tls import client_context, negotiated_group

TOKEN = "t" * 43
POLICY = Policy.model_validate(
    {
        "rules": [
            {"path": "/v1/rag/documents", "allow": ["spiffe://x0tta6bl4.local/operator/*"]},
            {
                "path": "/v1/**",
                "allow": ["spiffe://x0tta6bl4.local/operator/*", "spiffe://x0tta6bl4.local/controller"],
            },
        ]
    }
)


class Echo:
    """A real HTTP app on loopback that answers with the identity headers it was given."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.port = None
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self):
        async def echo(request):
            body = await request.read()
            if request.path == "/v1/crash/plain":  # what Serve's proxy says for a dead gateway replica
                return web.Response(status=500, text="Internal Server Error")
            if request.path == "/v1/crash/json":  # the app's own error
                return web.json_response({"error": "internal", "message": "boom", "details": []}, status=500)
            return web.json_response(
                {
                    "peer": request.headers.get(PEER_ID_HEADER),
                    "token_ok": request.headers.get(FRONT_TOKEN_HEADER) == TOKEN,
                    "path": request.path,
                    "query": request.query_string,
                    "bytes": len(body),
                }
            )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return EmbeddedCA.open(tmp_path_factory.mktemp("front") / "ca", ca_ttl_s=6 * 3600)


@pytest.fixture(scope="module")
def front(ca):
    echo = Echo()
    source = EmbeddedSource(
        "spiffe://x0tta6bl4.local/front", ca.directory, ttl_s=6, ip_addresses=["127.0.0.1"], refresh_s=0.2
    )
    running = BackgroundFront(
        MtlsFront(source, POLICY, f"http://127.0.0.1:{echo.port}", TOKEN), "127.0.0.1", 0
    )
    running.port = running.start()
    yield running
    running.stop()
    source.close()


def bundles(ca):
    return {ca.trust_domain: ca.bundle()}


def connect(front, ctx):
    conn = http.client.HTTPSConnection("127.0.0.1", front.port, context=ctx, timeout=10)
    conn.connect()
    return conn


def call(conn, method="POST", path="/v1/anomaly/score", body=b"{}", headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read() or b"null")


def refused_at_handshake_or_first_read(front, ctx):
    """True when TLS refuses the client (TLS 1.3 servers report a client-certificate failure after the
    client's side of the handshake has finished, so the refusal may surface on the first read)."""
    try:
        conn = connect(front, ctx)
        call(conn, "GET", "/v1/anomaly/model")
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, OSError):
        return True
    return False


def handshake_refusals():
    """Every reason the front has counted a refused peer for, with its count so far (prometheus-client:
    no Ray here)."""
    metric = "x0tta6bl4_security_handshake_failures_total"
    return {
        sample.labels["reason"]: sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == metric
    }


def refusals(reason):
    """The front's refused-handshake counter for ``reason``."""
    return handshake_refusals().get(reason, 0.0)


def refusals_since(before):
    return {r: n - before.get(r, 0.0) for r, n in handshake_refusals().items() if n != before.get(r, 0.0)}


def denials(rule):
    return REGISTRY.get_sample_value("x0tta6bl4_security_authz_denials_total", {"rule": rule}) or 0.0


def test_an_operator_gets_through_with_its_verified_id_and_spoofed_headers_are_dropped(front, ca):
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/operator/alice")
    groups_before = sum(front.front.stats.groups.values())
    conn = connect(front, client_context(svid, bundles(ca)))
    assert conn.sock.version() == "TLSv1.3"
    status, body = call(
        conn,
        path="/v1/rag/documents?x=1",
        body=b"abc",
        headers={PEER_ID_HEADER: "spiffe://x0tta6bl4.local/operator/root", FRONT_TOKEN_HEADER: "guess"},
    )
    assert status == 200
    assert body == {
        "peer": "spiffe://x0tta6bl4.local/operator/alice",
        "token_ok": True,
        "path": "/v1/rag/documents",
        "query": "x=1",
        "bytes": 3,
    }
    # The front logged and counted how the connection was secured: the group both ends negotiated.
    assert sum(front.front.stats.groups.values()) == groups_before + 1
    assert front.front.stats.groups.get(negotiated_group(conn.sock), 0) >= 1
    assert negotiated_group(conn.sock) in ("x25519", "X25519MLKEM768")  # OpenSSL's default preference


def test_a_plain_text_5xx_behind_the_front_becomes_a_json_503_and_json_errors_pass_through(front, ca):
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/operator/alice")
    conn = connect(front, client_context(svid, bundles(ca)))
    conn.request("POST", "/v1/crash/plain", body=b"{}")
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 503 and resp.getheader("Retry-After") == "1"
    assert body["error"] == "unavailable" and "Internal Server Error" in body["message"]
    status, body = call(conn, path="/v1/crash/json")
    assert status == 500 and body["message"] == "boom"


def test_refused_without_a_client_certificate(front, ca):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca.bundle().to_pem().decode())
    before = refusals("no-certificate")
    assert refused_at_handshake_or_first_read(front, ctx)
    # OpenSSL ends this handshake itself; the front counts the alert it sent.
    assert _eventually(lambda: refusals("no-certificate") == before + 1)


def test_refused_from_another_trust_domain(front, tmp_path):
    other = EmbeddedCA.open(tmp_path / "partner", trust_domain="partner.example")
    svid = other.issue_svid("spiffe://partner.example/operator/alice")
    ctx = client_context(svid, {other.trust_domain: other.bundle()})
    ctx.verify_mode = ssl.CERT_NONE  # the client trusts anything; the front must still refuse it
    before = refusals("untrusted")
    assert refused_at_handshake_or_first_read(front, ctx)
    assert _eventually(lambda: refusals("untrusted") == before + 1)


def test_an_id_not_allowed_on_a_route_gets_403_there_only(front, ca):
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/controller")
    conn = connect(front, client_context(svid, bundles(ca)))
    documents, unruled = denials("/v1/rag/documents"), denials("none")
    status, body = call(conn, path="/v1/rag/documents")
    assert status == 403 and body["error"] == "forbidden"
    status, body = call(conn, path="/v1/anomaly/score")
    assert status == 200 and body["peer"] == "spiffe://x0tta6bl4.local/controller"
    status, _ = call(conn, "GET", "/admin")
    assert status == 403
    # Denials count by the refusing rule's pattern (bounded by the policy), never by path or caller.
    assert (denials("/v1/rag/documents"), denials("none")) == (documents + 1, unruled + 1)


def test_refused_once_expired(front, ca):
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/operator/shortlived", ttl_s=3)
    ctx = client_context(svid, bundles(ca))
    conn = connect(front, ctx)
    first = call(conn)
    assert first[0] == 200, first
    time.sleep(max(0.0, (svid.not_after - dt.datetime.now(dt.UTC)).total_seconds()) + 0.3)
    status, body = call(conn)  # the open connection is refused too, not only new handshakes
    assert status == 401 and body["details"][0]["reason"] == "expired"
    assert refused_at_handshake_or_first_read(front, ctx)


def test_refused_within_one_refresh_of_revocation(front, ca):
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/operator/bob")
    conn = connect(front, client_context(svid, bundles(ca)))
    assert call(conn)[0] == 200
    ca.revoke_svid(svid.leaf)
    deadline = time.monotonic() + 2.0  # refresh is 0.2 s in this fixture
    status = 200
    while status == 200 and time.monotonic() < deadline:
        status, body = call(conn)
    assert status == 401 and body["details"][0]["reason"] == "revoked"
    before = refusals("revoked")
    fresh = connect(front, client_context(svid, bundles(ca)))
    assert call(fresh)[0] == 401
    assert refusals("revoked") == before + 1  # refused by the front's own check, counted as one


def test_refused_over_tls_1_2(front, ca):
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/operator/alice")
    ctx = client_context(svid, bundles(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    before = refusals("protocol-version")
    assert refused_at_handshake_or_first_read(front, ctx)
    assert _eventually(lambda: refusals("protocol-version") == before + 1)


def test_rotation_under_load_fails_no_request(front, ca):
    """The front's SVID (TTL 6 s) renews about every 3 s; clients also renew theirs and reconnect."""
    rebuilds_before = front.front.stats.context_rebuilds
    refusals_before = handshake_refusals()
    serials = set()
    failures, done = [], 0
    deadline = time.monotonic() + 10.0
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/operator/load", ttl_s=6)

    def fresh_connection():
        """A fresh handshake with the current SVIDs (the client renews its own at half-life)."""
        nonlocal svid
        if svid.renew_at(0) <= dt.datetime.now(dt.UTC):
            svid = ca.issue_svid("spiffe://x0tta6bl4.local/operator/load", ttl_s=6)
        conn = connect(front, client_context(svid, bundles(ca)))
        serials.add(conn.sock.getpeercert(binary_form=True))
        return conn, time.monotonic()

    conn, opened = fresh_connection()
    on_connection = 0
    while time.monotonic() < deadline:
        if on_connection == 25:  # a new connection now and then
            conn.close()
            conn, opened = fresh_connection()
            on_connection = 0
        on_connection += 1
        try:
            status, body = call(conn)
            if status != 200:
                failures.append((status, body))
        except Exception as exc:
            client_age_s = (dt.datetime.now(dt.UTC) - svid.not_before).total_seconds()
            failures.append(
                f"request {on_connection} on a connection {time.monotonic() - opened:.1f} s old "
                f"(client SVID {client_age_s:.1f} s old): {exc!r}"
            )
            # Say each broken connection once: every later request on it would fail the same way.
            conn.close()
            conn, opened = fresh_connection()
            on_connection = 0
        done += 1
    conn.close()
    assert failures == [], {"failures": failures, "front refusals": refusals_since(refusals_before)}
    assert done > 100
    assert front.front.stats.context_rebuilds - rebuilds_before >= 2
    assert len(serials) >= 3  # handshakes saw at least three different front certificates


def _eventually(check, timeout_s=5.0):
    """The front counts on its own event loop: give it a moment after the client saw the refusal."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
