"""What a federated training run reports: progress lines, metrics.json, the model card, the final table."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from x0tta6bl4 import __version__
from x0tta6bl4.jsonsafe import json_safe

if TYPE_CHECKING:  # run.py imports this module; these are only its types
    from x0tta6bl4.federated.outcome import FederationOutcome, RoundRecord
    from x0tta6bl4.federated.run import TrainPlan, TrainResult


def say(message: str) -> None:
    """One line of live progress on stderr (plain lines: they read the same in `ray job logs`)."""
    print(message, file=sys.stderr, flush=True)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def progress_round(rec: RoundRecord, total: int) -> None:
    failed = f" ({rec.failed} failed)" if rec.failed else ""
    failed += f" ({rec.rejected} rejected)" if rec.rejected else ""
    say(
        f"round {rec.round}/{total} {rec.phase:<4}  clients {rec.replied}/{rec.sampled}{failed}  "
        f"loss {fmt(rec.loss)}  auprc {fmt(rec.auprc)}  "
        f"bytes {fmt_bytes(rec.bytes_down + rec.bytes_up + rec.bytes_eval)}  "
        f"train {rec.local_train_s:.1f}s  overhead {rec.overhead_s:.1f}s  round {rec.round_s:.1f}s"
    )
    for failure in rec.failures:
        say(f"  failed: {failure}")
    for rejection in rec.rejections:
        say(f"  rejected: {rejection}")


def _phase_mean(rounds: list[dict[str, Any]], phase: str) -> float | None:
    values = [r["bytes"] for r in rounds if r["phase"] == phase]
    return float(np.mean(values)) if values else None


def build_metrics(
    plan: TrainPlan,
    outcome: FederationOutcome,
    heldout: dict[str, Any],
    timings: dict[str, float],
    deployment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The version's metrics.json: headline held-out figures, per-round table, traffic, timings, config.

    Args:
        plan: the run.
        outcome: what the federation produced.
        heldout: the held-out evaluation.
        timings: phase wall times.
        deployment: what Flower's deployment runtime ran (None: the simulation).
    """
    rounds = []
    for rec in outcome.rounds:
        row = rec.to_dict()
        row["bytes"] = rec.bytes_down + rec.bytes_up + rec.bytes_eval
        rounds.append(row)
    final = heldout["global"]
    metrics = {
        "auprc": final.get("auprc"),
        "auroc": final.get("auroc"),
        "best_f1": final.get("best_f1"),
        "pretrained_auprc": heldout["pretrained"].get("auprc"),
        "rounds": plan.config.rounds,
        "lora_rounds": plan.config.lora_rounds,
        "clients": plan.config.regions,
        "min_clients": plan.config.min_clients,
        "strategy": plan.config.strategy,
        "failed_replies": sum(r["failed"] for r in rounds),
        "rejected_updates": sum(r["rejected"] for r in rounds),
        "runtime": "deployment" if deployment is not None else "simulation",
        "deployment": deployment,
        "bytes_per_round_full": _phase_mean(rounds, "full"),
        "bytes_per_round_lora": _phase_mean(rounds, "lora"),
        "model_bytes": outcome.full_bytes,
        "adapter_bytes": outcome.adapter_bytes,
        **timings,
        "heldout": heldout,
        "round_table": rounds,
        "run_id": plan.run_id,
        "platform_version": __version__,
        "config": json.loads(plan.config.model_dump_json()),
    }
    return dict(json_safe(metrics))


