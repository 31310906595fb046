"""GraphSAGE anomaly detector: reconstructs each node's telemetry from its neighbourhood alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor, nn
from torch_geometric.nn import SAGEConv

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.telemetry.windows import WindowSpec

#: The packaged spec (``models/graphsage.yaml`` in the repository ships the same values).
DEFAULT_SPEC_PATH = Path(__file__).with_name("graphsage.yaml")


class LoRASpec(BaseModel):
    """Low-rank adapters (peft) on the detector's linear layers."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(default=2, ge=1, le=64, description="adapter rank r")
    alpha: float = Field(default=4.0, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["lin_in", "lin_l", "lin_r", "dec_hidden", "dec_out"],
        description="names of the nn.Linear modules that get adapters",
    )


class TrainSpec(BaseModel):
    """Optimiser settings for one local training call (centralised or one federated round)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(default=3e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(default=1e-5, ge=0, description="Adam weight decay")
    mask_ratio: float = Field(default=0.25, gt=0, lt=1, description="share of nodes masked per step")
    steps_per_epoch: int = Field(default=60, ge=1, description="snapshots (ticks) per epoch")
    epochs: int = Field(default=8, ge=1, description="epochs of centralised training")
    seed: int = Field(default=0, ge=0, description="seed of masks and snapshot order")
    calibration_quantile: float = Field(
        default=0.998,
        gt=0.5,
        lt=1.0,
        description=(
            "quantile of each output's squared reconstruction error on training data that the "
            "anomaly score divides by: outputs a fault anywhere spreads to many nodes (path latency, "
            "loss) have heavy tails on an unlabelled mesh and weigh less than outputs only the "
            "faulty node moves (memory, CPU)"
        ),
    )
    calibration_node_ticks: int = Field(
        default=128_000,
        ge=1000,
        description=(
            "node-ticks of training errors the calibration samples, spread over the series, so a "
            "500-node region estimates the quantile as precisely as a pooled 4,000-node mesh"
        ),
    )


class DetectorSpec(BaseModel):
    """Everything that defines a detector's architecture and inputs (``models/graphsage.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="graphsage-anomaly", description="registry model name")
    window: WindowSpec = Field(default_factory=WindowSpec, description="how telemetry becomes inputs")
    hidden_channels: int = Field(default=64, ge=4, le=1024, description="width of every hidden layer")
    num_layers: int = Field(default=2, ge=1, le=6, description="GraphSAGE layers (receptive field in hops)")
    aggr: Literal["mean", "max", "sum"] = Field(default="mean", description="neighbour aggregation")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout between layers while training")
    graph: bool = Field(default=True, description="False: the same network with graph convolutions replaced")
    train: TrainSpec = Field(default_factory=TrainSpec, description="local training settings")
    lora: LoRASpec = Field(default_factory=LoRASpec, description="adapter settings")

    @model_validator(mode="after")
    def _shapes(self) -> DetectorSpec:
        if self.hidden_channels < self.window.target_dim // 4:
            raise ValueError(
                f"hidden_channels={self.hidden_channels} cannot carry {self.window.target_dim} reconstructed "
                f"values (need at least {self.window.target_dim // 4})"
            )
        return self

    @classmethod
    def load(cls, path: str | Path | None = None) -> DetectorSpec:
        """Read a spec YAML; unknown fields or impossible shapes raise ConfigError."""
        path = Path(path) if path is not None else DEFAULT_SPEC_PATH
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read detector spec {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"detector spec {path} is not valid YAML: {exc}") from exc
        return cls.parse(data or {}, source=str(path))

    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "detector spec") -> DetectorSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise ConfigError(f"{source}: {where}: {err['msg']}") from exc

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _sage(in_channels: int, out_channels: int, aggr: str) -> SAGEConv:
    """A SAGEConv whose two projections are plain ``nn.Linear``, so peft can put adapters on them."""
    conv = SAGEConv(in_channels, out_channels, aggr=aggr)
    conv.lin_l = nn.Linear(in_channels, out_channels, bias=True)
    conv.lin_r = nn.Linear(in_channels, out_channels, bias=False)
    return conv


