"""bench observability: what metrics and tracing cost the autonomy loop, and what a running platform exports.

``instrumented_ticks_per_s`` is the run loop (``x0tta6bl4 run --in-process``: the mesh kernel
and the MAPE-K controller core in one process, so both modes run the same code without Ray's
start-up noise) with every metric recorded and every span exported over OTLP/HTTP to a local
receiver, against the same seed with metrics and tracing off, in ABBA order. The exported
families, their domains and the scrape time come from a real ``x0tta6bl4 run`` on Ray whose
node metrics endpoint is scraped while it runs, as Prometheus would.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from x0tta6bl4.bench._report import result

#: nodes, ticks of the instrumented loop; nodes, ticks of the scraped run.
FULL = {"loop": (10_000, 60), "scrape": (10_000, 60)}
QUICK = {"loop": (2_000, 20), "scrape": (1_000, 40)}
#: Pause between the scraped run's ticks: Ray's metrics agent takes a worker's values about every
#: 10 s, so the run must last a few of those for its families to be scraped at all.
SCRAPED_TICK_INTERVAL_S = {False: 0.25, True: 0.75}
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
    order = (False, True) if quick else (False, True, True, False)
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


def _scrape_rows(quick: bool) -> list[dict[str, Any]]:
    import requests

    from x0tta6bl4.connect import METRICS_EXPORT_PORT_ENV, free_local_port
    from x0tta6bl4.observability.metrics import CATALOGUE

    nodes, ticks = (QUICK if quick else FULL)["scrape"]
    metrics_port, serve_port = free_local_port(), free_local_port()
    # Its own Ray, whose metrics agent listens where we scrape: a Ray temp dir of its own, so the
    # run never joins another cluster named by Ray's `ray_current_cluster` file (short: socket paths).
    ray_tmp = tempfile.mkdtemp(prefix="x0obs", dir="/tmp")
    env = {**os.environ, METRICS_EXPORT_PORT_ENV: str(metrics_port), "RAY_TMPDIR": ray_tmp}
    for name in ("RAY_ADDRESS", *OTEL_VARS):
        env.pop(name, None)
    scrapes: list[tuple[float, str]] = []
    session = requests.Session()
    session.trust_env = False
    with tempfile.TemporaryDirectory(prefix="x0-bench-obs-run-") as tmp:
        args = ["run", "--nodes", str(nodes), "--regions", "4", "--ticks", str(ticks), "--seed", "3"]
        args += ["--runs-dir", tmp, "--run-id", "scraped", "--serve-port", str(serve_port)]
        args += ["--tick-interval-s", str(SCRAPED_TICK_INTERVAL_S[quick])]
        proc = subprocess.Popen(
            [sys.executable, "-m", "x0tta6bl4.cli", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        probed = False
        while proc.poll() is None:
            t0 = time.perf_counter()
            try:
                text = session.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
                if "ray_x0tta6bl4_" in text:
                    scrapes.append((1000.0 * (time.perf_counter() - t0), text))
            except requests.RequestException:
                pass
            if not probed:  # one real HTTP request, so the gateway's series exist (answered 401)
                with contextlib.suppress(requests.RequestException):
                    probed = (
                        session.get(f"http://127.0.0.1:{serve_port}/healthz", timeout=5).status_code != 404
                    )
            time.sleep(1.0)
        _out, err = proc.communicate()
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if proc.returncode != 0 or not scrapes:
        raise RuntimeError(f"the scraped run failed (exit {proc.returncode}): {err[-2000:]}")
    families = max((set(FAMILY.findall(text)) for _, text in scrapes), key=len)
    catalogued = {name.removesuffix("_total").removesuffix("_bucket") for name in families}
    known = {name for name in catalogued if name in CATALOGUE}
    domains = sorted({CATALOGUE[name].domain for name in known})
    durations = [ms for ms, _ in scrapes]
    _log(f"{len(families)} families in {len(domains)} domains ({', '.join(domains)}); {len(scrapes)} scrapes")
    params = {
        "nodes": nodes,
        "ticks": ticks,
        "tick_interval_s": SCRAPED_TICK_INTERVAL_S[quick],
        "scrapes": len(scrapes),
        "endpoint": "Ray node metrics agent",
    }
    absent = sorted({spec.domain for spec in CATALOGUE.values()} - set(domains))
    return [
        result("metric_families", float(len(families)), "families", {**params, "catalogued": len(CATALOGUE)}),
        result(
            "metric_domains",
            float(len(domains)),
            "domains",
            {**params, "domains": domains, "not_in_a_plain_run": absent},
            target=("value", ">=", 10.0),
        ),
        result(
            "scrape_duration_ms",
            statistics.median(durations),
            "ms",
            {
                **params,
                "p95_ms": sorted(durations)[int(0.95 * (len(durations) - 1))],
                "body_bytes": len(scrapes[-1][1]),
            },
        ),
    ]


def results(quick: bool = False) -> list[dict[str, Any]]:
    rows = _loop_rows(quick)
    rows += _span_rows()
    rows += _scrape_rows(quick)
    return rows
