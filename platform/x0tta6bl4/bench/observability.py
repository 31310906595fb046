"""bench observability: what metrics and tracing cost the autonomy loop, and what a running platform exports.

``instrumented_ticks_per_s`` is the run loop (``x0tta6bl4 run --in-process``: the mesh kernel
and the MAPE-K controller core in one process, so both modes run the same code without Ray's
start-up noise) with every metric recorded and every span exported over OTLP/HTTP to a local
receiver, against the same seed with metrics and tracing off, in ABBA BAAB order. The exported
families, their domains and the scrape time come from a running platform scraped as Prometheus
would: a real ``x0tta6bl4 run`` serving through its mTLS front and a federated ``x0tta6bl4 train``
on a Ray cluster of its own, whose nodes' metrics agents are scraped every 2 s while a shard
is killed, the gateway answers and a client without a certificate is refused at the front.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from x0tta6bl4.autonomy.serving import SERVING_LINE
from x0tta6bl4.bench._report import result

#: nodes, ticks of the instrumented loop; nodes, ticks of the scraped run.
FULL = {"loop": (10_000, 120), "scrape": (10_000, 60)}
QUICK = {"loop": (1_000, 10), "scrape": (1_000, 30)}
#: Pause between the scraped run's ticks, so it runs for several of Ray's metric reports.
SCRAPED_TICK_INTERVAL_S = 0.25
#: Spans timed for the per-span cost: batches of SPANS (below the batch processor's queue of 2,048,
#: so none is dropped), each exported before the next is timed; the median batch counts.
SPANS = 1_000
SPAN_BATCHES = 7
OTEL_VARS = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_BSP_SCHEDULE_DELAY")
FAMILY = re.compile(r"^# TYPE ray_(x0tta6bl4_[a-z0-9_]+) ", re.M)


def _log(msg: str) -> None:
    print(f"[bench observability] {msg}", file=sys.stderr, flush=True)


class _Sink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that reads and drops every export (counts requests and bytes)."""

    requests = 0
    bytes = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).requests += 1
        type(self).bytes += len(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@contextlib.contextmanager
def _otlp_sink() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _instrumented(on: bool, endpoint: str) -> Iterator[None]:
    """Metrics and tracing both on (spans to ``endpoint``) or both off, for this process."""
    from x0tta6bl4.observability import metrics, tracing

    saved = {name: os.environ.get(name) for name in OTEL_VARS}
    tracing.shutdown_tracing()
    metrics.set_recording(on)
    if on:
        os.environ.update(
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "1000",
            }
        )
    else:
        for name in OTEL_VARS:
            os.environ.pop(name, None)
    try:
        yield
    finally:
        tracing.shutdown_tracing()  # flushes what the loop left in the batch processor
        metrics.set_recording(True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _loop_rows(quick: bool) -> list[dict[str, Any]]:
    from x0tta6bl4.autonomy.config import RunConfig
    from x0tta6bl4.autonomy.job import execute, plan_run

    nodes, ticks = (QUICK if quick else FULL)["loop"]
    # ABBA twice over (ABBA BAAB): a drift of the machine's speed during the bench weighs on both modes.
    order = (False, True) if quick else (False, True, True, False, True, False, False, True)
    rates: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="x0-bench-obs-") as tmp, _otlp_sink() as endpoint:
        for i, on in enumerate(order):
            config = RunConfig(
                nodes=nodes, regions=8, ticks=ticks, seed=5, in_process=True, ebpf=False,
                runs_dir=Path(tmp), run_id=f"loop-{i}-{'on' if on else 'off'}",
            )  # fmt: skip
            before = _Sink.requests
            with _instrumented(on, endpoint):
                report = execute(plan_run(config))
            rate = float(report["summary"]["ticks_per_s"])
            rates[on].append(rate)
            exports = _Sink.requests - before
            mode = "instrumented" if on else "off"
            _log(f"{mode}: {rate:.2f} ticks/s at {nodes} nodes ({exports} OTLP exports)")
    params = {
        "nodes": nodes,
        "ticks": ticks,
        "runs_each": len(rates[True]),
        "loop": "x0tta6bl4 run --in-process",
        "tracing": "OTLP/HTTP, batched",
        "otlp_exports": _Sink.requests,
        "otlp_bytes": _Sink.bytes,
    }
    return [
        result(
            "instrumented_ticks_per_s",
            statistics.mean(rates[True]),
            "ticks/s",
            params,
            baseline=("uninstrumented_ticks_per_s", statistics.mean(rates[False])),
            target=("ratio", ">=", 0.95),
        )
    ]