class _Dense(nn.Module):
    """The graph-free stand-in for a SAGE layer: the same two projections, no neighbours."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.lin_r = nn.Linear(in_channels, out_channels, bias=True)

    def reset_parameters(self) -> None:
        self.lin_r.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.lin_r(x)  # type: ignore[no-any-return]


class GraphSAGEDetector(nn.Module):
    """Masked-node autoencoder over the mesh graph.

    A node's own input is hidden (zeroed, with a mask flag) and its current levels and
    z-scores are reconstructed from its neighbours' inputs: on a healthy mesh a node
    looks like what its neighbourhood predicts, a faulty node does not, and nodes that
    merely suffer from a faulty neighbour are explained by it. The reconstruction error,
    scaled per output by its typical size on training data, is the anomaly score. With
    ``spec.graph = False`` the same layers see only the node itself (the MLP baseline),
    trained as a denoising autoencoder instead.

    Args:
        spec: the detector spec.

    Shapes:
        x: ``[nodes, window.input_dim]``; edge_index: ``[2, edges]`` (both directions);
        output: ``[nodes, window.target_dim]``.
    """

    error_scale: Tensor

    def __init__(self, spec: DetectorSpec) -> None:
        super().__init__()
        self.spec = spec
        h = spec.hidden_channels
        self.lin_in = nn.Linear(spec.window.input_dim + 1, h)  # + mask flag
        self.convs = nn.ModuleList(
            [_sage(h, h, spec.aggr) if spec.graph else _Dense(h, h) for _ in range(spec.num_layers)]
        )
        self.dec_hidden = nn.Linear(h, h)
        self.dec_out = nn.Linear(h, spec.window.target_dim)
        self.dropout = nn.Dropout(spec.dropout)
        # Tail of the reconstruction error per output on training data (set by calibrate()).
        self.register_buffer("error_scale", torch.ones(spec.window.target_dim))

    def reset_parameters(self) -> None:
        self.lin_in.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()  # type: ignore[operator]
        self.dec_hidden.reset_parameters()
        self.dec_out.reset_parameters()
        self.error_scale.fill_(1.0)

    def forward(self, x: Tensor, edge_index: Tensor, mask: Tensor | None = None) -> Tensor:
        """Reconstruct every node's targets; ``mask`` (bool ``[nodes]``) hides those nodes' inputs."""
        if mask is None:
            mask = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        x = torch.where(mask[:, None], torch.zeros_like(x), x)
        h = torch.relu(self.lin_in(torch.cat([x, mask[:, None].to(x.dtype)], dim=1)))
        for conv in self.convs:
            h = self.dropout(torch.relu(conv(h, edge_index)) + h)
        return self.dec_out(torch.relu(self.dec_hidden(h)))  # type: ignore[no-any-return]

    def errors(self, x: Tensor, targets: Tensor, edge_index: Tensor, groups: Tensor) -> Tensor:
        """Squared reconstruction errors ``[nodes, target_dim]``, each node masked in its own pass.

        ``groups`` assigns every node to a pass (a colouring with no two neighbours in one
        group, see :func:`mask_groups`), so a node is reconstructed from unmasked neighbours.
        """
        if not self.spec.graph:
            return (self.forward(x, edge_index) - targets) ** 2
        if self.spec.num_layers == 2 and self.spec.aggr == "mean":
            return (self.leave_one_out(x, edge_index) - targets) ** 2
        out = torch.empty_like(targets)
        for g in range(int(groups.max()) + 1 if groups.numel() else 0):
            mask = groups == g
            out[mask] = self.forward(x, edge_index, mask)[mask]
        return (out - targets) ** 2

    def leave_one_out(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Each node's reconstruction with only that node masked, for all nodes in about two passes.

        Equals ``forward(x, edge_index, mask=one_hot(i))[i]`` for every ``i`` (tested), but
        instead of one pass per node it uses that mean aggregation and the projections are
        affine: masking ``i`` changes a neighbour ``j``'s first-layer aggregate by
        ``(m0 - h0_i) / deg_j``, which is computed once per edge. Needs two mean-aggregating
        layers and a symmetric ``edge_index`` (every mesh link in both directions).

        Shapes:
            x: ``[nodes, input_dim]``; edge_index: ``[2, edges]``; returns ``[nodes, target_dim]``.
        """
        conv1, conv2 = self.convs
        l1, r1_proj = cast(nn.Module, conv1.lin_l), cast(nn.Module, conv1.lin_r)
        l2, r2_proj = cast(nn.Module, conv2.lin_l), cast(nn.Module, conv2.lin_r)
        n = x.shape[0]
        src, dst = edge_index
        ones = torch.ones(n, 1, dtype=x.dtype, device=x.device)
        h0 = torch.relu(self.lin_in(torch.cat([x, torch.zeros_like(ones)], dim=1)))
        m0 = torch.relu(self.lin_in(torch.cat([torch.zeros_like(x[:1]), ones[:1]], dim=1)))  # [1, h]
        deg = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(
            0, dst, torch.ones_like(dst, dtype=x.dtype)
        )
        inv_deg = 1.0 / deg.clamp_min(1.0)

        def mean_in(values: Tensor) -> Tensor:
            total = torch.zeros(n, values.shape[1], dtype=x.dtype, device=x.device).index_add_(0, dst, values)
            return total.mul_(inv_deg[:, None])

        # Layer 1 with nothing masked, and the masked node's own first-layer state.
        a1 = l1(mean_in(h0.index_select(0, src)))
        r1 = r1_proj(h0)
        h1_self = torch.relu(a1 + r1_proj(m0)) + m0
        # Masking i shifts a neighbour j's aggregate by (m0 - h0_i) / deg_j; lin_l minus its
        # value at zero is its linear part (with or without adapters).
        shift = l1(m0 - h0) - l1(torch.zeros_like(m0))  # [n, h], by masked node
        # Edge src -> dst: the neighbour src's state when dst is the masked node.
        h1_nb = (a1 + r1).index_select(0, src)
        h1_nb.addcmul_(shift.index_select(0, dst), inv_deg.index_select(0, src)[:, None]).relu_()
        h1_nb += h0.index_select(0, src)
        h2 = torch.relu(l2(mean_in(h1_nb)) + r2_proj(h1_self)) + h1_self
        return self.dec_out(torch.relu(self.dec_hidden(h2)))  # type: ignore[no-any-return]

    @torch.no_grad()
    def score(self, x: Tensor, targets: Tensor, edge_index: Tensor, groups: Tensor) -> Tensor:
        """Anomaly score per node ``[nodes]``; see :func:`anomaly_score`."""
        contrast = edge_index if self.spec.graph else edge_index[:, :0]  # the MLP baseline sees no graph
        return anomaly_score(self.errors(x, targets, edge_index, groups), self.error_scale, contrast)


