"""bench chaos: seeded runs with one component SIGKILLed mid-run each, against the same seed unharmed; a fuzz.

Mesh-layer kills (a shard; the driver, then ``--resume``) run without the controller, so the
run is deterministic and its timeline must equal the unharmed run's tick for tick. Kills of the
loop's components (the controller twice, a detector, retriever or gateway replica, an
EbpfSource) run with the controller: their timelines depend on when thresholds reach the
replicas, so they are compared by completion and MTTR. Every kill is a real ``SIGKILL`` of the
component's process; the driver is a separate ``x0tta6bl4 run`` process.

``--quick`` keeps the kills and trims the waits: the runs with the controller attach to one Serve
app deployed declaratively while the mesh-only cases run (each scores under a stream of its own,
so none inherits another's baselines), the driver's two processes join the bench's Ray instead
of starting one each (without shipping the package: its workers import the bench's), and the
live run's gateway is fuzzed while the run goes on until its first kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from x0tta6bl4 import RAY_NAMESPACE
from x0tta6bl4.bench._report import result

#: nodes, regions, ticks, tick of the (first) kill. A run with the controller measures MTTR only on
#: faults that would end within it (start + 60 ticks), so even the quick run needs 80 ticks.
FULL = (2000, 4, 160, 60)
QUICK = (300, 2, 80, 22)
SEED = 101
#: Fault rate by quick: the short run needs a denser schedule to have faults to repair.
FAULTS_PER_1000_TICKS = {False: 40.0, True: 120.0}
#: Ticks between the controller's two kills.
SECOND_KILL_AFTER = 15
#: Serve deployments whose replica a case kills, by target name.
REPLICAS = {"detector": "AnomalyDetector", "retriever": "RunbookRetriever", "gateway": "Gateway"}


def results(quick: bool = False) -> list[dict[str, Any]]:
    """Every row (``quick``: a small mesh and only the shard, controller and driver cases, for the tests)."""
    from x0tta6bl4.connect import connect_ray, disconnect_ray

    nodes, regions, ticks, kill_at = QUICK if quick else FULL
    params = {"nodes": nodes, "regions": regions, "ticks": ticks, "kill_tick": kill_at, "seed": SEED}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="x0tta6bl4-chaos-") as tmp:
        runs = Path(tmp)
        conn = connect_ray(dashboard=not quick)  # the dashboard lists the replicas the full run kills
        apps: _SharedApps | None = None
        try:
            size = {
                "nodes": nodes,
                "regions": regions,
                "ticks": ticks,
                "seed": SEED,
                "runs_dir": runs,
                "faults_per_1000_ticks": FAULTS_PER_1000_TICKS[quick],
                # One port for every run: Serve keeps the HTTP options it was first started with.
                "serve_port": _free_port(),
            }
            if quick:  # deploys while the mesh-only cases run
                apps = _SharedApps(_config(size, "loop-base", True))
            own_stream = apps is not None
            mesh_only = _run(size, "mesh-base", autonomy=False)
            rows += _case("shard", _run(size, "shard", False, _kill_shard(kill_at)), mesh_only, params)
            joins = conn.address if quick else None  # quick: the driver joins this Ray
            driver = _driver_case(size, runs, kill_at, autonomy=False, ray_address=joins)
            rows += _case("driver", driver, mesh_only, params)
            if apps is not None:
                apps.wait()
            loop_base = _run(size, "loop-base", autonomy=True, own_stream=own_stream)
            targets = ["controller"] if quick else ["controller", *REPLICAS, "ebpf"]
            fuzzed: list[Any] = []
            for target in targets:
                kill = (
                    _kill_controller(kill_at)
                    if target == "controller"
                    else _kill_named(target, kill_at, conn)
                )
                if target == "controller":  # the live run's gateway is fuzzed before its kills
                    # quick: fuzzed from the first tick on, beside the run; full: at one tick, the run waits
                    start, by = (1, kill_at) if quick else (kill_at - 3, kill_at - 3)
                    kill = _fuzz_first(kill, _config(size, target, True), quick, start, by, fuzzed)
                report = _run(size, target, True, kill, ebpf=target == "ebpf", own_stream=own_stream)
                # Host telemetry joins the run with eBPF on: its unharmed run has it too.
                base = _run(size, "loop-ebpf-base", True, ebpf=True) if target == "ebpf" else loop_base
                rows += _case(target, report, base, params)
            if not quick:  # the driver of a run with the controller: resumed, its report complete
                rows += _case(
                    "driver_loop", _driver_case(size, runs, kill_at, autonomy=True), loop_base, params
                )
            rows += _fuzz_rows(fuzzed)
        finally:
            if apps is not None:
                apps.close(wait=not conn.started_here)  # a Ray started here takes the app down with it
            disconnect_ray(conn)
    return rows


def _config(
    size: dict[str, Any], run_id: str, autonomy: bool, ebpf: bool = False, own_stream: bool = False
) -> Any:
    """The run's RunConfig; ``own_stream``: its controller scores under a stream named after the run."""
    from x0tta6bl4.autonomy.config import RunConfig
    from x0tta6bl4.mapek.config import ControllerConfig

    extra: dict[str, Any] = {}
    if own_stream:
        extra["controller"] = ControllerConfig(stream_id=f"{ControllerConfig().stream_id}-{run_id}")
    return RunConfig(**size, run_id=run_id, autonomy=autonomy, ebpf=ebpf, **extra)


