"""The run's report: built from the plan, the mesh and the timeline, written as JSON, printed as a table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from x0tta6bl4 import __version__
from x0tta6bl4.durable import write_atomic
from x0tta6bl4.jsonsafe import json_safe

if TYPE_CHECKING:
    from x0tta6bl4.autonomy.job import Plan
    from x0tta6bl4.mesh.pipeline import Mesh


def build_report(
    plan: Plan,
    mesh: Mesh,
    timeline: list[dict[str, float]],
    elapsed_s: float,
    restarts: int,
    hosts: list[dict[str, Any]],
) -> dict[str, Any]:
    """The run's report: config, topology, faults and their fate, actions, timeline, summary."""
    config = plan.config
    faults = [status.to_dict() for status in mesh.control.faults]
    ended = [f for f in faults if f["ended_tick"] is not None]
    durations = [f["ended_tick"] - f["start_tick"] for f in ended]
    nodes = plan.topology.num_nodes
    availability = float(np.mean([t["serviceable"] for t in timeline]) / nodes) if timeline else 0.0
    summary = {
        "ticks": len(timeline),
        "faults_injected": sum(1 for f in faults if f["start_tick"] < len(timeline)),
        "faults_ended": len(ended),
        "faults_remediated": sum(1 for f in faults if f["remediated_by"] is not None),
        "mttr_ticks": float(np.mean(durations)) if durations else None,
        "availability": availability,
        "actions": len(mesh.control.actions),
        "shard_restarts": restarts,
        "ticks_per_s": len(timeline) / elapsed_s if elapsed_s > 0 else None,
        "node_ticks_per_s": nodes * len(timeline) / elapsed_s if elapsed_s > 0 else None,
    }
    return {
        "run_id": plan.run_id,
        "version": __version__,
        "config": json.loads(config.model_dump_json()),
        "topology": plan.topology.summary(),
        "faults": faults,
        "actions": [a.to_dict() for a in mesh.control.actions],
        "timeline": timeline,
        "summary": summary,
        "hosts": hosts,
        # Filled by the detection (anomaly service) and remediation (MAPE-K) stages.
        "detection": None,
        "remediation": None,
    }


def print_summary(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"run_id": report["run_id"], "path": report["path"], **report["summary"]}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {report['run_id']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    topo = report["topology"]
    table.add_row("mesh", f"{topo['nodes']} nodes, {topo['links']} links, {topo['regions']} regions")
    for key, value in report["summary"].items():
        shown = f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else str(value))
        table.add_row(key.replace("_", " "), shown)
    for kind, figures in (report.get("by_fault_type") or {}).items():
        table.add_row(f"{kind.replace('_', ' ')}", _fault_type_cell(figures))
    for host in report["hosts"]:
        table.add_row(f"host {host.get('host', '?')}", f"source {host.get('source', '?')}")
    table.add_row("report", report["path"])
    Console().print(table)


def _fault_type_cell(figures: dict[str, float | None]) -> str:
    """One fault type's recall, first-action success and MTTR, as one table cell."""

    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.3g}"

    return (
        f"recall {shown(figures['recall'])}, first action {shown(figures['first_action_success_ratio'])}, "
        f"MTTR {shown(figures['mttr_ticks'])} ticks"
    )


def write_report(report: dict[str, Any], path: Path) -> Path:
    """Write ``report`` as strict JSON (numpy as Python values, NaN as null, paths as text); returns it.

    The file is replaced atomically and fsynced (its directory is created if missing): after a
    crash it holds the previous report or this one, never a torn one.
    """
    text = json.dumps(json_safe(report), indent=1, default=os.fspath)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)
    return path
