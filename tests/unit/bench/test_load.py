"""The benchmarks' HTTP load generator against a real local server that drops some connections."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from x0tta6bl4.bench._load import run_load


class _DropEveryThird(http.server.BaseHTTPRequestHandler):
    """Answers 200 on keep-alive connections, but closes every third request's without answering."""

    protocol_version = "HTTP/1.1"
    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with self.lock:
            type(self).count += 1
            drop = type(self).count % 3 == 0
        if drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DropEveryThird)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_dropped_connections_are_counted_and_the_load_goes_on(flaky_server: str) -> None:
    out = run_load(flaky_server, [b"{}"], concurrency=4, duration_s=1.0, warmup_s=0.2)
    assert out["connection_errors"] > 0
    assert out["statuses"] == {"200": out["requests"]} and out["requests"] > 0
    assert out["requests_per_s"] > 0


def test_a_server_that_never_answers_fails_the_load() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RuntimeError, match="connection errors and no answer"):
        run_load(f"http://127.0.0.1:{port}/", [b"{}"], concurrency=2, duration_s=0.5, warmup_s=0.0)
