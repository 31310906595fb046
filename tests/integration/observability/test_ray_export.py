"""The platform's metrics as a Ray node's metrics agent exports them: names, types, promtool, real recordings."""

import re
import shutil
import subprocess
import time

import pytest
import requests

pytestmark = pytest.mark.ray

PROMTOOL = shutil.which("promtool")
#: Labels Ray's metrics agent adds to every application metric (CamelCase: promtool's lint names them).
RAY_LABELS = ("Component", "NodeAddress", "SessionName", "Version", "WorkerId")


def _record_in_a_worker(ca_dir: str, ledger_dir: str) -> int:
    """Every catalogued metric once (label values "x"), and a real tampered-ledger verification."""
    from x0tta6bl4.observability.metrics import CATALOGUE, metric
    from x0tta6bl4.security.ca import EmbeddedCA
    from x0tta6bl4.security.ledger import Ledger
    from x0tta6bl4.security.signing import SignatureVerifier, Signer

    for spec in CATALOGUE.values():
        record = {"counter": "inc", "gauge": "set", "histogram": "observe"}[spec.kind]
        getattr(metric(spec.name), record)(1.0, tags=dict.fromkeys(spec.labels, "x"))
    ca = EmbeddedCA.open(ca_dir)
    ledger = Ledger(ledger_dir)
    signer = Signer.obtain(ca, "spiffe://x0tta6bl4.local/controller")
    for i in range(3):
        ledger.append(signer, "remediation.action", f"node-{i}", {"action": "reroute"})
    text = ledger.entries_path.read_text()
    ledger.entries_path.write_text(text.replace('"reroute"', '"isolate_node"', 1))
    return 0 if ledger.verify(SignatureVerifier(ca.directory)).ok else 1


def _scrape_until(ray, families: set[str], timeout_s: float = 90.0) -> str:
    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    deadline = time.monotonic() + timeout_s
    while True:
        text = requests.get(url, timeout=10).text
        missing = {f for f in families if f"# TYPE {f} " not in text}
        if not missing or time.monotonic() > deadline:
            assert not missing, f"not exported within {timeout_s} s: {sorted(missing)}"
            return text
        time.sleep(1.0)


def _ours_without_rays_labels(text: str) -> str:
    """Our families only, with the labels Ray's agent injects removed (their lint is Ray's business)."""
    injected = re.compile(r"(?<=[{,])(?:" + "|".join(RAY_LABELS) + r')="[^"]*",?')
    lines = [line if line.startswith("#") else injected.sub("", line) for line in text.splitlines()]
    return "\n".join(line for line in lines if "x0tta6bl4_" in line) + "\n"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_every_metric_recorded_in_a_worker_is_exported_as_catalogued_and_passes_promtool(ray_local, tmp_path):
    from x0tta6bl4.observability.metrics import CATALOGUE

    ray = ray_local
    task = ray.remote(num_cpus=0)(_record_in_a_worker)
    failed = ray.get(task.remote(str(tmp_path / "ca"), str(tmp_path / "ledger")), timeout=120)
    assert failed == 1  # the edited entry was found: and counted, below
    exported = {f"ray_{s.name}{'_total' if s.kind == 'counter' else ''}": s.kind for s in CATALOGUE.values()}
    text = _scrape_until(ray, set(exported))
    for family, kind in exported.items():
        assert f"# TYPE {family} {kind}" in text
    ours = _ours_without_rays_labels(text)
    proc = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=ours, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr
    # The real verification's verdict, as the node exports it.
    failures = re.search(
        r'^ray_x0tta6bl4_ledger_verify_failures_total\{[^}]*kind="entry"[^}]*\} (\S+)$', text, re.M
    )
    assert failures is not None and float(failures.group(1)) >= 1.0
