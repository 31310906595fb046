"""Flower's deployment runtime against its simulation: the same training run both ways, AUPRC and round time.

Both runs are ``x0tta6bl4 train`` in a child process (Flower's Ray backend shuts down Ray in
its driver): the simulation on Ray, then ``--deployment`` (SuperLink with TLS from a
throw-away CA and SuperNode authentication, one SuperNode process per region, plus one
unregistered SuperNode that must be refused). Same config and seeds, so the held-out AUPRC
may differ only by how the runtimes deliver the same updates.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from x0tta6bl4.bench._report import result

#: The issue's bound on |AUPRC(deployment) - AUPRC(simulation)|.
AUPRC_GAP_TARGET = 0.03


def _say(message: str) -> None:
    sys.stderr.write(f"bench flower-deployment: {message}\n")
    sys.stderr.flush()


def _size(quick: bool) -> dict[str, Any]:
    if quick:
        return {"nodes": 200, "regions": 2, "ticks": 60, "rounds": 1, "lora_rounds": 1, "eval_ticks": 60}
    # `x0tta6bl4 train`'s defaults for the mesh and the rounds; a shorter held-out scenario.
    return {"nodes": 2000, "regions": 4, "ticks": 240, "rounds": 5, "lora_rounds": 3, "eval_ticks": 200}


def results(quick: bool = False) -> list[dict[str, Any]]:
    """``flower_deployment_auprc``, its gap to the simulation's, and ``flower_deployment_round_wall_s``.

    Round wall time is the mean over every round but the first (which also starts the
    runtime's workers: Ray actors, or the ServerApp process); the first rounds are in params.

    Args:
        quick: a tiny mesh and two rounds (for the tests) instead of the training defaults.
    """
    from x0tta6bl4.federated.config import TrainConfig
    from x0tta6bl4.federated.run import train_in_subprocess

    size = _size(quick)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="x0-bench-flower-") as tmp:
        for mode in ("simulation", "deployment"):
            config = TrainConfig.model_validate(
                {
                    **size,
                    "seed": 11,
                    "eval_seed": 101,
                    "eval_nodes": size["nodes"],
                    "registry": f"{tmp}/registry-{mode}",
                    "runs_dir": f"{tmp}/runs",
                    "run_id": mode,
                    "deployment": mode == "deployment",
                    "rogue_supernode": mode == "deployment",
                    "ca_dir": str(Path(tmp) / "ca"),
                }
            )
            _say(f"training ({mode}): {size}")
            runs[mode] = train_in_subprocess(config)
    sim, dep = runs["simulation"].metrics, runs["deployment"].metrics
    params = {k: size[k] for k in ("nodes", "regions", "rounds", "lora_rounds")}
    gap = abs(float(dep["auprc"]) - float(sim["auprc"]))
    # Steady state: the first round of either runtime also starts its workers (Ray actors, or
    # the ServerApp process), so it is reported apart.
    wall = {
        mode: float(np.mean([r["round_s"] for r in runs[mode].rounds[1:] or runs[mode].rounds]))
        for mode in runs
    }
    first = {mode: float(runs[mode].rounds[0]["round_s"]) for mode in runs}
    refused = dep["deployment"]["refused_supernodes"]
    _say(f"auprc simulation {sim['auprc']:.4f} deployment {dep['auprc']:.4f}; round s {wall}")
    dep_params = {
        **params,
        "tls": dep["deployment"]["tls"]["verified_peer"],
        "supernode_auth": True,
        "refused_supernodes": len(refused),
        "rejected_updates": int(dep["rejected_updates"]),
    }
    return [
        result(
            "flower_deployment_auprc",
            float(dep["auprc"]),
            "auprc",
            dep_params,
            baseline=("simulation_auprc", float(sim["auprc"])),
        ),
        result(
            "flower_deployment_auprc_gap",
            gap,
            "auprc",
            params,
            target=("value", "<=", AUPRC_GAP_TARGET),
        ),
        result(
            "flower_deployment_round_wall_s",
            wall["deployment"],
            "s",
            {
                **params,
                "rounds_timed": "all but the first" if len(runs["deployment"].rounds) > 1 else "first",
                "first_round_s": first["deployment"],
                "simulation_first_round_s": first["simulation"],
            },
            baseline=("simulation_round_wall_s", wall["simulation"]),
        ),
    ]
