"""The run's timeline picture: faults, detections, actions and the service level over ticks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from x0tta6bl4.mapek.evaluate import action_fixes, first_action
from x0tta6bl4.mesh.faults import FAULT_TYPES


def timeline_png(report: dict[str, Any], path: Path) -> Path:
    """Draw faults (bars), confirmed detections (dots), first actions (triangles: green when that first
    action fixed the fault, red when not), healing actions (ticks) and service level; write a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    nodes = max(1, report["topology"]["nodes"])
    ticks = [t["tick"] for t in timeline]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(12, 6.5), sharex=True, gridspec_kw={"height_ratios": [1, 2]}, constrained_layout=True
    )
    top.plot(
        ticks, [100.0 * t["serviceable"] / nodes for t in timeline], color="tab:green", label="serviceable %"
    )
    top.set_ylabel("serviceable nodes (%)")
    if timeline and "alarmed_nodes" in timeline[0]:
        ax2 = top.twinx()
        ax2.plot(
            ticks, [t["alarmed_nodes"] for t in timeline], color="tab:red", lw=0.8, label="alarmed nodes"
        )
        ax2.set_ylabel("alarmed nodes", color="tab:red")
    top.set_title(f"run {report['run_id']}")
    colours = plt.get_cmap("tab10")
    faults = report["faults"]
    incidents = report.get("incidents") or []
    for row, fault in enumerate(faults):
        end = fault["ended_tick"] if fault["ended_tick"] is not None else (ticks[-1] if ticks else 0)
        colour = colours(FAULT_TYPES.index(fault["kind"]) % 10)
        bottom.plot([fault["start_tick"], end], [row, row], color=colour, lw=5, solid_capstyle="butt")
        targets = {fault["node"], fault["peer"]} - {None}
        hits = [
            i["confirmed_tick"]
            for i in incidents
            if i.get("confirmed_tick") is not None
            and targets & set(i["nodes"])
            and i["confirmed_tick"] >= fault["start_tick"] - 1
            and i["opened_tick"] <= end
        ]
        if hits:
            bottom.plot([min(hits)], [row], "o", color="black", ms=5)
        first = first_action(fault, incidents, ticks[-1] + 1 if ticks else 0)
        if first is not None:
            verdict = "tab:green" if action_fixes(fault, first) else "tab:red"
            bottom.plot([first["tick"]], [row + 0.3], "v", color=verdict, ms=7)  # above the healing tick
        if fault["remediation_tick"] is not None:
            bottom.plot([fault["remediation_tick"]], [row], "|", color="black", ms=14, mew=2)
    for kind in FAULT_TYPES:
        bottom.plot([], [], color=colours(FAULT_TYPES.index(kind) % 10), lw=5, label=kind)
    bottom.plot([], [], "o", color="black", label="detected")
    bottom.plot([], [], "v", color="tab:green", ms=7, label="first action: fixed it")
    bottom.plot([], [], "v", color="tab:red", ms=7, label="first action: did not")
    bottom.plot([], [], "|", color="black", mew=2, ms=10, label="healing action")
    bottom.set_yticks(range(len(faults)))
    bottom.set_yticklabels([f"{f['kind']} @{f['node']}" for f in faults], fontsize=7)
    bottom.set_xlabel("tick")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
