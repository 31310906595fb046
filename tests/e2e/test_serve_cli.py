"""`x0tta6bl4 serve` from a fresh registry: bootstraps a detector, answers HTTP, stops cleanly; bad options exit 2."""

import json
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.e2e.conftest import BIN, REPO

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_bootstraps_answers_and_stops(cli_env, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "x0tta6bl4"),
            "serve",
            "--port",
            str(port),
            "--seconds",
            "240",
            "--registry",
            str(tmp_path / "registry"),
            "--rag-dir",
            str(tmp_path / "rag"),
        ],
        cwd=tmp_path,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 200
        health = None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
                    health = json.load(resp)
                    break
            except OSError:
                time.sleep(1)
        assert health is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        assert health["status"] == "ok" and health["model_version"].startswith("v0001-")
        req = urllib.request.Request(
            f"{base}/v1/rag/query",
            data=json.dumps(
                {"query": "packets silently vanish at node 7, it advertises a fake short route", "k": 3}
            ).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.load(resp)
        assert answer["action"] and len(answer["passages"]) == 3
        assert (tmp_path / "registry" / "graphsage-anomaly" / "PROMOTED.json").exists()
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "ready:" in err and "/docs" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "0"], "port"),
        (["--port", "http"], "invalid int value"),
        (["--config", "/nonexistent.yaml"], "does not exist"),
    ],
)
def test_bad_serve_options_are_one_line_and_exit_2(cli_env, tmp_path, args, needle):
    proc = subprocess.run(
        [str(BIN / "x0tta6bl4"), "serve", *args],
        cwd=REPO,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
