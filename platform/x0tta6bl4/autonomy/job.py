"""One run of the autonomy job: plan it, step the mesh with the served apps and the controller, report."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from x0tta6bl4.autonomy.config import RunConfig, config_from_args
from x0tta6bl4.autonomy.hosts import host_report as report_hosts
from x0tta6bl4.autonomy.hosts import poll_hosts, ray_node_ids, start_hosts, stop_hosts
from x0tta6bl4.autonomy.report import build_report, print_summary, write_report
from x0tta6bl4.autonomy.serving import attach_or_deploy, serve_forever
from x0tta6bl4.autonomy.ticklog import TICKS_NAME, Replay, TickLog, load_run_config, save_run_config
from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.mesh.control import ControlParams
from x0tta6bl4.mesh.drift import DriftSchedule
from x0tta6bl4.mesh.faults import Action, Fault, random_schedule
from x0tta6bl4.mesh.pipeline import LocalMesh, Mesh, ShardedMesh, TickResult
from x0tta6bl4.mesh.shard import MeshSpec
from x0tta6bl4.mesh.topology import Topology, TopologySpec
from x0tta6bl4.observability import tracing
from x0tta6bl4.observability.metrics import domain_metrics
from x0tta6bl4.security.ledger import Ledger

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

#: Failures the run recovered from (controller retries, host sources lost).
_RECOVERY = domain_metrics("recovery")


@dataclasses.dataclass(frozen=True)
class Plan:
    """A validated run: topology, fault schedule and scripted actions."""

    config: RunConfig
    topology_spec: TopologySpec
    topology: Topology
    faults: tuple[Fault, ...]
    actions: dict[int, tuple[Action, ...]]
    run_id: str

    @property
    def run_dir(self) -> Path:
        return self.config.runs_dir / self.run_id


def plan_run(config: RunConfig) -> Plan:
    """Build and check everything the run needs before any Ray actor starts (ConfigError on bad input)."""
    topology_spec = TopologySpec(
        config.nodes, config.regions, config.seed, config.mean_degree, config.gateway_fraction
    )
    topology = topology_spec.build()
    drift = DriftSchedule.build(config.drift, topology, config.seed) if config.drift.enabled else None
    faults = list(
        random_schedule(
            topology,
            config.ticks,
            config.seed,
            config.faults_per_1000_ticks,
            tuple(config.fault_types),
            exclude=drift.churn if drift is not None else None,
        )
        if config.faults_per_1000_ticks > 0
        else []
    )
    for fc in config.faults:
        faults.append(
            Fault(len(faults), fc.type, fc.start_tick, fc.duration_ticks, fc.node, fc.peer, fc.severity)
        )
    for fault in faults:
        fault.validate(topology)
        if drift is not None:
            ends = (fault.node, fault.peer) if fault.peer is not None else (fault.node,)
            gone = [n for n in ends if drift.absent(fault.start_tick)[n]]
            if gone:
                raise ConfigError(
                    f"fault {fault.fault_id} on node {gone[0]}, which is not in the mesh at its start"
                )
    actions: dict[int, list[Action]] = {}
    for ac in config.actions:
        action = Action(ac.action, ac.node, ac.peer, ac.tick, reason="scripted in the run config")
        action.validate(topology)
        actions.setdefault(ac.tick, []).append(action)
    run_id = config.run_id or time.strftime("%Y%m%d-%H%M%S") + f"-s{config.seed}"
    if "/" in run_id or run_id in ("", ".", ".."):
        raise ConfigError(f"run id {run_id!r} must be a plain name")
    # Absolute at the driver: actors on other nodes (and in other working directories) get these.
    resolved: dict[str, Any] = {"runs_dir": config.runs_dir.resolve()}
    if config.state_dir is not None:
        resolved["state_dir"] = config.state_dir.resolve()
    config = config.model_copy(update=resolved)
    return Plan(
        config, topology_spec, topology, tuple(faults), {t: tuple(a) for t, a in actions.items()}, run_id
    )


class _Progress:
    """Live progress: a rich bar on a terminal, plain lines otherwise (logs, `ray job logs`)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self._last_line = -1.0
        self._bar: Any = None
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]mesh"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[state]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task("ticks", total=total, state="")
            self._bar.start()

    def update(self, tick: int, state: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=tick + 1, state=state)
            return
        now = time.monotonic()
        if now - self._last_line >= 2.0 or tick + 1 == self.total:
            self._last_line = now
            print(f"tick {tick + 1}/{self.total}  {state}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def execute(
    plan: Plan, on_tick: Callable[[TickResult], None] | None = None, resume: bool = False
) -> dict[str, Any]:
    """Run a planned job on Ray (or in process) and return its report (also written to disk).

    The report is written whatever happens: a run that fails part-way gets one with ``status``
    ``failed`` and the error, then the error is raised. With ``resume`` the run continues a run
    whose driver died (same run id): the shards rewind to their newest common checkpoint, the
    ticks after it are replayed with the journaled actions, and the run goes on from there.

    Raises:
        ConfigError: ``resume`` in process (only a sharded mesh keeps what a resume needs).
        ShardLostError: a shard could not be brought back (after its retries).
    """
    from x0tta6bl4.connect import connect_ray, disconnect_ray, sigterm_interrupts

    config = plan.config
    if resume and config.in_process:
        raise ConfigError("--resume needs the sharded mesh (the in-process kernel keeps no checkpoints)")
    tracing.setup_tracing("driver")
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_run_config(plan.run_dir, config.model_dump_json())
    spec = MeshSpec(
        topology=plan.topology_spec,
        seed=config.seed,
        faults=plan.faults,
        control=ControlParams(),
        checkpoint_dir=str(plan.run_dir / "checkpoints"),
        checkpoint_every_ticks=config.checkpoint_every_ticks,
        drift=config.drift,
    )
    conn = connect_ray(config.ray_address) if not config.in_process or config.ebpf else None
    mesh: Mesh = (
        LocalMesh(plan.topology, spec)
        if config.in_process
        else ShardedMesh(plan.topology, spec, keep_actors=config.keep_mesh, resume=resume)
    )
    placed = mesh.placement() if isinstance(mesh, ShardedMesh) else []
    replay = _replay(plan, mesh) if resume else Replay.none()
    _RECOVERY["replayed_ticks"].inc(replay.replayed_ticks)  # a resumed driver re-runs these ticks
    ticks_log = TickLog(plan.run_dir / TICKS_NAME, replay.kept_records())
    hosts = start_hosts(config, plan.topology) if conn is not None else {}
    loop = _Autonomy(plan, mesh, hosts) if config.autonomy else None
    if loop is not None:
        replay.rebuild_alarms(loop.note_alarms)
    progress = _Progress(config.ticks)
    timeline: list[dict[str, Any]] = replay.timeline()
    audit_ledger = Ledger(config.controller.provenance.resolved().ledger_dir)
    ledger_start = audit_ledger.current()
    started = time.perf_counter()
    host_frames: list[Any] = []
    decided: tuple[Action, ...] = replay.decided_after()
    elapsed = 0.0
    host_report: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] = []
    autonomy_report: dict[str, Any] | None = None
    failure: BaseException | None = None
    terminate = contextlib.ExitStack()  # TERM (ray job stop) ends the ticks as Ctrl-C does
    terminate.enter_context(sigterm_interrupts())
    try:
        while mesh.tick + 1 < config.ticks:
            tick = mesh.tick + 1
            replayed = replay.record(tick)
            actions = replay.actions(tick) if replayed is not None else plan.actions.get(tick, ()) + decided
            result = mesh.step(actions)
            s = result.summary_dict()
            entry: dict[str, Any] = {
                "tick": result.tick,
                "serviceable": s["serviceable"],
                "down": s["down"],
                "faulty_nodes": s["labelled"],
                "mean_latency_ms": s["latency_sum_ms"] / max(1.0, s["nodes"]),
                "active_faults": len(mesh.control.active_faults()),
            }
            timeline.append(entry)
            record: dict[str, Any] = {"tick": tick, "timeline": entry}
            state = ""
            if loop is not None:
                if replayed is not None:  # the controller saw this tick before the driver died
                    alarmed = [int(n) for n in replayed.get("alarmed", [])]
                    decided = tuple(Action(**a) for a in replayed.get("decided", []))
                    entry.update({k: v for k, v in replayed["timeline"].items() if k in _AUTONOMY_FIELDS})
                else:
                    step = loop.step(result, 1.0 - s["serviceable"] / max(1.0, s["nodes"]))
                    decided = step.actions
                    alarmed = list(step.alarmed)
                    entry.update(
                        {
                            "alarmed_nodes": len(step.alarmed),
                            "open_incidents": step.open_incidents,
                            "mesh_state": step.mesh_state,
                        }
                    )
                at_fault = _at_fault(mesh)
                loop.note_alarms(alarmed, at_fault)
                record.update(alarmed=alarmed, at_fault=at_fault, decided=[a.to_dict() for a in decided])
                state = f"  {entry.get('mesh_state', '')}  incidents {entry.get('open_incidents', 0)}"
                state += f"  actions {loop.actions}"
            ticks_log.append(record, sync=(tick + 1) % config.checkpoint_every_ticks == 0)
            if on_tick is not None:
                on_tick(result)
            progress.update(
                result.tick,
                f"serviceable {s['serviceable'] / s['nodes']:.1%}  faults {entry['active_faults']}{state}",
            )
            if hosts and tick % 10 == 0:
                host_frames = poll_hosts(list(hosts.values()))
            if config.tick_interval_s:
                time.sleep(config.tick_interval_s)
        elapsed = time.perf_counter() - started
        shards = _shard_moves(placed, mesh.placement()) if isinstance(mesh, ShardedMesh) else []
        host_report = report_hosts(hosts, host_frames, plan.topology) if hosts else []
        autonomy_report = loop.finish(mesh) if loop is not None else None
    except (Exception, KeyboardInterrupt) as exc:  # the report is still written; then the error is raised
        elapsed = time.perf_counter() - started
        failure = exc
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C or TERM: the report of the ticks so far
            hint = "" if config.in_process else f" (continue it with --resume {plan.run_id})"
            log.warning("run %s interrupted at tick %d%s", plan.run_id, mesh.tick, hint)
        else:
            log.error("run %s failed at tick %d: %s: %s", plan.run_id, mesh.tick, type(exc).__name__, exc)
    finally:
        terminate.close()
        progress.close()
        ticks_log.close()
        if loop is not None:
            loop.close(keep=config.keep_mesh or config.serve_forever)
        mesh.close()
        keep = config.keep_mesh or (config.serve_forever and not config.in_process)
        if hosts and not keep:
            stop_hosts(list(hosts.values()))
        if conn is not None and not keep:
            disconnect_ray(conn)
    restarts = getattr(mesh, "restarts", 0)
    report = build_report(plan, mesh, timeline, elapsed, restarts, host_report)
    interrupted = isinstance(failure, KeyboardInterrupt)
    report["status"] = "interrupted" if interrupted else "failed" if failure is not None else "completed"
    if failure is not None:
        report["error"] = f"{type(failure).__name__}: {failure}"[:2000]
    report["recovery"] = {
        "shard_restarts": restarts,
        "controller_failures": loop.failures if loop is not None else 0,
        "controller_failed_ticks": loop.failed_ticks if loop is not None else 0,
        "resumed_from_tick": replay.resumed_from,
        "replayed_ticks": replay.replayed_ticks,
        "shard_nodes_at_start": len({p["node_id"] for p in placed}),
        "shards_moved": sum(1 for m in shards if m["moved"]),
        "shards": shards,
    }
    if loop is not None and loop.local is None:
        report["serve_apps"] = {
            "app_name": loop.serve_config["app_name"],
            "owner": "declarative" if loop.declarative_serve else "this run",
        }
    if autonomy_report is not None:
        from x0tta6bl4.mapek.evaluate import by_fault_type

        report["detection"] = autonomy_report["detection"]
        report["remediation"] = autonomy_report["remediation"]
        report["incidents"] = autonomy_report["incidents"]
        for key in (
            "f1",
            "precision",
            "recall",
            "mttd_ticks",
            "mttr_ticks",
            "false_alarms_per_1000_node_ticks",
            "faults_acted_on",
            "first_action_success_ratio",
        ):
            report["summary"][key] = autonomy_report["detection"][key]
        report["summary"]["incidents"] = autonomy_report["remediation"]["incidents"]
        report["by_fault_type"] = by_fault_type(autonomy_report["detection"])
    ledger_end = audit_ledger.current()
    report["ledger"] = {
        "dir": str(audit_ledger.directory),
        "from_seq": ledger_start.seq + 1,
        "to_seq": ledger_end.seq,
        "head": str(ledger_end),
        "verify": f"x0tta6bl4 ledger verify --ledger-dir {audit_ledger.directory} --against "
        f"{plan.run_dir / 'report.json'}",
    }
    report["path"] = str(write_report(report, plan.run_dir / "report.json"))
    if timeline:
        from x0tta6bl4.mapek.plot import timeline_png

        report["timeline_png"] = str(timeline_png(report, plan.run_dir / "timeline.png"))
    tracing.flush()
    if failure is not None:
        raise failure
    return report


