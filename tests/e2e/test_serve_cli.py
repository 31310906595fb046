"""`x0tta6bl4 serve` from a fresh registry: bootstraps a detector, answers through the mTLS front, stops; bad options exit 2."""

import subprocess
import time

import pytest
import requests

from tests.e2e.conftest import BIN, REPO
from x0tta6bl4.bench.serve import snapshot_bodies
from x0tta6bl4.connect import free_local_port as free_port
from x0tta6bl4.security.ca import EmbeddedCA

pytestmark = pytest.mark.slow


def test_serve_bootstraps_answers_through_the_mtls_front_and_stops(cli_env, tmp_path):
    """The whole zero-trust path: `x0tta6bl4 serve` puts Serve on loopback behind the mTLS front; an
    operator's SVID from one `identity issue` command gets in, the route policy and stream ownership
    hold, and nothing reaches the app around the front."""
    port, front_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "x0tta6bl4"),
            "serve",
            "--port",
            str(port),
            "--front-port",
            str(front_port),
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
    base = f"https://localhost:{front_port}"
    try:
        issued = subprocess.run(
            [str(BIN / "x0tta6bl4"), "identity", "issue", "operator/alice", "--out", "alice"],
            cwd=tmp_path,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert issued.returncode == 0, issued.stderr
        alice = _client(tmp_path / "alice")
        deadline = time.time() + 200
        health = None
        while time.time() < deadline and proc.poll() is None:
            try:
                resp = alice.get(f"{base}/healthz", timeout=5)
                if resp.status_code == 200:
                    health = resp.json()
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        assert health is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        assert health["status"] == "ok" and health["model_version"].startswith("v0001-")
        query = {"query": "packets silently vanish at node 7, it advertises a fake short route", "k": 3}
        answer = alice.post(f"{base}/v1/rag/query", json=query, timeout=60).json()
        assert answer["action"] and len(answer["passages"]) == 3
        assert (tmp_path / "registry" / "graphsage-anomaly" / "PROMOTED.json").exists()

        # Around the front: Serve's loopback port refuses callers without the front's secret.
        direct = requests.post(
            f"http://127.0.0.1:{port}/v1/rag/documents",
            json={"documents": []},
            headers={"X-X0tta6bl4-Peer-Id": "spiffe://x0tta6bl4.local/operator/alice"},
            timeout=30,
        )
        assert direct.status_code == 401 and direct.json()["error"] == "unauthenticated"

        # Runbooks (which drive remediation) are for operators only.
        ca = EmbeddedCA.open(tmp_path / ".x0tta6bl4" / "security" / "ca")
        controller = _client(_save(ca, "spiffe://x0tta6bl4.local/controller", tmp_path / "ctrl"))
        doc = {"documents": [{"title": "E2E check", "text": "## Symptoms\nA test runbook.\n"}]}
        refused = controller.post(f"{base}/v1/rag/documents", json=doc, timeout=60)
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        assert controller.post(f"{base}/v1/rag/query", json=query, timeout=60).status_code == 200
        assert alice.post(f"{base}/v1/rag/documents", json=doc, timeout=120).status_code == 201

        # A stream belongs to its creator: the same name from another identity is another stream.
        body = snapshot_bodies(60, 1, seed=3)[0][0]
        eve = _client(_save(ca, "spiffe://x0tta6bl4.local/operator/eve", tmp_path / "eve"))
        ticks = [_score(alice, base, body, "mapek")["window_ticks"] for _ in range(3)]
        assert ticks == [1, 2, 3]
        assert _score(eve, base, body, "mapek")["window_ticks"] == 1
        assert _score(alice, base, body, "mapek")["window_ticks"] == 4
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "mTLS front: https://localhost:" in err and "curl --cacert" in err


def _save(ca, spiffe_id, out):
    svid = ca.issue_svid(spiffe_id)
    svid.save(out)
    (out / "bundle.pem").write_bytes(ca.bundle().to_pem())
    return out


def _client(svid_dir):
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the platform's bundle
    session.cert = (str(svid_dir / "svid.pem"), str(svid_dir / "svid.key"))
    session.verify = str(svid_dir / "bundle.pem")
    return session


def _score(session, base, body, stream_id):
    resp = session.post(
        f"{base}/v1/anomaly/score",
        data=body,
        headers={"content-type": "application/json"},
        params={"stream_id": stream_id},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


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
