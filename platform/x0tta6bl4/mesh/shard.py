"""MeshShard: one region's simulator as a restartable Ray actor with checkpoints and an action journal."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from x0tta6bl4.durable import append_synced, write_atomic
from x0tta6bl4.mesh.control import ControlParams, MeshControl
from x0tta6bl4.mesh.faults import Action, Fault
from x0tta6bl4.mesh.region import Message, RegionSim, TrafficParams
from x0tta6bl4.mesh.topology import Topology, TopologySpec
from x0tta6bl4.telemetry.frame import FEATURES, TelemetryFrame


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """Everything needed to (re)build every region's simulator identically.

    Args:
        topology: how to generate the topology (every shard rebuilds the same one, so a
            restarted shard depends on nothing but this spec and its checkpoint).
        seed: simulation seed (traffic noise, node parameters).
        faults: the fault schedule.
        control: control-plane timing.
        traffic: traffic and capacity model.
        checkpoint_dir: where shards write checkpoints and journals (None: no durability).
        checkpoint_every_ticks: ticks between checkpoints (default 10).
        recent_frames: frames each shard keeps for consumers that pull them (default 64).
    """

    topology: TopologySpec
    seed: int
    faults: tuple[Fault, ...] = ()
    control: ControlParams = dataclasses.field(default_factory=ControlParams)
    traffic: TrafficParams = dataclasses.field(default_factory=TrafficParams)
    checkpoint_dir: str | None = None
    checkpoint_every_ticks: int = 10
    recent_frames: int = 64


#: What one shard step returns: the region's frame (None when the driver did not ask for it:
#: it stays in the shard's recent frames), its boundary message, its summary vector.
StepOutput = tuple[TelemetryFrame | None, Message, npt.NDArray[np.float64]]


#: Ticks between metric exports of a shard (the step latency histogram samples one step of each).
METRICS_EVERY_TICKS = 10


def shard_name(region: int) -> str:
    """Ray actor name of a region's shard."""
    return f"mesh-shard-{region}"