def _span_rows() -> list[dict[str, Any]]:
    from x0tta6bl4.observability import tracing

    def timed() -> float:
        batches = []
        for _ in range(SPAN_BATCHES):
            t0 = time.perf_counter()
            for i in range(SPANS):
                with tracing.span("bench.span", {"i": i}):
                    pass
            batches.append(time.perf_counter() - t0)
            tracing.flush()  # exported off the clock: the next batch starts with an empty queue
        return statistics.median(batches)

    with _otlp_sink() as endpoint:
        with _instrumented(False, endpoint):
            off = timed()
        with _instrumented(True, endpoint):
            tracing.setup_tracing("bench")
            on = timed()
    per_span_us = 1e6 * (on - off) / SPANS
    _log(f"one span costs {per_span_us:.1f} us (off: {1e6 * off / SPANS:.2f} us)")
    params = {"spans": SPANS, "batches": SPAN_BATCHES, "exporter": "OTLP/HTTP, batched", "attributes": 1}
    return [
        result(
            "span_overhead_us", per_span_us, "us", params, baseline=("disabled_span_us", 1e6 * off / SPANS)
        )
    ]


#: The scraped platform's Ray nodes report worker metrics every second (Ray's default: 10 s), as
#: the e2e Prometheus test's run does, so a short run's once-recorded families reach a scrape.
METRICS_REPORT_INTERVAL_MS = "1000"
#: Training job of the scraped platform (its own Ray, as a RayJob's cluster): nodes, regions,
#: ticks, full-model rounds. Four rounds, so the first rounds' series are exported and scraped
#: while the last ones train (its Ray shuts down with the job).
TRAIN = {False: (1_000, 4, 80, 4), True: (200, 2, 50, 4)}
#: Seconds the training job keeps its Ray up after its last round (``--metrics-linger-s``): four
#: scrapes, so its last rounds' series are scraped before its Ray goes down with it.
TRAIN_LINGER_S = 8.0
#: Tick of the scraped run at which one of its MeshShard processes is SIGKILLed (recovery series).
SHARD_KILL_TICK = {False: 20, True: 10}
#: Seconds the platform keeps running after its last event at least (Ray reports every second); it
#: runs on until a scrape of the run's node follows the last event, or that agent is found wedged.
SETTLE_SCRAPES = 6
#: Seconds between two scrapes of one node's metrics agent. Not shorter: without the venv's backport
#: (x0tta6bl4._ray_backports), Ray 2.55's agent deadlocks when a scrape overlaps its registering a
#: new metric name (ray-project/ray#64946, fixed in 2.57), and every scrape is a chance of that.
SCRAPE_PERIOD_S = 2.0
#: Training jobs the bench starts at most: a second one (on a fresh Ray) only when the first one's agent
#: wedged (ray-project/ray#64946) before any of its federated series was scraped.
TRAIN_ATTEMPTS = 2
#: An agent whose last answer came this long before its job ended had stopped answering (a healthy one
#: answers every ``SCRAPE_PERIOD_S`` through the job's metrics linger).
WEDGED_BEFORE_END_S = 3 * SCRAPE_PERIOD_S


def wedged_before_end(answered_at: float | None, ended_at: float, series_scraped: bool) -> bool:
    """Whether a job's metrics agent had stopped answering before the job ended, before any of the
    job's own series was scraped (monotonic seconds; ``answered_at`` None: it never answered)."""
    if series_scraped:
        return False
    return answered_at is None or ended_at - answered_at >= WEDGED_BEFORE_END_S


