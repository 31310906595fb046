"""Every Grafana panel's PromQL runs against the real Prometheus that scraped the session's small run.

Grafana substitutes ``$__rate_interval`` before it queries; the test does the same. Each query is
evaluated over the run's whole scrape window. A panel must have data wherever Prometheus scraped the
metrics its queries name: then a query that returns nothing is a wrong query (a name, label or
aggregation), not a quiet run.
"""

import time

import pytest
import requests

from tests.e2e.conftest import PROMETHEUS
from tests.unit.cluster.test_grafana import panel_queries, referenced_metrics

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package prometheus)"),
]

#: Ray's metrics agent refreshes a worker's values about every 10 s: a rate window must span two.
RATE_INTERVAL = "30s"

#: Panels whose metrics a plain `x0tta6bl4 run` does not produce, and where they come from instead.
#: Their queries must still parse and run; they are not required to return a series here.
NOT_IN_A_RUN = {
    "Federated rounds by stage": "x0tta6bl4 train",
    "Federated round time by part (mean)": "x0tta6bl4 train",
    "Federated client replies by outcome": "x0tta6bl4 train",
    "Federated bytes sent": "x0tta6bl4 train",
    "Refused mTLS peers by reason": "the mTLS front's process (x0tta6bl4 serve --front-only --metrics-port)",
    "Authorisation denials by rule": "the mTLS front's process",
    "Front answers by status": "the mTLS front's process",
    "Revocations and CA rotations": "x0tta6bl4 identity revoke / CA rotation",
    "SVID rotations": "long-lived workloads (an SVID renews at half its lifetime)",
    "Ledger verifications by result": "x0tta6bl4 ledger verify --metrics-textfile",
    "Ledger problems found by kind": "x0tta6bl4 ledger verify",
    "Runbooks ingested": "POST /v1/rag/documents",
    "Shard restores": "a MeshShard restarted from a checkpoint",
    "eBPF events lost": "an eBPF program losing events (none in a healthy run)",
    "eBPF lost events by program": "an eBPF program losing events (none in a healthy run)",
    "Shard restores by region": "a MeshShard restarted from a checkpoint",
    "Recovery: shard restarts, replayed ticks, controller retries": "a component killed mid-run (bench chaos)",
    "RAG cache hit ratio by tier": "HTTP queries through the gateway (the controller calls the retriever by handle)",
    "Gateway p95 by route": "HTTP requests through the front",
}


def query_range(url, expr, start, end):
    resp = requests.get(
        f"{url}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": "1s"},
        timeout=60,
    )
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def test_every_panel_query_runs_and_returns_series_wherever_the_run_exported_its_metrics(small_run):
    assert small_run.proc.returncode == 0, small_run.proc.stderr[-3000:]
    url = small_run.prometheus.url
    end = time.time()
    start = end - 15 * 60
    exported: dict[str, bool] = {}

    def was_exported(name):
        # Ray's agent exports a worker's values about every 10 s, so in a short run a family that is
        # recorded once (an SVID issued at start) may miss every scrape: such panels are not judged.
        if name not in exported:
            selector = f'{{__name__=~"(ray_)?{name}(_total|_bucket|_sum|_count)?"}}'
            exported[name] = any(s["values"] for s in query_range(url, f"count({selector})", start, end))
        return exported[name]

    panels: dict[tuple[str, str], list[str]] = {}
    for dashboard, title, expr in panel_queries():
        panels.setdefault((dashboard, title), []).append(expr)
    judged, empty = 0, []
    for (dashboard, title), exprs in panels.items():
        results = [query_range(url, e.replace("$__rate_interval", RATE_INTERVAL), start, end) for e in exprs]
        if title in NOT_IN_A_RUN or not all(was_exported(n) for e in exprs for n in referenced_metrics(e)):
            continue
        judged += 1
        if not any(series["values"] for result in results for series in result):
            empty.append(f"{dashboard} / {title}")
    assert not empty, "panels whose metrics were scraped but whose queries return nothing: " + "; ".join(
        empty
    )
    # The run fed the core panels: mesh, controller, detector, retrieval.
    assert judged >= 20, f"only {judged} of {len(panels)} panels had their metrics scraped"
    titles = {title for _, title in panels}
    assert set(NOT_IN_A_RUN) <= titles, f"stale entries: {sorted(set(NOT_IN_A_RUN) - titles)}"