def model_card(plan: TrainPlan, metrics: Mapping[str, Any]) -> str:
    """A short Markdown model card: what was trained, on what, how, and how well."""
    c = plan.config
    lines = [
        f"# {plan.spec.name} (federated)",
        "",
        "GraphSAGE masked-node autoencoder: scores each mesh node by how badly its neighbourhood "
        "predicts its telemetry. Trained without labels.",
        "",
        "## Training",
        (
            "- Flower deployment (SuperLink with TLS and SuperNode authentication), one SuperNode per "
            if c.deployment
            else "- Flower simulation, one client per "
        )
        + f"mesh region: {c.regions} clients, at least {c.min_clients} accepted updates per round "
        f"(NaN/inf and updates over {c.max_update_norm_ratio:g}x the round's median norm are rejected).",
        f"- {c.rounds} full-model rounds ({c.strategy}"
        + (f", mu={c.proximal_mu}" if c.strategy == "fedprox" else "")
        + f"), then {c.lora_rounds} LoRA rounds (rank {plan.spec.lora.rank}, FedAvg of adapters).",
        f"- Data: simulated mesh, {c.nodes} nodes, {c.ticks} ticks, seed {c.seed}, "
        f"{c.faults_per_1000_ticks:g} faults per 1,000 ticks; each client reads its region's "
        + ("windows from its SuperNode's own file." if c.deployment else "MeshShard."),
        f"- Weights stored: the global adapters merged into the pre-trained weights (run {plan.run_id}).",
        "",
        "## Evaluation (held-out simulated mesh; labels used for evaluation only)",
        f"- Scenario: {c.eval_nodes} nodes, {c.eval_ticks} ticks, seed {c.eval_seed}.",
        f"- AUPRC {fmt(metrics.get('auprc'))}, AUROC {fmt(metrics.get('auroc'))}, "
        f"best F1 {fmt(metrics.get('best_f1'))} "
        f"(pre-trained model before LoRA: AUPRC {fmt(metrics.get('pretrained_auprc'))}).",
        f"- Traffic per round: full model {fmt_bytes(metrics.get('bytes_per_round_full'))}, "
        f"LoRA {fmt_bytes(metrics.get('bytes_per_round_lora'))} "
        "(the first LoRA round also ships the base weights).",
        "",
        "## Limits",
        "- Simulated telemetry only; real eBPF telemetry has no labels to evaluate against.",
        "- Per-region personalised models (own adapters, the federation's error scale) are scored in "
        "metrics.json (`heldout.regions`: held-out mesh; `heldout.regions_later`: the training mesh after "
        "its training window); their adapters are not stored.",
    ]
    return "\n".join(lines) + "\n"


def print_result(result: TrainResult, as_json: bool = False) -> None:
    """The final report on stdout: the rounds table and held-out figures, the same numbers as metrics.json."""
    if as_json:
        record = {
            "model": result.model,
            "version": result.version,
            "uri": result.uri,
            "promoted": result.promoted,
            "metrics": result.metrics,
        }
        print(json.dumps(record, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    m = result.metrics
    rounds = Table(title=f"federated rounds ({result.run_id})")
    for name in ("round", "phase", "clients", "loss", "auprc", "bytes", "train s", "overhead s", "round s"):
        rounds.add_column(name, justify="left" if name == "phase" else "right", no_wrap=True)
    for r in result.rounds:
        rounds.add_row(
            str(r["round"]),
            r["phase"],
            f"{r['replied']}/{r['sampled']}",
            fmt(r["loss"]),
            fmt(r["auprc"]),
            str(r["bytes"]),
            fmt(r["local_train_s"], 2),
            fmt(r["overhead_s"], 2),
            fmt(r["round_s"], 2),
        )
    console.print(rounds)
    summary = Table(title=f"{result.model} {result.version}")
    summary.add_column("figure", no_wrap=True)
    summary.add_column("value", justify="right", no_wrap=True)
    for key in ("auprc", "auroc", "best_f1", "pretrained_auprc"):
        summary.add_row(f"held-out {key}", fmt(m[key]))
    for key, where in (("regions", "held-out mesh"), ("regions_later", "training mesh, later ticks")):
        for region, entry in m["heldout"].get(key, {}).items():
            personal = entry.get("personalised", {})
            summary.add_row(
                f"region {region} auprc global / personalised ({where})",
                f"{fmt(entry['global'].get('auprc'))} / {fmt(personal.get('auprc'))}",
            )
    for key in ("bytes_per_round_full", "bytes_per_round_lora", "model_bytes", "adapter_bytes"):
        value = m[key]
        summary.add_row(key.replace("_", " "), "-" if value is None else f"{value:.0f}")
    summary.add_row("failed replies", str(m["failed_replies"]))
    summary.add_row("rejected updates", str(m["rejected_updates"]))
    for key in ("federation_s", "local_train_s", "overhead_s", "heldout_eval_s"):
        summary.add_row(key.replace("_", " "), fmt(m[key], 2))
    summary.add_row("version uri", result.uri + (" (promoted)" if result.promoted else ""))
    console.print(summary)
