"""What one federated client does: load its region's windows from the MeshShard actor, train, evaluate."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from x0tta6bl4 import RAY_NAMESPACE
from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.mesh.shard import shard_name
from x0tta6bl4.mesh.topology import Topology, TopologySpec
from x0tta6bl4.models import lora
from x0tta6bl4.models.data import GraphSeries, series_from_frames
from x0tta6bl4.models.evaluate import detection_metrics
from x0tta6bl4.models.graphsage import DetectorSpec, GraphSAGEDetector
from x0tta6bl4.models.training import train_detector
from x0tta6bl4.telemetry.windows import SeriesInputs

#: Training phases: full-model rounds (pre-training), then adapter-only rounds.
PHASES = ("full", "lora")


class RegionDataError(X0tta6bl4Error):
    """A region's shard is missing, or has no windows to train on."""


@functools.lru_cache(maxsize=4)
def _topology(spec: TopologySpec) -> Topology:
    return spec.build()


@functools.lru_cache(maxsize=16)
def _cached_region(region: int, spec_json: str, path: str | None) -> GraphSeries:
    spec = DetectorSpec.model_validate_json(spec_json)
    if path is not None:
        return load_series_file(path, spec)
    return load_region_series(region, spec)


def save_series_file(series: GraphSeries, path: str | os.PathLike[str]) -> Path:
    """Write a region's series (levels, graph, ids, labels) to one ``.npz`` file, for a SuperNode to read.

    A deployment's SuperNodes run outside the training job's Ray cluster: each gets the
    file of its own region and nothing else, the same windows a simulated client pulls
    from the MeshShard actor.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "levels": series.inputs.levels,
        "edge_index": series.edge_index,
        "node_ids": series.node_ids,
        "region": series.region,
    }
    if series.labels is not None:
        arrays["labels"] = series.labels
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(out)
    return out


def load_series_file(path: str | os.PathLike[str], spec: DetectorSpec) -> GraphSeries:
    """The series :func:`save_series_file` wrote (RegionDataError when it is missing or unreadable)."""
    try:
        with np.load(path) as data:
            return GraphSeries(
                inputs=SeriesInputs(spec.window, data["levels"]),
                edge_index=data["edge_index"],
                node_ids=data["node_ids"],
                labels=data["labels"] if "labels" in data.files else None,
                region=data["region"],
            )
    except (OSError, KeyError, ValueError) as exc:
        raise RegionDataError(f"cannot read region windows from {path}: {exc}") from exc


def load_region_series(region: int, spec: DetectorSpec, namespace: str = RAY_NAMESPACE) -> GraphSeries:
    """Pull every kept frame of ``region`` from its named MeshShard actor and build the region's series.

    Runs inside a Flower ClientApp (a Ray worker of the training job's own driver); the
    shard belongs to whoever started the mesh and is looked up by name. The graph is the
    region's nodes and the links among them.
    """
    import ray

    try:
        shard = ray.get_actor(shard_name(region), namespace=namespace)
    except ValueError as exc:
        raise RegionDataError(
            f"no MeshShard actor {shard_name(region)!r} in namespace {namespace!r}: start the mesh first"
        ) from exc
    frames, topology_spec = ray.get([shard.frames.remote(), shard.topology_spec.remote()])
    if len(frames) <= spec.window.warmup_ticks:
        raise RegionDataError(
            f"region {region} has {len(frames)} frames; training needs more than the "
            f"{spec.window.warmup_ticks}-tick warm-up"
        )
    topology = _topology(topology_spec)
    nodes = np.asarray(topology.region_nodes(region), dtype=np.int64)
    return series_from_frames(spec.window, topology, frames, nodes)


def region_series(region: int, spec: DetectorSpec, path: str | None = None) -> GraphSeries:
    """The region's series, cached per process (a client trains on the same windows every round).

    Args:
        region: the mesh region.
        spec: detector spec (its window spec shapes the inputs).
        path: a file from :func:`save_series_file` (deployment), or None: the region's
            MeshShard actor (:func:`load_region_series`, simulation).
    """
    return _cached_region(region, spec.model_dump_json(), path)


def new_detector(spec: DetectorSpec, seed: int = 0) -> GraphSAGEDetector:
    import torch

    torch.manual_seed(seed)
    return GraphSAGEDetector(spec)


def fit(
    spec: DetectorSpec,
    series: GraphSeries,
    phase: str,
    arrays: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    base: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One round of local training; returns the updated arrays of the phase and metrics.

    Args:
        spec: detector spec.
        series: the client's region.
        phase: ``"full"`` (``arrays`` = every weight) or ``"lora"`` (``arrays`` = adapters
            only; ``base`` = the pre-trained full weights they adapt).
        arrays: the global arrays of this round.
        config: ``local_epochs`` (int), ``proximal_mu`` (float, FedProx; 0 = FedAvg),
            ``seed`` (int; vary per round and region).
        base: full weights, needed in the ``lora`` phase.
    """
    if phase not in PHASES:
        raise ConfigError(f"unknown training phase {phase!r} (known: {', '.join(PHASES)})")
    detector = GraphSAGEDetector(spec)
    train = spec.train.model_copy(update={"seed": int(config.get("seed", 0))})
    epochs = int(config.get("local_epochs", 1))
    mu = float(config.get("proximal_mu", 0.0))
    if phase == "full":
        lora.load_full_arrays(detector, arrays)
        reference = {k: _tensor(v) for k, v in arrays.items()}
        metrics = train_detector(
            detector, [series], train, epochs=epochs, proximal_mu=mu, reference=reference
        )
        return lora.full_arrays(detector), metrics
    if base is None:
        raise ConfigError("the lora phase needs the pre-trained base weights")
    lora.load_full_arrays(detector, base)
    model = lora.with_adapters(detector, spec.lora)
    lora.load_adapter_arrays(model, arrays)
    metrics = train_detector(model, [series], train, epochs=epochs)
    return lora.adapter_arrays(model), metrics


def detector_from(
    spec: DetectorSpec,
    phase: str,
    arrays: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray] | None = None,
) -> Any:
    """The model a client or the server scores with: plain detector, or base plus adapters."""
    detector = GraphSAGEDetector(spec)
    if phase == "full":
        lora.load_full_arrays(detector, arrays)
        return detector
    if base is None:
        raise ConfigError("the lora phase needs the pre-trained base weights")
    lora.load_full_arrays(detector, base)
    model = lora.with_adapters(detector, spec.lora)
    lora.load_adapter_arrays(model, arrays)
    return model


