"""Bootstrap detector: a small centrally trained version, so Serve has a model before federated training."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from x0tta6bl4.models.graphsage import DetectorSpec, GraphSAGEDetector
from x0tta6bl4.models.registry import LoadedModel, ModelRegistry, VersionMismatchError
from x0tta6bl4.models.versions import ModelVersion
from x0tta6bl4.security.provenance import ProvenancePolicy

log = logging.getLogger(__name__)

#: Quantile of healthy node-ticks' scores recorded as the model's suggested alarm threshold.
THRESHOLD_QUANTILE = 0.999


class BootstrapConfig(BaseModel):
    """Size of the bootstrap training run (seconds on a laptop; quality well below a federated run)."""

    model_config = ConfigDict(extra="forbid")

    nodes: int = Field(default=1000, gt=1, description="simulated mesh nodes")
    ticks: int = Field(default=160, gt=0, description="simulated ticks, warm-up included")
    epochs: int = Field(default=6, gt=0, description="training epochs")
    seed: int = Field(default=7, ge=0, description="seed of the scenario and the training")


#: A detector trained in a few seconds, for tests and quick benches that measure serving, not quality.
SMALL_BOOTSTRAP = BootstrapConfig(nodes=200, ticks=60, epochs=1)


def score_threshold(scores: np.ndarray, labels: np.ndarray | None = None) -> float:
    """A suggested alarm threshold: a high quantile of the scores (of healthy node-ticks if labelled)."""
    values = scores[labels == 0] if labels is not None else scores
    return float(np.quantile(values, THRESHOLD_QUANTILE))


def bootstrap_detector(
    registry: ModelRegistry,
    config: BootstrapConfig | None = None,
    *,
    promote: bool = True,
    provenance: ProvenancePolicy | None = None,
) -> ModelVersion:
    """Train a detector centrally on one simulated scenario, write it to ``registry`` (signed) and promote it.

    Labels are used only to pick the healthy scores the suggested threshold comes from
    (and for the recorded AUPRC); training itself sees none. The version is signed by the
    trainer identity of ``provenance`` (default: this machine's embedded CA).

    Returns:
        The written version.
    """
    import torch

    from x0tta6bl4.models.data import ScenarioSpec, simulate
    from x0tta6bl4.models.evaluate import detection_metrics
    from x0tta6bl4.models.lora import full_arrays
    from x0tta6bl4.models.training import score_series, train_detector

    cfg = config or BootstrapConfig()
    spec = DetectorSpec.load()
    registry.check_writable()
    started = time.perf_counter()
    series, _ = simulate(
        ScenarioSpec(nodes=cfg.nodes, regions=1, ticks=cfg.ticks, seed=cfg.seed), spec.window
    )
    train = spec.train.model_copy(update={"epochs": cfg.epochs, "seed": cfg.seed})
    # One detector per seed: its initial weights come from the seed, not from whatever the process
    # drew before (a model loaded first), and it trains on one thread (sums split over two threads
    # round differently). Otherwise every clone bootstrapped a different detector, and the benches
    # measured different figures on the same code.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            detector = GraphSAGEDetector(spec)
            stats = train_detector(detector, [series], train)
        scores = score_series(detector, series)
    finally:
        torch.set_num_threads(threads)
    labels = series.labels[list(series.valid_ticks)] if series.labels is not None else None
    metrics: dict[str, object] = {
        "trained_by": "bootstrap",
        "train_loss": stats["loss"],
        "train_s": time.perf_counter() - started,
        "score_threshold": score_threshold(scores, labels),
        "score_threshold_quantile": THRESHOLD_QUANTILE,
        "scenario": cfg.model_dump(),
    }
    if labels is not None and (labels > 0).any():
        m = detection_metrics(scores, labels)
        metrics.update({"train_auprc": m["auprc"], "train_best_f1": m["best_f1"]})
    card = (
        f"# {spec.name} (bootstrap)\n\nTrained centrally in {metrics['train_s']:.0f} s on one simulated "
        f"scenario ({cfg.nodes} nodes, {cfg.ticks} ticks, seed {cfg.seed}) so that the Serve app has a model "
        "before the first federated run (`x0tta6bl4 train`). Self-supervised; simulator labels only chose "
        f"the suggested threshold ({THRESHOLD_QUANTILE:.1%} quantile of healthy scores).\n"
    )
    return publish_version(
        registry, spec.name, full_arrays(detector), spec.to_dict(), metrics, card, promote, provenance
    )


def publish_version(
    registry: ModelRegistry,
    model: str,
    tensors: Mapping[str, Any],
    spec: Mapping[str, Any],
    metrics: Mapping[str, Any],
    card: str,
    promote: bool,
    provenance: ProvenancePolicy | None = None,
) -> ModelVersion:
    """Write a version signed by the trainer's identity, optionally promote it, and record both in the ledger.

    Args:
        registry, model, tensors, spec, metrics, card: as :meth:`ModelRegistry.write_version`.
        promote: make it the version Serve loads.
        provenance: where the trainer's signing identity and the ledger are (default: the
            embedded CA and ledger of this machine).
    """
    from x0tta6bl4.models.signing import sign_version
    from x0tta6bl4.security.identity import WorkloadKind

    policy = provenance or ProvenancePolicy()
    audit = policy.recorder(WorkloadKind.TRAINER)
    version = registry.write_version(model, tensors, spec, metrics, card)
    sign_version(registry, version.model, version.version, audit.signer)
    summary = {
        k: metrics[k] for k in ("trained_by", "score_threshold", "auprc", "train_auprc") if k in metrics
    }
    audit.record("model.train", f"{model}/{version.version}", {"registry": registry.uri, **summary})
    if promote:
        registry.promote(version.model, version.version)
        audit.record("model.promote", f"{model}/{version.version}", {"registry": registry.uri})
    return version


def ensure_promoted(
    registry: ModelRegistry, config: BootstrapConfig | None = None, provenance: ProvenancePolicy | None = None
) -> ModelVersion:
    """The promoted detector version; trains and promotes a (signed) bootstrap one when there is none."""
    name = DetectorSpec.load().name
    promoted = registry.promoted(name)
    if promoted is not None:
        return promoted
    log.warning("no promoted %s in %s: training a bootstrap version (about 10 s)", name, registry.uri)
    return bootstrap_detector(registry, config, provenance=provenance)


def load_detector(
    registry: ModelRegistry, version: str | None = None, provenance: ProvenancePolicy | None = None
) -> tuple[GraphSAGEDetector, LoadedModel]:
    """Load a detector version (None = the promoted one), verified, in eval mode.

    With ``provenance`` its signature must satisfy the policy first (Serve passes one).

    Raises:
        UntrustedVersionError: unsigned or signed by an identity the policy does not allow.
        RegistryError: nothing promoted, unknown or corrupt version; VersionMismatchError when
            its spec or weights do not make a detector of this code's kind.
    """
    from x0tta6bl4.errors import ConfigError
    from x0tta6bl4.models.lora import load_full_arrays

    name = DetectorSpec.load().name
    if provenance is not None:
        from x0tta6bl4.models.signing import check_signature

        resolved = version or registry.promoted_id(name)
        if resolved is not None:
            check_signature(registry, name, resolved, provenance)
    loaded = registry.load(name, version)
    try:
        spec = DetectorSpec.parse(loaded.spec, source=f"{loaded.version} spec.yaml")
        detector = GraphSAGEDetector(spec)
        load_full_arrays(detector, {k: v.numpy() for k, v in loaded.tensors.items()})
    except ConfigError as exc:
        raise VersionMismatchError(f"{loaded.version} is not a usable detector: {exc}") from exc
    detector.eval()
    return detector, loaded
