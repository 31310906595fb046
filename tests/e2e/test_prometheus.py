"""A real Prometheus scrapes the Ray node of a real `x0tta6bl4 run`: one PromQL query per domain has data.

The run is the session's shared small run (tests/e2e/conftest.py); Prometheus scraped its Ray
node's metrics agent every few seconds while it ran, so queries look back over the run with
``last_over_time``. Domains a plain run does not exercise are checked elsewhere: federated rounds
(tests/integration/federated/test_train.py), recovery and ledger verification failures
(tests/integration/observability/test_ray_export.py, tests/unit/security/test_ledger.py), the mTLS
front's refusals (tests/unit/security/test_front.py, tests/unit/serve/test_front_only.py).
"""

import pytest

from tests.e2e.conftest import PROMETHEUS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package prometheus)"),
]

WINDOW = "[15m]"

#: Per domain: a query over the run's metrics, and the smallest value its every sample must have.
QUERIES = {
    "mesh": (f"count by (region) (last_over_time(ray_x0tta6bl4_mesh_ticks_total{WINDOW}))", 1),
    "telemetry": (f"sum by (source) (last_over_time(ray_x0tta6bl4_telemetry_polls_total{WINDOW}))", 1),
    "detector": (f"sum(last_over_time(ray_x0tta6bl4_detector_nodes_scored_total{WINDOW}))", 400),
    "rag": (f"max(last_over_time(ray_x0tta6bl4_rag_index_documents{WINDOW}))", 1),
    "gateway": (f"sum by (code) (last_over_time(ray_x0tta6bl4_gateway_requests_total{WINDOW}))", 1),
    "mapek": (f"sum(last_over_time(ray_x0tta6bl4_mapek_cycles_total{WINDOW}))", 10),
    "mapek_phases": (
        f"count by (phase) (last_over_time(ray_x0tta6bl4_mapek_phase_seconds_count{WINDOW}))",
        1,
    ),
    "ledger": (f"sum(last_over_time(ray_x0tta6bl4_ledger_appends_total{WINDOW}))", 1),
}


def test_prometheus_scraped_every_domain_of_the_run(small_run):
    assert small_run.proc.returncode == 0, small_run.proc.stderr[-3000:]
    prometheus = small_run.prometheus
    empty = []
    for domain, (promql, least) in QUERIES.items():
        result = prometheus.query(promql)
        if not result or any(float(sample["value"][1]) < least for sample in result):
            empty.append(f"{domain}: {promql} -> {result}")
    assert not empty, "\n".join(empty)
    # The run's shards are one region each; the controller timed all its phases.
    assert len(prometheus.query(QUERIES["mesh"][0])) == 4
    phases = {s["metric"]["phase"] for s in prometheus.query(QUERIES["mapek_phases"][0])}
    assert phases == {"monitor", "score", "analyse", "knowledge"}
    # The gateway probe, answered 401 (it did not come through the mTLS front), was counted as such.
    codes = {s["metric"]["code"] for s in prometheus.query(QUERIES["gateway"][0])}
    assert small_run.gateway_codes and {str(c) for c in small_run.gateway_codes} <= codes


def test_the_target_was_up_while_the_run_lasted(small_run):
    up = small_run.prometheus.query(f"max_over_time(up{{job='ray-nodes'}}{WINDOW})")
    assert up and float(up[0]["value"][1]) == 1.0