#: Timeline fields the controller contributes (a replayed tick takes them from its record).
_AUTONOMY_FIELDS = ("alarmed_nodes", "open_incidents", "mesh_state")


def _replay(plan: Plan, mesh: Mesh) -> Replay:
    """What a resumed run replays: its shards rewound to ``mesh.resumed_from``."""
    if not isinstance(mesh, ShardedMesh) or mesh.resumed_from is None:
        raise ConfigError("only a sharded mesh that resumed can replay a run")
    return Replay.load(plan.run_dir / TICKS_NAME, mesh.resumed_from, dict(mesh.journal.entries), plan.run_id)


def _at_fault(mesh: Mesh) -> list[int]:
    """Nodes of the faults active at the mesh's current tick."""
    return [
        n
        for status in mesh.control.active_faults()
        for n in (status.fault.node, status.fault.peer)
        if n is not None
    ]


class _Autonomy:
    """The served apps and the MAPE-K controller for one run (actor + Serve, or in process)."""

    def __init__(self, plan: Plan, mesh: Mesh, hosts: dict[int, Any]) -> None:
        from x0tta6bl4.mapek.evaluate import AlarmLedger

        config = plan.config
        self.plan = plan
        knowledge = str(
            Path(config.controller.knowledge_path or config.runs_dir / "knowledge.sqlite").resolve()
        )
        self.controller_config = config.controller.model_copy(
            update={"knowledge_path": knowledge, "provenance": config.controller.provenance.resolved()}
        )
        self.actions = 0
        self.declarative_serve = False
        self.local: Any = None
        self.actor: Any = None
        if config.in_process:
            self.local = _local_core(plan, self.controller_config)
            adjacency = self.local.adjacency
        else:
            from x0tta6bl4.mapek.controller import mesh_view, start_controller
            from x0tta6bl4.serve.thresholds import remove_board
            from x0tta6bl4.telemetry.source import source_name

            served = attach_or_deploy(config)
            self.serve_config, self.declarative_serve = served.config, served.declarative
            remove_board(self.serve_config["app_name"])  # thresholds published by an earlier run
            names = [source_name(n) for n in ray_node_ids()] if hosts else []
            self.actor = start_controller(
                plan.run_id, plan.topology_spec, names, self.controller_config, self.serve_config
            )
            adjacency = mesh_view(plan.topology, len(names)).adjacency()
        self.ledger = AlarmLedger(adjacency, self.controller_config.correlation_hops)
        self.mesh = mesh
        #: Controller calls that failed (the actor died or did not answer in time).
        self.failures = 0
        #: Ticks the controller could not be asked about at all (no actions decided for them).
        self.failed_ticks = 0
        self._last: Any = None
        #: Actions the mesh applied that the controller has not been told about yet (its acks).
        self._applied: list[tuple[int, str, int, int | None]] = []

    def step(self, result: TickResult, unserviceable_share: float) -> Any:
        if self.local is not None:
            with tracing.span("mapek.tick", {"tick": result.tick, "run_id": self.plan.run_id}):
                step = self.local.step(result.tick, self.mesh.frame(result).features, unserviceable_share)
        else:
            self._applied += [(a.tick, a.name, a.node, a.peer) for a in result.actions]
            step = self._call("step", result.tick, unserviceable_share, self._applied)
            if step is None:  # the controller stayed away: this tick decides nothing
                self.failed_ticks += 1
                step = self._idle(result.tick)
            else:
                self._applied = []  # acknowledged
        self._last = step
        self.actions += len(step.actions)
        return step

    def note_alarms(self, alarmed: list[int], at_fault: list[int]) -> None:
        """Record one tick's alarms against the nodes at fault then (for the evaluation)."""
        self.ledger.add(tuple(alarmed), at_fault, self.plan.topology.num_nodes)

    def _idle(self, tick: int) -> Any:
        from x0tta6bl4.mapek.interfaces import StepResult

        last = self._last
        return StepResult(
            tick,
            (),
            False,
            last.mesh_state if last is not None else "HEALTHY",
            last.alarmed if last is not None else (),
            last.open_incidents if last is not None else 0,
            errors=("controller unavailable",),
        )

    def _call(self, method: str, *args: Any) -> Any:
        """One controller call with a timeout; a dead controller is awaited (Ray restarts it) and asked again.

        Returns None when it still fails after :data:`CONTROLLER_RETRIES` tries.
        """
        import ray

        for _ in range(CONTROLLER_RETRIES):
            try:
                return ray.get(getattr(self.actor, method).remote(*args), timeout=CONTROLLER_TIMEOUT_S)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                self.failures += 1
                _RECOVERY["controller_retries"].inc()
                log.warning("controller call %s failed (%s); waiting for it to come back", method, exc)
                self._wait_for_controller()
        return None

    def _wait_for_controller(self) -> None:
        import ray

        deadline = time.monotonic() + CONTROLLER_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                ray.get(self.actor.status.remote(), timeout=5)
                return
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                time.sleep(0.5)

    def finish(self, mesh: Mesh) -> dict[str, Any]:
        from x0tta6bl4.mapek.evaluate import evaluate

        if self.local is not None:
            incidents = [i.to_dict() for i in self.local.incidents]
            summary = self.local.summary()
        else:
            incidents, summary = self._call("incidents"), self._call("summary")
            if incidents is None or summary is None:
                raise ControllerLostError("the controller did not answer for its incidents and summary")
        faults = [status.to_dict() for status in mesh.control.faults]
        detection = evaluate(faults, incidents, mesh.tick + 1, self.ledger)
        return {"detection": detection, "remediation": summary, "incidents": incidents}

    def close(self, keep: bool) -> None:
        if self.actor is None or keep:
            return
        import ray
        from ray import serve

        from x0tta6bl4.serve.thresholds import remove_board

        if tracing.enabled():  # the controller's last spans, before it is killed
            with contextlib.suppress(Exception):
                ray.get(self.actor.flush_traces.remote(), timeout=10)
        ray.kill(self.actor)
        if not self.declarative_serve:  # an app that `serve deploy` or a RayService owns stays up
            with contextlib.suppress(Exception):
                serve.delete(self.serve_config["app_name"])
        remove_board(self.serve_config["app_name"])


