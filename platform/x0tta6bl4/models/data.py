"""Graph time series for the detector: recorded mesh telemetry, its graph, and (simulation only) labels."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mesh.faults import FAULT_CODES, FAULT_TYPES, Fault, random_schedule
from x0tta6bl4.mesh.topology import Topology, TopologySpec
from x0tta6bl4.models.graphsage import mask_groups
from x0tta6bl4.telemetry.frame import TelemetryFrame
from x0tta6bl4.telemetry.windows import SeriesInputs, WindowSpec, transform

I64 = npt.NDArray[np.int64]


class ScenarioSpec(BaseModel):
    """A seeded simulated mesh run that produces a training or evaluation series."""

    model_config = ConfigDict(extra="forbid")

    nodes: int = Field(default=2000, gt=0, description="mesh nodes")
    regions: int = Field(default=4, gt=0, description="mesh regions (federated clients)")
    ticks: int = Field(default=240, gt=0, description="ticks recorded (including the baseline warm-up)")
    seed: int = Field(default=1, ge=0, description="seed of topology, traffic and faults")
    faults_per_1000_ticks: float = Field(default=150.0, ge=0, description="random faults per 1,000 ticks")
    fault_types: tuple[str, ...] = Field(default=FAULT_TYPES, description="fault types drawn")


@dataclasses.dataclass
class GraphSeries:
    """Telemetry of a fixed node set over consecutive ticks, with its graph.

    Args:
        inputs: windowed detector inputs, computed per tick on demand.
        edge_index: directed edges (both directions of every link), local node indices.
        node_ids: global node id of every local index.
        labels: ground-truth fault codes (simulation only; evaluation only).
        region: region of every node.

    Shapes:
        edge_index: ``[2, edges]``; node_ids, region: ``[nodes]``; labels: ``[ticks, nodes]``.
    """

    inputs: SeriesInputs
    edge_index: I64
    node_ids: I64
    labels: npt.NDArray[np.int8] | None
    region: npt.NDArray[np.int32]

    def __post_init__(self) -> None:
        self.groups = mask_groups(self.edge_index, self.num_nodes)

    @property
    def num_nodes(self) -> int:
        return int(self.node_ids.shape[0])

    @property
    def num_ticks(self) -> int:
        return self.inputs.num_ticks

    @property
    def valid_ticks(self) -> range:
        """Tick indices whose inputs are defined (after the baseline warm-up)."""
        return range(self.inputs.first_valid, self.num_ticks)

    def tensors(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.inputs.at(t)
        return torch.from_numpy(x), torch.from_numpy(y)

    def edge_tensor(self) -> torch.Tensor:
        return torch.from_numpy(self.edge_index)

    def group_tensor(self) -> torch.Tensor:
        return torch.from_numpy(self.groups)

    def subgraph(self, nodes: I64) -> GraphSeries:
        """The series restricted to ``nodes`` (local indices) and the links among them."""
        keep = np.zeros(self.num_nodes, dtype=bool)
        keep[nodes] = True
        local = np.full(self.num_nodes, -1, dtype=np.int64)
        local[nodes] = np.arange(len(nodes))
        e = self.edge_index[:, keep[self.edge_index[0]] & keep[self.edge_index[1]]]
        return GraphSeries(
            inputs=SeriesInputs(self.inputs.spec, self.inputs.levels[:, nodes]),
            edge_index=local[e],
            node_ids=self.node_ids[nodes],
            labels=None if self.labels is None else self.labels[:, nodes],
            region=self.region[nodes],
        )

    def region_series(self, region: int) -> GraphSeries:
        """One region's nodes and intra-region links (what that region's client trains on)."""
        nodes = np.flatnonzero(self.region == region)
        if len(nodes) == 0:
            raise ConfigError(f"region {region} has no nodes in this series")
        return self.subgraph(nodes)


def edge_index_of(topology: Topology) -> I64:
    """Both directions of every link, as a ``[2, 2 * links]`` array."""
    e = topology.edges.astype(np.int64)
    return np.ascontiguousarray(np.concatenate([e, e[:, ::-1]]).T)


def series_from_frames(
    spec: WindowSpec, topology: Topology, frames: Sequence[TelemetryFrame], nodes: I64 | None = None
) -> GraphSeries:
    """Build a series from consecutive frames covering ``nodes`` (default: every node of the topology).

    Frames of one tick (e.g. one per region) are joined by node id; every frame must
    carry the spec's feature names.
    """
    if not frames:
        raise ConfigError("no frames to build a series from")
    ids = np.arange(topology.num_nodes, dtype=np.int64) if nodes is None else np.asarray(nodes, np.int64)
    pos = np.full(topology.num_nodes, -1, dtype=np.int64)
    pos[ids] = np.arange(len(ids))
    ticks = sorted({f.tick for f in frames})
    tick_pos = {t: i for i, t in enumerate(ticks)}
    levels = np.full((len(ticks), len(ids), spec.num_features), np.nan, dtype=np.float32)
    labels = np.zeros((len(ticks), len(ids)), dtype=np.int8)
    for f in frames:
        spec.check_features(f.feature_names)
        rows = pos[f.node_ids]
        ok = rows >= 0
        levels[tick_pos[f.tick], rows[ok]] = transform(spec, f.features[ok])
        if f.labels is not None:
            labels[tick_pos[f.tick], rows[ok]] = f.labels[ok]
    edges = edge_index_of(topology)
    keep = pos >= 0
    edges = edges[:, keep[edges[0]] & keep[edges[1]]]
    return GraphSeries(
        inputs=SeriesInputs(spec, levels),
        edge_index=pos[edges],
        node_ids=ids,
        labels=labels,
        region=topology.region[ids].astype(np.int32),
    )


def _schedule(scenario: ScenarioSpec, spec: WindowSpec) -> tuple[TopologySpec, Topology, tuple[Fault, ...]]:
    if scenario.ticks <= spec.warmup_ticks:
        raise ConfigError(
            f"a scenario of {scenario.ticks} ticks has no ticks after the {spec.warmup_ticks}-tick warm-up"
        )
    topo_spec = TopologySpec(scenario.nodes, scenario.regions, seed=scenario.seed)
    topology = topo_spec.build()
    faults = (
        tuple(
            random_schedule(
                topology,
                scenario.ticks,
                scenario.seed,
                scenario.faults_per_1000_ticks,
                tuple(scenario.fault_types),
                warmup_ticks=spec.warmup_ticks,
            )
        )
        if scenario.faults_per_1000_ticks > 0
        else ()
    )
    return topo_spec, topology, faults


def _frames(
    scenario: ScenarioSpec, topo_spec: TopologySpec, topology: Topology, faults: tuple[Fault, ...]
) -> list[TelemetryFrame]:
    from x0tta6bl4.mesh.pipeline import LocalMesh
    from x0tta6bl4.mesh.shard import MeshSpec

    mesh = LocalMesh(topology, MeshSpec(topo_spec, seed=scenario.seed, faults=faults))
    frames = [mesh.frame(mesh.step()) for _ in range(scenario.ticks)]
    mesh.close()
    return frames


def simulate(scenario: ScenarioSpec, spec: WindowSpec) -> tuple[GraphSeries, Topology]:
    """Run a seeded scenario in-process (no Ray) and record it as a labelled series."""
    topo_spec, topology, faults = _schedule(scenario, spec)
    return series_from_frames(spec, topology, _frames(scenario, topo_spec, topology, faults)), topology


def visible_faults(scenario: ScenarioSpec, spec: WindowSpec) -> npt.NDArray[np.bool_]:
    """Which faulty node-ticks of a scenario change any telemetry at all: the evaluation's ceiling.

    Each fault is taken out of the schedule in turn and the scenario re-run; the
    simulator's noise does not depend on the faults, so a tick whose frames are
    identical with and without the fault is one where the fault was invisible (a
    degraded link that no route uses, say). A detector of telemetry flags those
    node-ticks only by chance; an oracle that flags exactly the visible ones is the
    yardstick for what the telemetry supports. Costs one scenario run per fault.

    Shapes:
        returns ``[ticks, nodes]`` by global node id (all ticks, like ``simulate``'s labels).
    """
    topo_spec, topology, faults = _schedule(scenario, spec)
    full = _frames(scenario, topo_spec, topology, faults)
    features = np.stack([f.features for f in full])
    labels = series_from_frames(spec, topology, full).labels
    assert labels is not None
    visible = np.zeros(labels.shape, dtype=bool)
    for fault in faults:
        without = _frames(scenario, topo_spec, topology, tuple(g for g in faults if g is not fault))
        changed = np.stack([f.features for f in without]) != features
        seen = changed.reshape(len(full), -1).any(axis=1)  # [ticks]: anything differs anywhere
        nodes = [fault.node] if fault.peer is None else [fault.node, fault.peer]
        mine = labels[:, nodes] == FAULT_CODES[fault.kind]
        visible[:, nodes] |= mine & seen[:, None]
    return visible
