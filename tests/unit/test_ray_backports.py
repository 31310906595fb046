"""x0tta6bl4._ray_backports: Ray 2.55's metrics agent no longer deadlocks when a scrape meets a new metric.

Each check runs in a fresh interpreter: Ray's recorder sets OpenTelemetry's process-wide meter
provider and registers with prometheus-client's default registry, which other tests read.
"""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

#: Registers new gauges and counters while another thread scrapes the recorder's exposition, as a
#: node's agent does when workers export new metric names during a Prometheus scrape.
RACE = """
import sys, threading, time
if sys.argv[1] == "patched":
    from x0tta6bl4 import _ray_backports
    _ray_backports.install()
from ray._private.telemetry.open_telemetry_metric_recorder import OpenTelemetryMetricRecorder
from prometheus_client import REGISTRY, generate_latest

recorder = OpenTelemetryMetricRecorder()
done, scrapes = threading.Event(), []

def scrape():
    while not done.is_set():
        generate_latest(REGISTRY)
        scrapes.append(1)

def register():
    for i in range(400):
        recorder.register_gauge_metric(f"x_gauge_{i}", "a gauge")
        recorder.set_metric_value(f"x_gauge_{i}", {"region": "r0"}, float(i))
        recorder.register_counter_metric(f"x_count_{i}", "a counter")
        recorder.set_metric_value(f"x_count_{i}", {"region": "r0"}, 1.0)
        time.sleep(0.001)

scraper = threading.Thread(target=scrape, daemon=True)
registrar = threading.Thread(target=register, daemon=True)
scraper.start(); registrar.start()
registrar.join(12)
done.set()
scraper.join(3)
if registrar.is_alive() or scraper.is_alive():
    print("deadlocked", flush=True)
    import os; os._exit(3)
for i in range(400):  # a scrape clears the gauges it read: set them once more
    recorder.set_metric_value(f"x_gauge_{i}", {"region": "r0"}, float(i))
body = generate_latest(REGISTRY).decode()
print(len(scrapes), body.count("ray_x_gauge_"), body.count("ray_x_count_"))
"""


def _race(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RACE, mode], capture_output=True, text=True, timeout=120)


def test_registering_new_metrics_during_scrapes_never_deadlocks_and_exports_them_all():
    proc = _race("patched")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    scrapes, gauges, counters = (int(x) for x in proc.stdout.split())
    assert scrapes >= 2  # registrations and scrapes did overlap
    # Each family: a HELP, a TYPE and one sample line.
    assert gauges == counters == 3 * 400


def test_without_the_backport_the_same_race_deadlocks_the_pinned_ray():
    """The race above has teeth: Ray 2.55.1's own recorder deadlocks on it."""
    import ray

    if tuple(int(p) for p in ray.__version__.split(".")[:2]) >= (2, 57):
        pytest.skip(f"Ray {ray.__version__} has the fix (ray-project/ray#64946)")
    proc = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {sys.path!r}\n{RACE}", "plain"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3 and "deadlocked" in proc.stdout, proc.stdout + proc.stderr[-2000:]


@pytest.mark.skipif(
    sys.prefix == sys.base_prefix, reason="not in a virtualenv (scripts/setup.sh makes .venv)"
)
def test_every_process_of_the_venv_installs_the_backport_through_setup_sh_pth():
    pth = Path(sysconfig.get_paths()["purelib"]) / "zz_x0tta6bl4_ray_backports.pth"
    assert pth.is_file(), f"{pth} is missing: run scripts/setup.sh"
    code = (
        "import sys; from ray._private.telemetry import open_telemetry_metric_recorder as m; "
        "print(any(type(f).__name__ == '_RecorderFinder' for f in sys.meta_path), "
        "getattr(m.OpenTelemetryMetricRecorder, '_x0tta6bl4_backport', False))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["True", "True"], proc.stderr[-2000:]