def _run(
    size: dict[str, Any],
    run_id: str,
    autonomy: bool,
    kill: Callable[[int], None] | None = None,
    ebpf: bool = False,
    own_stream: bool = False,
) -> dict[str, Any]:
    """One run in this process; a run that fails still leaves its report (read back from disk).

    ``own_stream``: the run's controller scores under a stream of its own (on apps that outlive it).
    """
    from x0tta6bl4.autonomy.job import execute, plan_run

    plan = plan_run(_config(size, run_id, autonomy, ebpf, own_stream))
    print(f"bench chaos: run {run_id}", file=sys.stderr, flush=True)
    try:
        return execute(plan, on_tick=(lambda r: kill(r.tick)) if kill is not None else None)
    except Exception as exc:
        print(f"bench chaos: run {run_id} failed: {exc}", file=sys.stderr, flush=True)
        return _read_report(plan.run_dir) or {"status": "failed", "error": str(exc)}


def _read_report(run_dir: Path) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads((run_dir / "report.json").read_text())
        return loaded
    except (OSError, ValueError):
        return None


def _case(
    target: str, report: dict[str, Any], base: dict[str, Any], params: dict[str, Any]
) -> list[dict[str, Any]]:
    """The rows of one kill target against the unharmed run of the same kind."""
    p = {**params, "target": target}
    completed = report.get("status") == "completed" and len(report.get("timeline", [])) == params["ticks"]
    written = "timeline" in report
    rows = [
        result("chaos_run_completed", float(completed), "bool", p, target=("value", ">=", 1)),
        result("chaos_report_written", float(written), "bool", p, target=("value", ">=", 1)),
    ]
    mismatch = _mismatch(report.get("timeline", []), base.get("timeline", []))
    deterministic = target in ("shard", "driver")
    rows.append(
        result(
            "chaos_timeline_mismatch_ticks",
            mismatch,
            "ticks",
            p,
            target=("value", "<=", 0) if deterministic else None,
        )
    )
    mttr, base_mttr = report.get("summary", {}).get("mttr_ticks"), base.get("summary", {}).get("mttr_ticks")
    if mttr is not None and base_mttr:
        rows.append(
            result(
                "chaos_mttr_ticks",
                mttr,
                "ticks",
                p,
                baseline=("unharmed_mttr_ticks", base_mttr),
                target=("ratio", "<=", 1.2),
            )
        )
    if target not in ("shard", "driver"):  # runs with the controller: what the unharmed run healed
        lost = _healed(base) - _healed(report)
        rows.append(
            result(
                "chaos_healed_faults_lost",
                float(len(lost)),
                "faults",
                {**p, "healed_unharmed": len(_healed(base))},
                target=("value", "<=", 0) if target == "driver_loop" else None,
            )
        )
    recovery = report.get("recovery", {})
    for key in ("shard_restarts", "controller_failures"):
        if recovery.get(key):
            rows.append(result(f"chaos_{key}", float(recovery[key]), "count", p))
    return rows


def _healed(report: dict[str, Any]) -> set[tuple[Any, ...]]:
    """The faults a run's remediation healed, by kind, node and start tick."""
    return {
        (f.get("kind"), f.get("node"), f.get("start_tick"))
        for f in report.get("faults", [])
        if f.get("remediated_by") is not None
    }