class ShardCore:
    """A region's simulator plus its own copy of the mesh control plane, without Ray.

    The MeshShard actor wraps it; the in-process kernel runs the same objects in a
    loop, so both produce bit-identical frames.
    """

    def __init__(self, topology: Topology, region: int, spec: MeshSpec) -> None:
        self.region = region
        self.spec = spec
        self.topology = topology
        self.control = MeshControl(topology, list(spec.faults), spec.control)
        self.sim = RegionSim(topology, region, spec.seed, spec.traffic)
        self.restored_tick: int | None = None
        self.recent: collections.deque[TelemetryFrame] = collections.deque(maxlen=spec.recent_frames)
        self._writer: threading.Thread | None = None
        self._ckpt_dir = Path(spec.checkpoint_dir) if spec.checkpoint_dir else None
        if self._ckpt_dir is not None:
            self._ckpt_dir.mkdir(parents=True, exist_ok=True)
            self._restore()

    @property
    def tick(self) -> int:
        return self.sim.tick

    @property
    def checkpoint_path(self) -> Path | None:
        return self._ckpt_dir / f"region-{self.region}.ckpt" if self._ckpt_dir else None

    @property
    def journal_path(self) -> Path | None:
        return self._ckpt_dir / f"region-{self.region}.journal.jsonl" if self._ckpt_dir else None

    def step(
        self, tick: int, actions: tuple[Action, ...], inbound: list[Message]
    ) -> tuple[TelemetryFrame, Message, npt.NDArray[np.float64]]:
        """Advance to ``tick`` with the tick's actions and the other regions' last messages."""
        if tick != self.sim.tick + 1:
            raise RuntimeError(f"region {self.region} is at tick {self.sim.tick}; asked for tick {tick}")
        if actions:
            self._journal(tick, actions)
        self.control.advance(tick, actions)
        features, message, summary = self.sim.step(self.control, inbound)
        a, b = self.sim.first, self.sim.last
        frame = TelemetryFrame(
            features=features.astype(np.float32),
            node_ids=self.sim.node_ids,
            feature_names=FEATURES,
            tick=tick,
            source="sim",
            labels=self.control.labels[a:b].copy(),
            region=self.region,
        )
        if self._ckpt_dir is not None and (tick + 1) % self.spec.checkpoint_every_ticks == 0:
            self.checkpoint()
        self.recent.append(frame)
        return frame, message, summary

    def frame(self, tick: int) -> TelemetryFrame:
        """A recent frame by tick (KeyError when it is older than ``recent_frames`` ticks)."""
        for frame in reversed(self.recent):
            if frame.tick == tick:
                return frame
        raise KeyError(f"region {self.region} no longer keeps the frame of tick {tick}")

    # ------------------------------------------------------------- durability
    def checkpoint(self) -> None:
        """Snapshot the state now; write and fsync it on a background thread."""
        path = self.checkpoint_path
        if path is None:
            return
        blob = pickle.dumps(
            {"region": self.region, "sim": self.sim.dynamic_state(), "control": self.control.state()},
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        if self._writer is not None:
            self._writer.join()
        self._writer = threading.Thread(target=write_atomic, args=(path, blob), daemon=True)
        self._writer.start()

    def flush(self) -> None:
        """Wait for the checkpoint being written, if any."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None

    def _restore(self) -> None:
        path = self.checkpoint_path
        if path is None or not path.exists():
            return
        state: dict[str, Any] = pickle.loads(path.read_bytes())
        self.sim.load_dynamic_state(state["sim"])
        self.control.load_state(state["control"])
        self.restored_tick = self.sim.tick

    def _journal(self, tick: int, actions: tuple[Action, ...]) -> None:
        path = self.journal_path
        if path is None:
            return
        append_synced(path, [json.dumps({"tick": tick, "time": time.time(), **a.to_dict()}) for a in actions])

    def journal(self) -> list[dict[str, Any]]:
        """Every action this region has applied, from its durable journal."""
        path = self.journal_path
        if path is None or not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


class MeshShardActor:
    """Ray actor body: a ShardCore behind methods the driver calls; reports Ray metrics."""

    def __init__(self, region: int, spec: MeshSpec) -> None:
        from x0tta6bl4.observability.metrics import mesh_metrics

        self.spec = spec
        self.core = ShardCore(spec.topology.build(), region, spec)
        self._metrics = mesh_metrics()
        self._tags = {"region": str(region)}
        self._unreported = 0
        if self.core.restored_tick is not None:
            self._metrics["restores"].inc(tags=self._tags)

    def _observe(self, started: float, actions: tuple[Action, ...], summary: npt.NDArray[np.float64]) -> None:
        """Export metrics every METRICS_EVERY_TICKS ticks (steps run hundreds of times a second)."""
        m, tags = self._metrics, self._tags
        for action in actions:
            m["actions"].inc(tags={**tags, "action": action.name})
        self._unreported += 1
        if self._unreported < METRICS_EVERY_TICKS:
            return
        m["ticks"].inc(self._unreported, tags=tags)
        m["step_s"].observe(time.perf_counter() - started, tags=tags)
        m["serviceable_nodes"].set(float(summary[1]), tags=tags)
        m["faulty_nodes"].set(float(summary[3]), tags=tags)
        self._unreported = 0

    def step(
        self, tick: int, actions: tuple[Action, ...], inbound: list[Message], return_frame: bool = True
    ) -> StepOutput:
        """Advance one tick; the frame is returned only when asked (it is always kept in ``recent``)."""
        started = time.perf_counter()
        frame, message, summary = self.core.step(tick, actions, inbound)
        self._observe(started, actions, summary)
        return (frame if return_frame else None), message, summary

    def step_packed(self, payload: bytes) -> StepOutput:
        """:meth:`step` with its input pickled once by the driver for all shards (one cheap argument)."""
        tick, actions, messages, return_frame = pickle.loads(payload)
        inbound = [m for q, m in enumerate(messages) if q != self.core.region]
        return self.step(tick, actions, inbound, return_frame)

    def frame(self, tick: int) -> TelemetryFrame:
        """This region's frame of a recent tick (consumers pull frames, not via the driver)."""
        return self.core.frame(tick)

    def frames(self, first_tick: int = 0) -> list[TelemetryFrame]:
        """Every kept frame from ``first_tick`` on, oldest first (training windows for this region)."""
        return [f for f in self.core.recent if f.tick >= first_tick]

    def topology_spec(self) -> TopologySpec:
        """How this shard's topology was generated (consumers rebuild the same graph from it)."""
        return self.spec.topology

    def status(self) -> dict[str, Any]:
        """Where the shard stands: region, tick, nodes, and the tick it restored from (if it restarted)."""
        return {
            "region": self.core.region,
            "tick": self.core.tick,
            "nodes": self.core.sim.num_nodes,
            "restored_tick": self.core.restored_tick,
            "pid": os.getpid(),
        }

    def journal(self) -> list[dict[str, Any]]:
        return self.core.journal()

    def flush(self) -> None:
        self.core.flush()
