"""Self-supervised training of the detector (no labels): masked-node reconstruction, optional FedProx term."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.models.data import GraphSeries
from x0tta6bl4.models.graphsage import GraphSAGEDetector, TrainSpec, anomaly_score

#: Called after every epoch with (epoch, mean loss).
ProgressFn = Callable[[int, float], None]


def _check_series(series: Sequence[GraphSeries]) -> None:
    if not series:
        raise ConfigError("no training data: every series is empty")
    for s in series:
        if len(s.valid_ticks) == 0:
            raise ConfigError(
                f"a series of {s.num_ticks} ticks has no tick after the "
                f"{s.inputs.spec.warmup_ticks}-tick warm-up; record more ticks"
            )
        if s.num_nodes < 2:
            raise ConfigError("a series needs at least two nodes to train a graph detector")


def _detector(model: nn.Module) -> GraphSAGEDetector:
    """The detector inside a peft wrapper, or the model itself."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    assert isinstance(inner, GraphSAGEDetector)
    return inner


def train_detector(
    model: nn.Module,
    series: Sequence[GraphSeries],
    train: TrainSpec,
    *,
    epochs: int | None = None,
    proximal_mu: float = 0.0,
    reference: Mapping[str, Tensor] | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, float]:
    """Train in place on unlabelled series; returns loss, steps and examples seen.

    Args:
        model: a :class:`GraphSAGEDetector`, or one wrapped by peft (then only the
            adapters are trainable).
        series: graphs to sample snapshots from (labels are never read).
        train: optimiser settings.
        epochs: overrides ``train.epochs`` (federated rounds train one or two epochs).
        proximal_mu: FedProx coefficient; adds ``mu/2 * ||w - reference||^2`` (default 0: FedAvg).
        reference: the global weights the proximal term pulls towards (by parameter name).
        progress: called after every epoch with the epoch number and its mean loss.
    """
    _check_series(series)
    detector = _detector(model)
    graph = detector.spec.graph
    rng = np.random.default_rng(train.seed)
    torch.manual_seed(train.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    named = dict(model.named_parameters())
    prox = (
        [(named[k], v.detach()) for k, v in reference.items() if k in named and named[k].requires_grad]
        if proximal_mu > 0 and reference is not None
        else []
    )
    edges = [s.edge_tensor() for s in series]
    model.train()
    loss_sum, steps, examples, started = 0.0, 0, 0, time.perf_counter()
    for epoch in range(epochs if epochs is not None else train.epochs):
        epoch_loss = 0.0
        for _ in range(train.steps_per_epoch):
            i = int(rng.integers(len(series)))
            s = series[i]
            t = int(rng.choice(s.valid_ticks))
            x, y = s.tensors(t)
            if graph:
                mask = torch.from_numpy(rng.random(s.num_nodes) < train.mask_ratio)
                out = model(x, edges[i], mask)
                loss = ((out[mask] - y[mask]) ** 2).mean()
            else:
                # No neighbours to reconstruct from: denoise the node's own input instead.
                noisy = x * torch.from_numpy(rng.random(x.shape) >= train.mask_ratio).to(x.dtype)
                loss = ((model(noisy, edges[i]) - y) ** 2).mean()
            total = loss
            if prox:
                total = loss + proximal_mu / 2 * sum(((p - r) ** 2).sum() for p, r in prox)
            optimiser.zero_grad()
            total.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            epoch_loss += float(loss.detach())
            steps += 1
            examples += s.num_nodes
        loss_sum += epoch_loss
        if progress is not None:
            progress(epoch, epoch_loss / train.steps_per_epoch)
    model.eval()
    calibrate(detector, series, seed=train.seed)
    return {
        "loss": loss_sum / max(steps, 1),
        "steps": float(steps),
        "examples": float(examples),
        "train_s": time.perf_counter() - started,
    }


@torch.no_grad()
def calibrate(
    detector: GraphSAGEDetector,
    series: Sequence[GraphSeries],
    node_ticks: int | None = None,
    quantile: float | None = None,
    seed: int = 0,
) -> None:
    """Set each output's error scale: a high quantile of its squared error over sampled snapshots.

    Unlabelled training data holds faults, and a fault spreads to the outputs of every
    node whose path crosses it (latency, loss) but moves node-local outputs (memory,
    CPU) only at the faulty node. Dividing by the error tail rather than its middle
    makes an output count by how rare its error is on this mesh: the frequent
    collateral errors weigh less, a node's own deviation more.

    Args:
        detector: the trained detector; its ``error_scale`` buffer is overwritten.
        series: training series (labels are never read).
        node_ticks: node-ticks sampled in all, the same number of snapshots from every
            series (default ``spec.train.calibration_node_ticks``).
        quantile: quantile of the squared errors (default ``spec.train.calibration_quantile``).
        seed: seed of the snapshot sample.
    """
    train = detector.spec.train
    node_ticks = train.calibration_node_ticks if node_ticks is None else node_ticks
    quantile = train.calibration_quantile if quantile is None else quantile
    per_series = max(1, -(-node_ticks // sum(s.num_nodes for s in series)))
    rng = np.random.default_rng(seed + 1)
    errs = []
    for s in series:
        for t in rng.choice(s.valid_ticks, size=min(per_series, len(s.valid_ticks)), replace=False):
            x, y = s.tensors(int(t))
            errs.append(detector.errors(x, y, s.edge_tensor(), s.group_tensor()).numpy())
    tail = np.quantile(np.concatenate(errs), quantile, axis=0)
    detector.error_scale.copy_(torch.from_numpy(np.sqrt(tail)).to(detector.error_scale.dtype).clamp_min(1e-3))


@torch.no_grad()
def score_series(model: nn.Module, series: GraphSeries, ticks: Sequence[int] | None = None) -> np.ndarray:
    """Anomaly scores ``[ticks, nodes]`` for the given tick indices (default: every valid tick)."""
    detector = _detector(model)
    model.eval()
    edges, groups = series.edge_tensor(), series.group_tensor()
    out = []
    for t in ticks if ticks is not None else series.valid_ticks:
        x, y = series.tensors(t)
        err = _errors(model, detector, x, y, edges, groups)
        contrast = edges if detector.spec.graph else edges[:, :0]  # the MLP baseline sees no graph
        out.append(anomaly_score(err, detector.error_scale, contrast).numpy())
    return np.stack(out)


def _errors(
    model: nn.Module, detector: GraphSAGEDetector, x: Tensor, y: Tensor, edges: Tensor, groups: Tensor
) -> Tensor:
    # peft replaces the adapted layers inside the detector in place, so the detector's own
    # passes apply the adapters too.
    return detector.errors(x, y, edges, groups)
