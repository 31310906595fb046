"""Helpers for whole-job tests: the installed console script, a clean environment, and one small run.

The small ``x0tta6bl4 run`` (400 nodes, 4 regions, 100 ticks, faults) runs once per session and is
shared: its report is checked by test_run_job.py; a real Prometheus (Debian's, when installed)
scrapes its Ray node's metrics agent while it runs, for test_prometheus.py and
test_grafana_dashboards.py; it traces over OTLP/HTTP to a local receiver (tests/otlp.py), for
test_run_tracing.py; and with ``--serve-forever`` it keeps its apps up behind the mTLS front after
the run, where an operator's requests (traced ones among them) and refused callers are sent before
it is stopped, for test_run_job.py and test_run_tracing.py.
"""

import dataclasses
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.otlp import OtlpReceiver
from x0tta6bl4.connect import free_local_port as free_port

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
    # The local Rays the commands start need no dashboard here (a head that takes `ray job submit` is
    # started with one): each would cost its start-up and tens of CPU-seconds on a 2-core machine.
    env["X0TTA6BL4_RAY_DASHBOARD"] = "off"
    return env


@pytest.fixture
def cli_env():
    return clean_env()


#: How often Prometheus scrapes the run's metrics agent. Ray 2.55's agent used to deadlock when a
#: scrape overlapped its registering a new metric name (ray-project/ray#64946): the venv's backport of
#: the fix (x0tta6bl4._ray_backports) is what keeps this test from failing at random.
SCRAPE_INTERVAL = "2s"


class Prometheus:
    """Debian's ``prometheus`` scraping ``targets`` every :data:`SCRAPE_INTERVAL`, its data in ``directory``."""

    def __init__(self, directory: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = directory / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: {SCRAPE_INTERVAL}, evaluation_interval: {SCRAPE_INTERVAL}}}\n"
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

    def scrapes(self) -> int:
        """How many scrapes of the targets Prometheus has made so far (failed ones too)."""
        result = self.query("sum(count_over_time(up[1h]))")
        return int(float(result[0]["value"][1])) if result else 0

    def wait_for_scrapes(self, count: int, timeout_s: float = 60) -> None:
        """Until ``count`` more scrapes have been made (or the timeout): what was recorded by now has
        been scraped at least ``count - 1`` times (a worker reports to the agent within a scrape)."""
        target, deadline = self.scrapes() + count, time.monotonic() + timeout_s
        while self.scrapes() < target and time.monotonic() < deadline:
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


#: The W3C trace ids the shared run's traced requests through the front carry (fresh per session).
SCORE_TRACE, RAG_TRACE = secrets.token_hex(16), secrets.token_hex(16)


@dataclasses.dataclass
class FrontAnswers:
    """What the run's mTLS front (``--serve-forever``) and Serve's own port answered, once the run was
    over: each a response, or the exception the request raised (None: never sent, the front was down)."""

    #: The operator's ``GET /healthz`` through the front (the last try: the front came up or not).
    health: requests.Response | Exception | None = None
    #: The operator's ``GET /v1/rag/stats`` through the front.
    rag_stats: requests.Response | Exception | None = None
    #: ``GET /v1/rag/stats`` on Serve's loopback port, around the front.
    direct: requests.Response | Exception | None = None
    #: ``GET /healthz`` through the front by a client without an SVID.
    anonymous: requests.Response | Exception | None = None
    #: ``POST /v1/anomaly/score`` through the front, carrying ``traceparent`` of :data:`SCORE_TRACE`.
    score: requests.Response | Exception | None = None
    #: ``POST /v1/rag/query`` through the front, carrying ``traceparent`` of :data:`RAG_TRACE`.
    rag_query: requests.Response | Exception | None = None


@dataclasses.dataclass
class SmallRun:
    """The shared run: its process, directories, and the Prometheus that scraped it (None: not installed)."""

    #: The finished process (stopped with SIGTERM once the front had answered).
    proc: subprocess.CompletedProcess[str]
    runs_dir: Path
    prometheus: Prometheus | None
    #: Status codes the gateway answered the probe sent while the run served (empty: it never answered).
    gateway_codes: list[int]
    #: HTTPS port of the mTLS front ``--serve-forever`` opened after the run.
    front_port: int
    front: FrontAnswers
    #: Every span the run's processes exported to the session's OTLP/HTTP receiver, until it stopped.
    spans: list[dict]


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