def anomaly_score(errors: Tensor, error_scale: Tensor, edge_index: Tensor) -> Tensor:
    """A node's scaled reconstruction error minus the mean of its neighbours'.

    Errors are in units of each output's calibrated error tail (see
    ``TrainSpec.calibration_quantile``). A fault makes the nodes around it hard to
    reconstruct too; subtracting the neighbourhood's level ranks the node at the fault
    above the neighbours that merely suffer from it.

    Shapes:
        errors: ``[nodes, outputs]``; error_scale: ``[outputs]``; returns ``[nodes]``.
    """
    own = (errors / error_scale**2).mean(dim=1)
    if edge_index.numel() == 0:
        return own
    src, dst = edge_index
    total = torch.zeros_like(own).index_add_(0, dst, own[src])
    count = torch.zeros_like(own).index_add_(0, dst, torch.ones_like(own[src]))
    return own - total / count.clamp_min(1.0)


def mask_groups(edge_index: npt.NDArray[np.int64], num_nodes: int) -> npt.NDArray[np.int64]:
    """Greedy graph colouring: neighbours never share a group (a mesh needs about degree/2 + 2 groups).

    Shapes:
        edge_index: ``[2, edges]``; returns ``[nodes]``.
    """
    order = np.argsort(np.bincount(edge_index[0], minlength=num_nodes))[::-1]
    src, dst = edge_index
    perm = np.argsort(src, kind="stable")
    src, dst = src[perm], dst[perm]
    start = np.searchsorted(src, np.arange(num_nodes + 1))
    colour = np.full(num_nodes, -1, dtype=np.int64)
    for node in order:
        taken = set(colour[dst[start[node] : start[node + 1]]].tolist())
        c = 0
        while c in taken:
            c += 1
        colour[node] = c
    return colour
