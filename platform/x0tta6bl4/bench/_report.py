"""The benchmark output contract (../shared/BENCHMARKS.md): one JSON object per suite."""

from __future__ import annotations

import json
import os
import platform as _stdlib_platform
import sys
from typing import Any

from x0tta6bl4 import __version__


def machine_info() -> dict[str, Any]:
    """CPUs, memory, Python and Ray versions of the machine the suite ran on."""
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:  # pragma: no cover - ray is a declared dependency
        ray_version = "absent"
    mem_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count() or 1,
        "memory_gib": round(mem_bytes / 2**30, 1),
        "python": _stdlib_platform.python_version(),
        "ray": ray_version,
    }


def result(
    name: str,
    value: float,
    unit: str,
    params: dict[str, Any] | None = None,
    baseline: tuple[str, float] | None = None,
    target: tuple[str, str, float] | None = None,
) -> dict[str, Any]:
    """One result row; ``ratio`` is derived from ``baseline``, ``met`` from ``target``.

    Args:
        name: snake_case name with the unit last (``_per_s``, ``_bytes``, ``_ratio``).
        value: the measured figure.
        unit: human unit of ``value``.
        params: what was measured (sizes, workload).
        baseline: ``(name, value)`` of the figure measured in the same run to compare with.
        target: ``(metric, op, value)``; metric is ``"value"`` or ``"ratio"``, op ``">="`` or ``"<="``.
    """
    row: dict[str, Any] = {"name": name, "params": params or {}, "value": float(value), "unit": unit}
    if baseline is not None:
        row["baseline"] = {"name": baseline[0], "value": float(baseline[1])}
        row["ratio"] = float(value) / float(baseline[1]) if baseline[1] else float("nan")
    if target is not None:
        metric, op, goal = target
        row["target"] = {"metric": metric, "op": op, "value": goal}
        observed = row["ratio"] if metric == "ratio" else row["value"]
        row["met"] = bool(observed >= goal) if op == ">=" else bool(observed <= goal)
    return row


def report(suite: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole suite's output object."""
    return {"suite": suite, "version": __version__, "machine": machine_info(), "results": results}


def emit(doc: dict[str, Any], as_json: bool) -> None:
    """Print the suite's output: JSON on stdout, or a readable table."""
    if as_json:
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bench {doc['suite']} ({doc['machine']['cpus']} CPUs)")
    for col in ("name", "params", "value", "unit", "baseline", "ratio", "target"):
        table.add_column(col)
    for row in doc["results"]:
        tgt = row.get("target")
        table.add_row(
            row["name"],
            ", ".join(f"{k}={v}" for k, v in row["params"].items()),
            f"{row['value']:.4g}",
            row["unit"],
            f"{row['baseline']['name']}={row['baseline']['value']:.4g}" if "baseline" in row else "",
            f"{row['ratio']:.3f}" if "ratio" in row else "",
            (f"{tgt['metric']} {tgt['op']} {tgt['value']} " + ("met" if row["met"] else "NOT met"))
            if tgt
            else "",
        )
    Console(width=max(160, Console().width)).print(table)