def _mismatch(timeline: list[dict[str, Any]], base: list[dict[str, Any]]) -> int:
    """Ticks whose entries differ (a missing tick counts)."""
    differ = sum(1 for a, b in zip(timeline, base, strict=False) if a != b)
    return differ + abs(len(timeline) - len(base))


def _pid_kill(pid: int) -> None:
    import psutil

    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).wait(timeout=30)


def _kill_shard(at: int) -> Callable[[int], None]:
    def kill(tick: int) -> None:
        if tick == at:
            import ray

            from x0tta6bl4.mesh.shard import shard_name

            shard = ray.get_actor(shard_name(1), namespace=RAY_NAMESPACE)
            _pid_kill(int(ray.get(shard.status.remote(), timeout=30)["pid"]))

    return kill


def _kill_controller(at: int) -> Callable[[int], None]:
    def kill(tick: int) -> None:
        if tick in (at, at + SECOND_KILL_AFTER):
            import ray

            from x0tta6bl4.mapek.controller import CONTROLLER_NAME

            controller = ray.get_actor(CONTROLLER_NAME, namespace=RAY_NAMESPACE)
            _pid_kill(int(ray.get(controller.status.remote(), timeout=60)["pid"]))

    return kill


def _kill_named(target: str, at: int, conn: Any) -> Callable[[int], None]:
    """SIGKILL the first live actor of a Serve deployment (``REPLICAS``) or an EbpfSource."""

    def kill(tick: int) -> None:
        if tick != at:
            return
        from ray.util.state import list_actors

        wanted = REPLICAS.get(target, "EbpfSource")
        address = f"http://{conn.dashboard_url}" if conn.dashboard_url else None
        alive = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000, detail=True)
        pids = [a.pid for a in alive if a.class_name and a.class_name.split(":")[-1] == wanted and a.pid]
        if not pids:
            raise RuntimeError(f"no live {wanted} actor to kill")
        _pid_kill(int(pids[0]))

    return kill


