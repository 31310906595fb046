"""The metric catalogue outside Ray: conventions, prometheus-client exposition checked by promtool, serving."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from x0tta6bl4.observability.metrics import CATALOGUE, REGISTRY, exposition, metric, serve_metrics

PROMTOOL = shutil.which("promtool")
#: Labels that would add one series per node, caller or request.
UNBOUNDED_LABELS = {"node", "node_id", "peer", "spiffe_id", "path", "host", "incident_id", "query"}


def record_every_metric():
    """One sample of every catalogued metric, with every label set."""
    for spec in CATALOGUE.values():
        tags = dict.fromkeys(spec.labels, "x")
        record = {"counter": "inc", "gauge": "set", "histogram": "observe"}[spec.kind]
        getattr(metric(spec.name), record)(1.0, tags=tags)


def test_the_catalogue_follows_the_naming_rules():
    domains = {spec.domain for spec in CATALOGUE.values()}
    assert {
        "mesh",
        "telemetry",
        "detector",
        "federated",
        "rag",
        "gateway",
        "mapek",
        "security",
        "ledger",
    } <= domains
    assert "recovery" in domains
    for name, spec in CATALOGUE.items():
        assert re.fullmatch(r"x0tta6bl4_[a-z0-9_]+", name), name
        assert not name.endswith("_total"), f"{name}: counters get _total when exported"
        assert not set(spec.labels) & UNBOUNDED_LABELS, f"{name}: unbounded label"
        if spec.kind == "histogram":
            assert spec.buckets == tuple(sorted(spec.buckets)) and spec.buckets, name
            assert name.endswith(("_seconds", "_size", "_ticks")), f"{name}: histogram without a unit"
        assert "seconds" not in name or name.endswith("_seconds"), name


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_the_prometheus_client_exposition_passes_promtool_check_metrics():
    record_every_metric()
    text = exposition().decode()
    for spec in CATALOGUE.values():
        exported = spec.name + ("_total" if spec.kind == "counter" else "")
        assert f"# TYPE {exported} {spec.kind}" in text or f"# TYPE {spec.name} {spec.kind}" in text, (
            spec.name
        )
    proc = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "x0tta6bl4" in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_recording_without_ray_never_raises_even_with_wrong_labels(caplog):
    lookups = metric("rag_cache_lookups")
    lookups.inc(tags={"tier": "exact"})  # a missing label: logged once, the caller goes on
    lookups.inc(tags={"tier": "exact"})
    assert sum("rag_cache_lookups" in r.getMessage() for r in caplog.records) == 1
    before = REGISTRY.get_sample_value("x0tta6bl4_mesh_ticks_total", {"region": "7"}) or 0.0
    metric("x0tta6bl4_mesh_ticks").inc(3, tags={"region": "7"})
    metric("mesh_ticks").inc(0, tags={"region": "7"})  # zero increments are dropped, not errors
    assert REGISTRY.get_sample_value("x0tta6bl4_mesh_ticks_total", {"region": "7"}) == before + 3
    with pytest.raises(KeyError):
        metric("x0tta6bl4_not_catalogued")


def test_serve_metrics_answers_scrapes_with_the_platform_registry():
    metric("ledger_appends").inc()
    port = serve_metrics(0)
    resp = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert resp.status_code == 200 and "x0tta6bl4_ledger_appends_total" in resp.text
    assert "ray_" not in resp.text  # only this process's own registry, none of Ray's


def test_every_metric_is_in_the_operating_guides_catalogue_with_its_labels():
    docs = (Path(__file__).resolve().parents[3] / "docs" / "operating.md").read_text()
    for spec in CATALOGUE.values():
        exported = spec.name + ("_total" if spec.kind == "counter" else "")
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "–"
        assert f"| `{exported}` | {spec.kind} | {labels} |" in docs, exported


def test_a_metric_is_one_object_however_its_name_is_spelt():
    # Two objects would each register the name: the registry refuses the second, losing its samples.
    assert metric("security_authz_denials") is metric("x0tta6bl4_security_authz_denials")


def test_a_metric_that_recorded_outside_ray_pickles_by_name_and_so_does_the_gateway_app():
    # Serve pickles the gateway's FastAPI app with the module globals its routes use; a process
    # that recorded before connecting to Ray holds prometheus-client objects (locks) in its handles.
    import pickle

    import ray.cloudpickle as cloudpickle

    from x0tta6bl4.observability.metrics import domain_metrics

    requests_total = domain_metrics("gateway")["requests"]
    requests_total.inc(tags={"route": "/healthz", "code": "200"})
    assert pickle.loads(cloudpickle.dumps(requests_total)) is requests_total
    from x0tta6bl4.serve import ingress

    assert cloudpickle.dumps(ingress.api)