class _Platform:
    """A running platform scraped as Prometheus would: an ``x0tta6bl4 run`` serving through its mTLS
    front, and an ``x0tta6bl4 train`` job on a Ray cluster of its own, each node's metrics agent on
    a known port. Events every domain reports happen while it runs: faults and the controller's
    actions, a shard SIGKILLed (recovery), a gateway request, a TLS client without a certificate
    refused at the front (security), federated rounds, ledger appends."""

    def __init__(self, quick: bool, tmp: Path) -> None:
        from x0tta6bl4.connect import METRICS_EXPORT_PORT_ENV, free_local_port

        self.quick, self.tmp = quick, tmp
        self.nodes, self.ticks = (QUICK if quick else FULL)["scrape"]
        self.serve_port, self.front_port = free_local_port(), free_local_port()
        #: Metrics agent ports: the run's node, the training job's node.
        self.ports = [free_local_port(), free_local_port()]
        self.events: dict[str, float] = {}
        base = {**os.environ, "RAY_metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS}
        for name in ("RAY_ADDRESS", *OTEL_VARS):
            base.pop(name, None)
        # Each job's Ray gets a temp dir of its own (short: socket paths), so neither joins another.
        self._ray_tmps = [tempfile.mkdtemp(prefix="x0obs", dir="/tmp") for _ in self.ports]
        self._envs = [
            {**base, METRICS_EXPORT_PORT_ENV: str(port), "RAY_TMPDIR": ray_tmp}
            for port, ray_tmp in zip(self.ports, self._ray_tmps, strict=True)
        ]
        self._errors = ["", ""]
        run = ["run", "--nodes", str(self.nodes), "--regions", "4", "--ticks", str(self.ticks), "--seed", "3"]
        run += ["--runs-dir", str(tmp / "runs"), "--run-id", "scraped", "--serve-port", str(self.serve_port)]
        run += ["--tick-interval-s", str(SCRAPED_TICK_INTERVAL_S), "--serve-forever"]
        run += ["--front-port", str(self.front_port)]
        self.run = self._start(0, run)
        self.train: subprocess.Popen[str] | None = None
        self.training_runs = 0
        #: Why a training job was run again (its agent wedged before its series were scraped).
        self.retrained: list[str] = []
        threading.Thread(target=self._kill_a_shard_mid_run, daemon=True).start()

    def _start(self, i: int, args: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "x0tta6bl4.cli", *args],
            env=self._envs[i],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Drained, so a chatty job never blocks on a full pipe; the tail says why a job failed.
        threading.Thread(target=self._drain, args=(i, proc), daemon=True).start()
        return proc

    def _drain(self, i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self._errors[i] = (self._errors[i] + line)[-4000:]
            if i == 0 and "serving" not in self.events and line.startswith(SERVING_LINE):
                self._event("serving", "the run serves through its mTLS front")

    def start_training(self) -> None:
        """Start the training job (once the run's Ray is up: two Ray heads starting at once on a
        small machine can time out the dashboard's modules)."""
        if self.train is not None:
            return
        t_nodes, t_regions, t_ticks, rounds = TRAIN[self.quick]
        args = ["train", "--nodes", str(t_nodes), "--regions", str(t_regions), "--ticks", str(t_ticks)]
        args += ["--rounds", str(rounds), "--lora-rounds", "0", "--seed", "3", "--client-cpus", "0.5"]
        args += ["--metrics-linger-s", str(TRAIN_LINGER_S)]
        args += ["--registry", str(self.tmp / "registry"), "--runs-dir", str(self.tmp / "train"), "--json"]
        self.train = self._start(1, args)
        self.training_runs += 1
        _log(f"the run's node is up: training job {self.training_runs} started")

    def retrain_if_wedged(self, scraper: _Scraper) -> None:
        """Start the training job again on a fresh Ray when the last one ended without any of its
        federated series scraped because its metrics agent had stopped answering: Ray 2.55's agent
        deadlocks when a scrape overlaps the registration of a new metric (ray-project/ray#64946), and
        a training job registers its round metrics mid-run. Any other reason for missing series is
        not retried: the bench reports it."""
        port, ended_at = self.ports[1], self.events.get("trained")
        if ended_at is None or self.train is None or self.train.returncode != 0:
            return
        if self.training_runs >= TRAIN_ATTEMPTS:
            return
        answered = scraper.answered.get(port)
        if not wedged_before_end(answered, ended_at, scraper.saw(port, "ray_x0tta6bl4_federated_")):
            return
        when = "before a scrape" if answered is None else f"{ended_at - answered:.0f} s before its end"
        why = (
            f"training job {self.training_runs}'s metrics agent stopped answering {when} "
            f"({scraper.misses.get(port, 'no answer')}; ray-project/ray#64946)"
        )
        _log(f"{why}: training again on a fresh Ray")
        self.retrained.append(why)
        del self.events["trained"]
        scraper.answered.pop(port, None)
        self.train = None
        self.start_training()

    def step(self) -> None:
        """Cause the next due event: the gateway request, the refused TLS client; note the training's end."""
        if "gateway_request" not in self.events and self._gateway_answers():
            self._event("gateway_request", "the gateway answered a request")
        # Only once the run's own front listens: before, another process may hold that free port.
        if "front_refused" not in self.events and "serving" in self.events and self._refused_at_front():
            self._event("front_refused", "the mTLS front refused a client without a certificate")
        if "trained" not in self.events and self.train is not None and self.train.poll() is not None:
            self._event("trained", f"the training job ended (exit {self.train.returncode})")

    def _event(self, name: str, what: str) -> None:
        self.events[name] = time.monotonic()
        _log(what)

    def done(self, scraper: _Scraper | None = None) -> bool:
        """Every event happened (or a job ended early) and a scrape of the run's node followed the last
        (or that node's agent stopped answering: :meth:`_Scraper.wedged`)."""
        if self.run.poll() is not None or (self.train is not None and self.train.poll() not in (None, 0)):
            return True  # a failed job: failure() says what
        if "shard_killed" not in self.events and (self.tmp / "runs" / "scraped" / "report.json").exists():
            return True  # the run's ticks ended before its shard could be killed: failure() says so
        wanted = ("shard_killed", "gateway_request", "serving", "front_refused", "trained")
        if any(name not in self.events for name in wanted):
            return False
        last = max(self.events.values())
        if time.monotonic() - last <= SETTLE_SCRAPES:
            return False
        if scraper is None:
            return True
        run_port = self.ports[0]
        return scraper.answered.get(run_port, 0.0) > last + 1.0 or scraper.wedged(run_port)

    def _kill_a_shard_mid_run(self) -> None:
        """SIGKILL one MeshShard process of the run once it has recorded ``SHARD_KILL_TICK`` ticks."""
        ticks = self.tmp / "runs" / "scraped" / "ticks.jsonl"
        at = SHARD_KILL_TICK[self.quick]
        while self.run.poll() is None:
            if ticks.exists() and ticks.read_text().count("\n") >= at and self._kill_a_shard():
                self._event("shard_killed", f"a MeshShard SIGKILLed after tick {at}")
                return
            time.sleep(0.05)

    def _kill_a_shard(self) -> bool:
        import psutil

        try:
            processes = psutil.Process(self.run.pid).children(recursive=True)
        except psutil.Error:  # a process of the tree ended while it was listed
            return False
        for process in processes:
            with contextlib.suppress(psutil.Error):
                if process.cmdline()[0].startswith("ray::MeshShardActor"):
                    process.kill()
                    return True
        return False

    def _gateway_answers(self) -> bool:
        """One real HTTP request to the run's gateway (answered 401: not through the front)."""
        import requests

        session = requests.Session()
        session.trust_env = False
        with contextlib.suppress(requests.RequestException):
            return session.get(f"http://127.0.0.1:{self.serve_port}/healthz", timeout=5).status_code != 404
        return False

    def _refused_at_front(self) -> bool:
        """A TLS client without a certificate at the mTLS front: refused in the handshake."""
        import socket
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection(("127.0.0.1", self.front_port), timeout=5) as raw,
                ctx.wrap_socket(raw) as tls,
            ):
                tls.recv(1)  # TLS 1.3: the server's refusal arrives after the client's Finished
        except ConnectionRefusedError:
            return False  # the front is not up yet
        except (ssl.SSLError, OSError):
            return True
        return True

    def stop(self) -> None:
        """SIGTERM what still runs (the run's serve_forever shuts down cleanly), wait for both jobs."""
        procs = [p for p in (self.run, self.train) if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ray_tmp in self._ray_tmps:
            shutil.rmtree(ray_tmp, ignore_errors=True)

    def failure(self) -> str | None:
        """What went wrong, if a job failed (the run ends by SIGTERM: exit 0 or -15)."""
        if self.run.returncode not in (0, -signal.SIGTERM):
            return f"the scraped run failed (exit {self.run.returncode}): {self._errors[0][-2000:]}"
        if self.train is None or self.train.returncode != 0:
            code = None if self.train is None else self.train.returncode
            return f"the scraped training failed (exit {code}): {self._errors[1][-2000:]}"
        missing = {"shard_killed", "gateway_request", "serving", "front_refused"} - set(self.events)
        if missing:
            return f"the scraped run ended before {', '.join(sorted(missing))}: {self._errors[0][-2000:]}"
        return None


class _Scraper:
    """Scrapes each node's metrics agent on a thread of its own, every ``SCRAPE_PERIOD_S``: a slow
    scrape of one node (or the platform's event checks) never delays another node's scrapes, so a
    short training job's round series are caught before its Ray shuts down."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.scrapes: list[tuple[int, float, str]] = []  # port, scrape ms, text with our families
        self.misses: dict[int, str] = {}  # port -> why its last failed scrape had nothing
        self.answered: dict[int, float] = {}  # port -> when its agent last answered (monotonic)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._scrape, args=(p,), daemon=True) for p in ports]
        for thread in self._threads:
            thread.start()

    def _scrape(self, port: int) -> None:
        import requests

        session = requests.Session()
        session.trust_env = False
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                text = session.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
            except requests.RequestException as exc:
                self.misses[port] = type(exc).__name__
            else:
                self.answered[port] = time.monotonic()
                if "ray_x0tta6bl4_" in text:
                    with self._lock:
                        self.scrapes.append((port, 1000.0 * (time.perf_counter() - t0), text))
                else:
                    self.misses[port] = f"{len(text)} bytes without x0tta6bl4 families"
            self._stop.wait(SCRAPE_PERIOD_S)

    def wedged(self, port: int) -> bool:
        """Whether ``port``'s agent answered once and has not for three of its scrape periods: Ray
        2.55's agent deadlocked (ray-project/ray#64946); it never answers again."""
        last = self.answered.get(port)
        return last is not None and time.monotonic() - last >= 3 * SCRAPE_PERIOD_S + 30.0

    def saw(self, port: int, text: str) -> bool:
        """Whether a scrape of ``port`` that returned the platform's families contained ``text``."""
        with self._lock:
            return any(p == port and text in body for p, _, body in self.scrapes)

    def scraped(self, port: int) -> bool:
        """Whether a scrape of ``port`` returned the platform's families."""
        with self._lock:
            return any(p == port for p, _, _ in self.scrapes)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=35)


def _scrape_rows(quick: bool) -> list[dict[str, Any]]:
    from x0tta6bl4.observability.metrics import CATALOGUE

    with tempfile.TemporaryDirectory(prefix="x0-bench-obs-run-") as tmp:
        platform = _Platform(quick, Path(tmp))
        scraper = _Scraper(platform.ports)
        deadline = time.monotonic() + (600 if quick else 1200)
        try:
            while not platform.done(scraper) and time.monotonic() < deadline:
                if platform.ports[0] in scraper.answered:  # the run's Ray is up
                    platform.start_training()
                platform.step()
                platform.retrain_if_wedged(scraper)
                time.sleep(0.5)
            # The run's agent wedged (it never answers again): its later series are missing, and
            # the rows say so rather than the bench failing on Ray's bug.
            wedged_agents = ["run"] if scraper.wedged(platform.ports[0]) else []
            if wedged_agents:
                _log(
                    f"the run's metrics agent stopped answering ({scraper.misses.get(platform.ports[0])}): "
                    "Ray 2.55's agent deadlocks when a scrape overlaps a new metric's registration "
                    "(ray-project/ray#64946); the series it had not exported by then are missing"
                )
        finally:
            scraper.stop()
            platform.stop()
        failure = platform.failure()
    scrapes, misses = scraper.scrapes, scraper.misses
    if failure is not None or not any(port == platform.ports[0] for port, _, _ in scrapes):
        last = misses.get(platform.ports[0], "never scraped")
        raise RuntimeError(failure or f"no scrape of the run's node returned its metrics (last: {last})")
    families: set[str] = set().union(*(FAMILY.findall(text) for _, _, text in scrapes))
    catalogued = {name.removesuffix("_total").removesuffix("_bucket") for name in families}
    known = {name for name in catalogued if name in CATALOGUE}
    domains = sorted({CATALOGUE[name].domain for name in known})
    durations = [ms for port, ms, _ in scrapes if port == platform.ports[0]]
    _log(f"{len(families)} families in {len(domains)} domains ({', '.join(domains)}); {len(scrapes)} scrapes")
    params = {
        "nodes": platform.nodes,
        "ticks": platform.ticks,
        "tick_interval_s": SCRAPED_TICK_INTERVAL_S,
        "scrapes": len(scrapes),
        "endpoints": "Ray node metrics agents of the run and of the training job",
        "events": sorted(platform.events),
        "training_runs": platform.training_runs,
        "retrained": platform.retrained,
        "wedged_agents": wedged_agents,
    }
    absent = sorted({spec.domain for spec in CATALOGUE.values()} - set(domains))
    return [
        result("metric_families", float(len(families)), "families", {**params, "catalogued": len(CATALOGUE)}),
        result(
            "metric_domains",
            float(len(domains)),
            "domains",
            {**params, "domains": domains, "absent": absent},
            target=("value", ">=", 10.0),
        ),
        result(
            "scrape_duration_ms",
            statistics.median(durations),
            "ms",
            {
                **params,
                "endpoint": "the run's Ray node",
                "p95_ms": sorted(durations)[int(0.95 * (len(durations) - 1))],
                "body_bytes": max(len(text) for port, _, text in scrapes if port == platform.ports[0]),
            },
        ),
    ]


def results(quick: bool = False) -> list[dict[str, Any]]:
    rows = _loop_rows(quick)
    rows += _span_rows()
    rows += _scrape_rows(quick)
    return rows