def _driver_case(
    size: dict[str, Any], runs: Path, at: int, autonomy: bool, ray_address: str | None = None
) -> dict[str, Any]:
    """`x0tta6bl4 run` SIGKILLed once it has recorded tick ``at``, then `x0tta6bl4 run --resume`.

    ``ray_address``: both processes join that cluster (default: each starts a local Ray of its own).
    """
    run_id = "driver_loop" if autonomy else "driver"
    cli = [str(Path(sys.executable).parent / "x0tta6bl4")]
    joins = ("--ray-address", ray_address) if ray_address else ()
    args = [
        "run",
        *("--nodes", str(size["nodes"]), "--regions", str(size["regions"]), "--ticks", str(size["ticks"])),
        *("--seed", str(size["seed"]), "--runs-dir", str(runs), "--run-id", run_id),
        *("--faults-per-1000-ticks", str(size["faults_per_1000_ticks"])),
        *("--serve-port", str(size["serve_port"]), "--no-ebpf", "--tick-interval-s", "0.02"),
        *(() if autonomy else ("--no-autonomy",)),
        *joins,
    ]
    ticks = runs / run_id / "ticks.jsonl"
    print(f"bench chaos: run {run_id} (killed, then resumed)", file=sys.stderr, flush=True)
    env = os.environ.copy()
    if ray_address:  # on this machine, the cluster's workers import the package the bench runs
        from x0tta6bl4.connect import SHIP_PACKAGE_ENV

        env[SHIP_PACKAGE_ENV] = "off"
    proc = subprocess.Popen([*cli, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if ticks.exists() and ticks.read_text().count("\n") > at:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(
        [*cli, "run", "--runs-dir", str(runs), "--resume", run_id, *joins],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    report = _read_report(runs / run_id) or {}
    if resumed.returncode != 0:
        print(f"bench chaos: resume failed: {resumed.stderr[-1000:]}", file=sys.stderr, flush=True)
        report["status"] = "failed"
    return report


class _SharedApps:
    """The run's Serve apps deployed once, declaratively (as ``serve deploy`` does), in the background.

    A run with the controller attaches to a declaratively deployed app of its name instead of
    deploying its own, and leaves it up when it ends: one deploy serves every such run.
    """

    def __init__(self, config: Any) -> None:
        from x0tta6bl4.autonomy.serving import serve_config_of

        self.served = serve_config_of(config)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._deploy, name="chaos-serve-deploy", daemon=True)
        self._thread.start()

    def _deploy(self) -> None:
        try:
            from ray import serve
            from ray.serve.context import _get_global_client
            from ray.serve.schema import ServeDeploySchema

            from x0tta6bl4.serve.front import require_front_token

            served = self.served
            require_front_token(served)  # as the run's own deploy does: the gateway believes the front only
            http = {
                "host": served.http.host,
                "port": served.http.port,
                "request_timeout_s": served.http.request_timeout_s,
            }
            print("bench chaos: deploying the Serve apps once, for every run", file=sys.stderr, flush=True)
            serve.start(http_options=http)
            app = {
                "name": served.app_name,
                "route_prefix": served.route_prefix,
                "import_path": "x0tta6bl4.serve.app:build_app",
                "args": served.model_dump(mode="json"),
            }
            schema = ServeDeploySchema.model_validate({"http_options": http, "applications": [app]})
            _get_global_client().deploy_apps(schema)
        except BaseException as exc:  # raised by wait(), in the bench's own thread
            self._error = exc

    def wait(self) -> None:
        """Return once the deploy was handed to Serve (each run waits for the app to be running).

        Raises:
            RuntimeError: the deploy failed.
        """
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"deploying the shared Serve apps failed: {self._error}") from self._error

    def close(self, wait: bool) -> None:
        """Delete the app (``wait``: until it is gone)."""
        from ray import serve

        self._thread.join()
        with contextlib.suppress(Exception):
            serve.delete(self.served.app_name, _blocking=wait)


def _fuzz_first(
    then: Callable[[int], None], config: Any, quick: bool, start: int, by: int, out: list[Any]
) -> Callable[[int], None]:
    """From tick ``start``, fuzz the running app's gateway from its OpenAPI schema (through the
    front's token, as an operator), done by tick ``by`` (the run waits for it there); every tick,
    ``then``."""
    fuzzing: list[threading.Thread] = []

    def fuzz() -> None:
        try:
            out.append(_fuzz(config, quick))
        except Exception as exc:  # reported after the run: a fuzz that cannot run must not pass
            out.append(exc)

    def step(tick: int) -> None:
        if tick == start:
            fuzzing.append(threading.Thread(target=fuzz, name="chaos-fuzz", daemon=True))
            fuzzing[0].start()
        if tick >= by and fuzzing:
            fuzzing.pop().join()
        then(tick)

    return step


def _fuzz(config: Any, quick: bool) -> Any:
    from x0tta6bl4.autonomy.serving import serve_config_of
    from x0tta6bl4.security.front_token import FRONT_TOKEN_HEADER, PEER_ID_HEADER
    from x0tta6bl4.security.identity import WorkloadKind, workload_id
    from x0tta6bl4.serve.front import require_front_token
    from x0tta6bl4.serve.fuzz import fuzz_gateway

    served = serve_config_of(config)
    headers = {
        FRONT_TOKEN_HEADER: require_front_token(served),
        PEER_ID_HEADER: str(workload_id(WorkloadKind.OPERATOR, "chaos")),
    }
    base = f"http://127.0.0.1:{served.http.port}{served.route_prefix}".rstrip("/")
    print(f"bench chaos: fuzzing {base}", file=sys.stderr, flush=True)
    return fuzz_gateway(
        base,
        max_examples=2 if quick else 25,
        max_boundary_cases=6 if quick else 100,
        seed=24,
        budget_s=30 if quick else 180,
        headers=headers,
    )


def _fuzz_rows(fuzzed: list[Any]) -> list[dict[str, Any]]:
    if not fuzzed:
        return []
    report = fuzzed[0]
    if isinstance(report, Exception):
        raise RuntimeError(f"the fuzz could not run: {report}") from report
    p = {"operations": "all", "seed": 24, "hangs": report.hangs, "check_failures": report.check_failures}
    return [
        result("fuzz_requests", report.requests, "requests", p),
        result("fuzz_5xx", report.status_5xx, "responses", p, target=("value", "<=", 0)),
        result("fuzz_max_latency_ms", report.max_latency_ms, "ms", p),
    ]


def _free_port() -> int:
    from x0tta6bl4.connect import free_local_port

    return free_local_port()