def _operator(directory: Path) -> requests.Session:
    """A session holding a fresh ``operator/ci`` SVID of the checkout's CA (the one the front trusts)."""
    issued = subprocess.run(
        [str(BIN / "x0tta6bl4"), "identity", "issue", "operator/ci", "--out", str(directory)],
        env=clean_env(), cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the platform's bundle
    session.cert = (str(directory / "svid.pem"), str(directory / "svid.key"))
    session.verify = str(directory / "bundle.pem")
    return session


def _traceparent(trace_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}


def _attempt(request) -> requests.Response | Exception:
    try:
        return request()
    except requests.RequestException as exc:
        return exc


def _use_the_front(
    proc: subprocess.Popen[str], operator: requests.Session, front_port: int, serve_port: int, bundle: Path
) -> FrontAnswers:
    """Once the run is over and the front is up: the operator's requests (two of them traced), one around
    the front on Serve's port, one without a client SVID. Gives up when the run exits or after 420 s."""
    front, answers = f"https://localhost:{front_port}", FrontAnswers()
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline and proc.poll() is None:
        answers.health = _attempt(lambda: operator.get(f"{front}/healthz", timeout=5))
        if isinstance(answers.health, requests.Response) and answers.health.status_code == 200:
            break
        time.sleep(1)
    else:
        return answers
    answers.rag_stats = _attempt(lambda: operator.get(f"{front}/v1/rag/stats", timeout=30))
    answers.direct = _attempt(lambda: requests.get(f"http://127.0.0.1:{serve_port}/v1/rag/stats", timeout=30))
    anonymous = requests.Session()
    anonymous.trust_env = False
    answers.anonymous = _attempt(lambda: anonymous.get(f"{front}/healthz", verify=str(bundle), timeout=30))
    model = _attempt(lambda: operator.get(f"{front}/v1/anomaly/model", timeout=30))
    if isinstance(model, requests.Response) and model.status_code == 200:
        names = model.json()["feature_names"]
        body = {
            "node_ids": [1, 2, 3],
            "feature_names": names,
            "features": [[0.1] * len(names)] * 3,
            "edges": [[1, 2], [2, 3]],
        }
        headers = _traceparent(SCORE_TRACE)
        answers.score = _attempt(
            lambda: operator.post(f"{front}/v1/anomaly/score", json=body, headers=headers, timeout=30)
        )
    else:
        answers.score = model
    query = {"query": "node unreachable after a crash, neighbours lose routes", "k": 2}
    headers = _traceparent(RAG_TRACE)
    answers.rag_query = _attempt(
        lambda: operator.post(f"{front}/v1/rag/query?cache=false", json=query, headers=headers, timeout=60)
    )
    return answers


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """The session's run, traced to an OTLP/HTTP receiver and scraped by Prometheus; ``--serve-forever``
    keeps its apps up behind the mTLS front afterwards, where it is used, and then it is stopped."""
    runs_dir = tmp_path_factory.mktemp("small-run")
    env = clean_env()
    # A pristine runbook corpus and registry (bootstrapped by the run), as on a fresh clone.
    env["X0TTA6BL4_RAG_DIR"] = str(runs_dir / "rag")
    env["X0TTA6BL4_REGISTRY"] = str(runs_dir / "registry")
    metrics_port, serve_port, front_port = free_port(), free_port(), free_port()
    env["X0TTA6BL4_RAY_METRICS_EXPORT_PORT"] = str(metrics_port)
    env["RAY_metrics_report_interval_ms"] = "1000"  # workers report every second (default 10 s)
    otlp = OtlpReceiver().__enter__()
    env.update(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint.removesuffix("/v1/traces"),
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    env.pop("OTEL_SDK_DISABLED", None)
    prometheus = None
    stop, codes = threading.Event(), []
    try:
        if PROMETHEUS is not None:
            prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{metrics_port}"])
        args = ["run", "--nodes", "400", "--regions", "4", "--ticks", "100", "--seed", "3"]
        args += ["--faults-per-1000-ticks", "100", "--runs-dir", str(runs_dir), "--run-id", "small"]
        args += ["--serve-port", str(serve_port), "--json"]
        args += ["--serve-forever", "--front-port", str(front_port)]
        probe = threading.Thread(target=_probe_gateway, args=(serve_port, stop, codes), daemon=True)
        probe.start()
        # Files, not pipes: nobody reads the run's output while it runs.
        out, err = (runs_dir / "stdout").open("w+"), (runs_dir / "stderr").open("w+")
        proc = subprocess.Popen(
            [str(BIN / "x0tta6bl4"), *args], env=env, cwd=REPO, stdout=out, stderr=err, text=True
        )
        try:
            operator = _operator(runs_dir / "op")  # while the run starts
            front = _use_the_front(proc, operator, front_port, serve_port, runs_dir / "op" / "bundle.pem")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (
                any(s["trace_id"] == SCORE_TRACE for s in otlp.named("anomaly.batch"))
                and any(s["trace_id"] == RAG_TRACE for s in otlp.named("rag.query"))
            ):
                time.sleep(0.2)
            if prometheus is not None and proc.poll() is None:
                # Series first recorded late (the front's, the run's final figures) get the two samples
                # a rate() over them needs before the run's Ray goes away.
                prometheus.wait_for_scrapes(3)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.seek(0)
            err.seek(0)
            finished = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
            out.close()
            err.close()
        yield SmallRun(finished, runs_dir, prometheus, codes, front_port, front, list(otlp.spans))
    finally:
        stop.set()
        otlp.__exit__(None, None, None)
        if prometheus is not None:
            prometheus.stop()