def personalised(
    spec: DetectorSpec,
    own: Mapping[str, np.ndarray],
    shared: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray],
) -> Any:
    """A region's personalised model: its own adapters, scored in the federation's error scale.

    A region calibrates its error tail on a couple of hundred ticks of its own faults. An
    output that stayed quiet there (packet drops in a region that saw no congestion) gets
    a tail a fraction of the federation's and then dominates every score where it moves
    (docs/performance.md: what that did to one region's AUPRC). With the federation's
    scale (``shared["error_scale"]``, the FedAvg of every region's) the adapters still
    personalise the reconstruction, and scores keep one unit, and one threshold, across
    regions.

    Args:
        spec: detector spec.
        own: the region's adapters (what its client returned in the last LoRA round).
        shared: the federation's aggregated adapters of that round.
        base: the pre-trained full weights.
    """
    arrays = dict(own)
    if "error_scale" in shared:
        arrays["error_scale"] = np.asarray(shared["error_scale"])
    return detector_from(spec, "lora", arrays, base)


def evaluate(model: Any, series: GraphSeries, ticks: Sequence[int] | None = None) -> dict[str, float]:
    """Score a series; with simulator labels also AUPRC/AUROC/best F1 (labels are for evaluation only).

    Args:
        model: a detector, or one wrapped by peft.
        series: the series to score.
        ticks: tick indices to score (default: every valid tick).
    """
    from x0tta6bl4.models.training import score_series

    ticks = list(series.valid_ticks if ticks is None else ticks)
    scores = score_series(model, series, ticks)
    out: dict[str, float] = {"mean_score": float(np.mean(scores)), "node_ticks": float(scores.size)}
    if series.labels is not None:
        labels = series.labels[ticks]
        if (labels > 0).any() and (labels == 0).any():
            m = detection_metrics(scores, labels)
            out.update({k: float(m[k]) for k in ("auprc", "auroc", "best_f1")})  # type: ignore[arg-type]
    return out


def initial_arrays(
    spec: DetectorSpec, phase: str, seed: int = 0, base: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """The arrays the server starts a phase from: a fresh detector, or fresh adapters on ``base``."""
    detector = new_detector(spec, seed)
    if phase == "full":
        return lora.full_arrays(detector)
    if base is None:
        raise ConfigError("the lora phase needs the pre-trained base weights")
    lora.load_full_arrays(detector, base)
    return lora.adapter_arrays(lora.with_adapters(detector, spec.lora))


def _tensor(v: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.asarray(v))
