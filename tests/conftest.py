"""Settings every test shares: models load from the packaged files only, never from a hub; tiers by
marker; with pytest-xdist (``make test`` runs two workers), each worker's Ray clusters apart, its
share of the cores for torch and BLAS, and the tests that share a Ray or a whole job kept on one worker
(meant to: with pytest 9.2 the marks have no effect, pytest-dev/pytest-xdist#1386)."""

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Ray's dashboard gives each of its module processes 30 s to start, then fails `ray start` (and a local
# Ray's start) with "Module MetricsHead failed to start": a loaded 2-core machine needs longer. Every
# Ray the tests start, in this process or a child, inherits this.
os.environ.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "180")

_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    # Ray keeps its sockets, logs and the `ray_current_cluster` file the platform reads under
    # RAY_TMPDIR: each worker (and every job its tests start, which inherit it) gets its own, so
    # no worker's job ever finds or joins the other worker's cluster. Short: socket paths.
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix=f"x0{_WORKER}-", dir="/tmp")
    # Each worker's share of the cores for torch's (OpenMP) and the BLAS thread pools, set before
    # any test imports them, and inherited by the jobs its tests start. At the libraries' default
    # (one thread a core in every worker) two workers oversubscribe the cores and the pools'
    # spinning threads wait on each other: a two-epoch detector training took 13 s instead of 0.2 s.
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for _pool in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_pool, _share)

#: xdist groups: every test of a group runs on one worker, in order. The integration tests share
#: the session's Ray (tests/integration/conftest.py) and their packages' Serve deployments; the
#: whole-job tests share one small run (tests/e2e/conftest.py). Unit tests spread freely.
_GROUPS = ("e2e", "integration")
_TESTS = Path(__file__).resolve().parent


#: Modules whose tests share the e2e session's small run (tests/e2e/conftest.py ``small_run``): one
#: xdist scope, so one worker builds the run (two or three minutes) and every one of them uses it.
_SMALL_RUN_MODULES = frozenset(
    f"tests/e2e/{name}.py"
    for name in ("test_prometheus", "test_grafana_dashboards", "test_run_tracing", "test_run_job")
)
#: Modules whose tests share a Ray head of their own (a module fixture that takes a minute or more to
#: start): one xdist scope each, so the head is started once. Split, each worker started its own
#: (test_ray_auth's token head: 104 s + 62 s of one run's work).
_OWN_HEAD_MODULES = frozenset({"tests/integration/security/test_ray_auth.py"})


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` that also keeps the small run's modules, and each own-head module, on one worker.

    With pytest 9.2, the ``@group`` suffix xdist 3.8 gives node ids never reaches its scheduler
    (pytest-dev/pytest-xdist#1386), so the ``xdist_group`` marks alone keep nothing together: each
    worker built the small run for itself (175 s and 128 s of set-up in one CI run). This scheduler
    groups those modules by path; every other test is scheduled on its own, as before.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SmallRunTogether(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            if module in _SMALL_RUN_MODULES:
                return "small-run"
            if module in _OWN_HEAD_MODULES:
                return module
            return str(super()._split_scope(nodeid))

    return SmallRunTogether(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    grouped = config.pluginmanager.hasplugin("xdist")
    for item in items:
        # A test that gets the session's Ray, directly or through another fixture, is a Ray test
        # whatever its module says, so `make test-fast` (-m "not ray ...") never starts Ray.
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
        top = Path(str(item.fspath)).resolve().relative_to(_TESTS).parts[0]
        if grouped and top in _GROUPS:
            item.add_marker(pytest.mark.xdist_group(top))


@pytest.fixture(scope="session")
def ebpf_host() -> None:
    """Skip (saying why and how to fix it) when this host refuses eBPF; the tests need it to run."""
    from x0tta6bl4.telemetry.source import ebpf_blockers

    blockers = ebpf_blockers()
    if blockers:
        reasons = "; ".join(f"[{b.check}] {b.reason} (fix: {b.fix})" for b in blockers)
        pytest.skip(f"this host refuses eBPF: {reasons}")


@pytest.fixture
def prometheus_client_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Metrics recorded in this test go to the prometheus-client registry, where the test reads them.

    The suite's pytest process joins the session's Ray for the integration tests and stays
    connected: a metric recorded afterwards would take Ray's pipeline (exported by the node's
    agent), not the registry these tests read back.
    """
    from x0tta6bl4.observability import metrics

    monkeypatch.setattr(metrics, "_ray_connected", lambda: False)
