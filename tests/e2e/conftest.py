"""Helpers for whole-job tests: the installed console script, a clean environment, and one small run.

The small ``x0tta6bl4 run`` (400 nodes, 4 regions, 100 ticks, faults) runs once per session and is
shared: its report is checked by test_run_job.py, and a real Prometheus (Debian's, when installed)
scrapes its Ray node's metrics agent while it runs, for test_prometheus.py.
"""

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROMETHEUS = shutil.which("prometheus")


def clean_env() -> dict[str, str]:
    """This environment with the console script first on PATH and no Ray cluster or token to inherit."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"
    return env


@pytest.fixture
def cli_env():
    return clean_env()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """Debian's ``prometheus`` scraping ``targets`` every second, its data in ``directory``."""

    def __init__(self, directory: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = directory / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: ray-nodes\n    static_configs: [{{targets: {targets!r}}}]\n".replace("'", '"')
        )
        self.log = (directory / "prometheus.log").open("w")
        assert PROMETHEUS is not None
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not self._ready():
            assert self.proc.poll() is None and time.monotonic() < deadline, (
                directory / "prometheus.log"
            ).read_text()
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def query(self, promql: str) -> list[dict]:
        """The instant vector (or scalar) ``promql`` evaluates to now, through the HTTP API."""
        resp = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=30)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", body
        result: list[dict] = body["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@dataclasses.dataclass
class SmallRun:
    """The shared run: its process, directories, and the Prometheus that scraped it (None: not installed)."""

    proc: subprocess.CompletedProcess[str]
    runs_dir: Path
    prometheus: Prometheus | None
    #: Status codes the gateway answered the probe sent while the run served (empty: it never answered).
    gateway_codes: list[int]


def _probe_gateway(port: int, stop: threading.Event, codes: list[int]) -> None:
    """One real HTTP request to the run's gateway once its app is up (answered 401: not via the front).

    Until the app is deployed, Serve's proxy answers 404 itself (no route): those are not the gateway's.
    """
    session = requests.Session()
    session.trust_env = False
    while not stop.is_set() and not codes:
        try:
            code = session.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code
        except requests.RequestException:
            code = None
        if code not in (None, 404):
            codes.append(code)
        else:
            stop.wait(0.5)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("small-run")
    env = clean_env()
    # A pristine runbook corpus and registry (bootstrapped by the run), as on a fresh clone.
    env["X0TTA6BL4_RAG_DIR"] = str(runs_dir / "rag")
    env["X0TTA6BL4_REGISTRY"] = str(runs_dir / "registry")
    metrics_port, serve_port = free_port(), free_port()
    env["X0TTA6BL4_RAY_METRICS_EXPORT_PORT"] = str(metrics_port)
    env["RAY_metrics_report_interval_ms"] = "1000"  # workers report every second (default 10 s)
    prometheus = None
    if PROMETHEUS is not None:
        prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{metrics_port}"])
    args = ["run", "--nodes", "400", "--regions", "4", "--ticks", "100", "--seed", "3"]
    args += ["--faults-per-1000-ticks", "100", "--runs-dir", str(runs_dir), "--run-id", "small"]
    args += ["--serve-port", str(serve_port), "--json"]
    stop, codes = threading.Event(), []
    probe = threading.Thread(target=_probe_gateway, args=(serve_port, stop, codes), daemon=True)
    probe.start()
    try:
        proc = subprocess.run(
            [str(BIN / "x0tta6bl4"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=420
        )
        yield SmallRun(proc, runs_dir, prometheus, codes)
    finally:
        stop.set()
        if prometheus is not None:
            prometheus.stop()