#: Tries of one controller call, and how long each may take (a restarted controller reloads its
#: learner from SQLite and reconnects to Serve first).
CONTROLLER_RETRIES = 3
CONTROLLER_TIMEOUT_S = 60.0


class ControllerLostError(X0tta6bl4Error):
    """The controller did not come back after its retries."""


def _shard_moves(start: list[dict[str, Any]], end: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per shard: the Ray nodes it started and ended on, whether Ray restarted it, what it resumed from."""
    return [
        {
            "region": a["region"],
            "started_on": a["node_id"],
            "ended_on": b["node_id"],
            "moved": a["node_id"] != b["node_id"],
            "restarted": a["pid"] != b["pid"] or a["node_id"] != b["node_id"],
            "resumed_from_checkpoint_tick": b["restored_tick"],
        }
        for a, b in zip(start, end, strict=True)
    ]


def _local_core(plan: Plan, controller_config: Any) -> Any:
    """The controller in this process, with the apps' logic in process too (``--in-process``)."""
    from x0tta6bl4.mapek.clients import LocalRunbooks, LocalScorer
    from x0tta6bl4.mapek.controller import mesh_view
    from x0tta6bl4.mapek.core import ControllerCore
    from x0tta6bl4.mapek.knowledge import KnowledgeStore

    return ControllerCore(
        mesh_view(plan.topology, 0),
        controller_config,
        LocalScorer(),
        LocalRunbooks(),
        KnowledgeStore(controller_config.knowledge_path),
        plan.run_id,
    )


def main_from_args(args: argparse.Namespace) -> int:
    """`x0tta6bl4 run`: validate, plan, execute, print (``--resume``: continue an interrupted run)."""
    resume = getattr(args, "resume", None)
    config = config_from_args(args)
    if resume is not None:
        config = resumed_config(config, resume)
    plan = plan_run(config)
    report = execute(plan, resume=resume is not None)
    print_summary(report, as_json=bool(getattr(args, "print_json", False)))
    if config.serve_forever and not config.in_process:
        serve_forever(config, declarative=report.get("serve_apps", {}).get("owner") == "declarative")
    return 0


def resumed_config(given: RunConfig, run_id: str) -> RunConfig:
    """The config run ``run_id`` was started with (from ``given.runs_dir``); where to reach Ray may change.

    Raises:
        ConfigError: no such run, or its saved config is unreadable.
    """
    if "/" in run_id or run_id in ("", ".", ".."):
        raise ConfigError(f"run id {run_id!r} must be a plain name")
    saved = load_run_config(given.runs_dir.resolve() / run_id)
    saved.update(run_id=run_id, ray_address=given.ray_address)
    try:
        return RunConfig.model_validate(saved)
    except ValueError as exc:
        raise ConfigError(f"run {run_id}'s saved config is invalid: {exc}") from None
