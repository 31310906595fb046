"""`x0tta6bl4 serve --front-only` as a real process (no Ray): the mTLS front before a running app.

The app behind it is a real aiohttp server on loopback that echoes the identity headers it got,
standing where Serve's proxy stands in the RayService pod (cluster/kuberay/rayservice.yaml).
"""

import asyncio
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509

from x0tta6bl4.connect import free_local_port as free_port
from x0tta6bl4.security.ca import EmbeddedCA
from x0tta6bl4.security.front_token import FRONT_TOKEN_HEADER, PEER_ID_HEADER
from x0tta6bl4.security.tls import client_context

CLI = str(Path(sys.executable).parent / "x0tta6bl4")


class Echo:
    """A real HTTP app on loopback answering with the identity headers it was given."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port: int = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        async def echo(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "peer": request.headers.get(PEER_ID_HEADER),
                    "token": request.headers.get(FRONT_TOKEN_HEADER),
                    "path": request.path,
                }
            )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "SPIFFE_ENDPOINT_SOCKET"}
    out["X0TTA6BL4_CA_DIR"] = str(tmp_path / "security" / "ca")
    return out


@pytest.fixture
def echo() -> Iterator[Echo]:
    app = Echo()
    yield app
    app.close()


def _connect(port: int, ctx: ssl.SSLContext, proc: subprocess.Popen[str]) -> http.client.HTTPSConnection:
    """A TLS connection to the front, once it listens (fails fast when the process died)."""
    deadline = time.monotonic() + 60
    while True:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        try:
            conn.connect()
            return conn
        except (ConnectionRefusedError, ssl.SSLError):
            conn.close()
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_front_only_forwards_a_verified_caller_to_the_running_app_and_stops_on_sigterm(env, echo, tmp_path):
    ca = EmbeddedCA.open(env["X0TTA6BL4_CA_DIR"])
    alice = ca.issue_svid("spiffe://x0tta6bl4.local/operator/alice")
    port, metrics_port = free_port(), free_port()
    argv = [CLI, "serve", "--front-only", "--port", str(echo.port), "--front-port", str(port)]
    argv += ["--metrics-port", str(metrics_port)]
    proc = subprocess.Popen(
        [*argv, "--front-dns-name", "x0tta6bl4-front.mesh"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        conn = _connect(port, client_context(alice, {ca.trust_domain: ca.bundle()}), proc)
        cert = x509.load_der_x509_certificate(conn.sock.getpeercert(binary_form=True))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {"localhost", "x0tta6bl4-front.mesh"} <= set(san.get_values_for_type(x509.DNSName))
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://x0tta6bl4.local/front"]
        conn.request(
            "GET", "/v1/anomaly/model", headers={PEER_ID_HEADER: "spiffe://x0tta6bl4.local/operator/root"}
        )
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        assert resp.status == 200, body
        token = (tmp_path / "security" / "front.token").read_text().strip()  # beside the CA, as in the pod
        assert body == {
            "peer": "spiffe://x0tta6bl4.local/operator/alice",
            "token": token,
            "path": "/v1/anomaly/model",
        }
        # Outside Ray the front serves its own metrics: the answer it just forwarded is counted.
        scraped = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        )
        assert 'x0tta6bl4_security_front_requests_total{code="200"} 1.0' in scraped
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"mTLS front on 127.0.0.1:{port} (https://localhost:{port}) -> http://127.0.0.1:{echo.port}" in err
    assert err.splitlines()[-1] == "x0tta6bl4 serve: stopping" and out == ""


def _corrupt_ca(tmp_path: Path) -> list[str]:
    ca = tmp_path / "security" / "ca"
    ca.mkdir(parents=True)
    (ca / "state.json").write_text("{")
    return []


def _bad_policy(tmp_path: Path) -> list[str]:
    (tmp_path / "authz.yaml").write_text("rules:\n  - path: v1\n    allow: [everyone]\n")
    return ["--authz", str(tmp_path / "authz.yaml")]


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda _: ["--no-front"], "--front-only needs the front"),
        (_bad_policy, "invalid authorisation policy"),
        (_corrupt_ca, "unreadable CA state"),
    ],
    ids=["no-front", "bad-policy", "unreadable-ca"],
)
def test_front_only_refuses_bad_input_in_one_line_with_exit_2(env, tmp_path, make, needle):
    extra = make(tmp_path)
    proc = subprocess.run(
        [CLI, "serve", "--front-only", "--front-port", "0", *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_front_only_refuses_a_taken_port_in_one_line_with_exit_2(env, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [CLI, "serve", "--front-only", "--front-port", str(port)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
