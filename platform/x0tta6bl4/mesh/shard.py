"""MeshShard: one region's simulator as a restartable Ray actor with checkpoints it can rewind to."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pickle
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from x0tta6bl4.durable import write_atomic
from x0tta6bl4.errors import X0tta6bl4Error
from x0tta6bl4.mesh.checkpoint import CheckpointError, decode_state, encode_state
from x0tta6bl4.mesh.control import ControlParams, MeshControl
from x0tta6bl4.mesh.drift import DriftConfig, DriftSchedule
from x0tta6bl4.mesh.faults import Action, Fault
from x0tta6bl4.mesh.region import Message, RegionSim, TrafficParams
from x0tta6bl4.mesh.topology import Topology, TopologySpec
from x0tta6bl4.observability import tracing
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
        checkpoint_dir: where shards write checkpoints (None: no durability).
        checkpoint_every_ticks: ticks between checkpoints (default 10).
        recent_frames: frames each shard keeps for consumers that pull them (default 64).
        drift: what drifts (daily cycle, a region's load step, nodes leaving and joining); the
            default drifts nothing.
    """

    topology: TopologySpec
    seed: int
    faults: tuple[Fault, ...] = ()
    control: ControlParams = dataclasses.field(default_factory=ControlParams)
    traffic: TrafficParams = dataclasses.field(default_factory=TrafficParams)
    checkpoint_dir: str | None = None
    checkpoint_every_ticks: int = 10
    recent_frames: int = 64
    drift: DriftConfig = dataclasses.field(default_factory=DriftConfig)

    def drift_schedule(self, topology: Topology) -> DriftSchedule | None:
        """The run's drift resolved for ``topology`` (None when nothing drifts)."""
        return DriftSchedule.build(self.drift, topology, self.seed) if self.drift.enabled else None


#: What one shard step returns: the region's frame (None when the driver did not ask for it:
#: it stays in the shard's recent frames), its boundary message, its summary vector.
StepOutput = tuple[TelemetryFrame | None, Message, npt.NDArray[np.float64]]


#: Checkpoints a shard keeps: the newest and the one before (a torn newest, or a resume that needs
#: every shard at the same tick, falls back to it).
KEEP_CHECKPOINTS = 2

log = logging.getLogger(__name__)


def checkpoint_file(directory: str | os.PathLike[str], region: int, tick: int) -> Path:
    """Where region ``region``'s checkpoint taken after ``tick`` lives."""
    return Path(directory) / f"region-{region}-t{tick:08d}.ckpt"


def checkpoint_ticks(directory: str | os.PathLike[str], region: int) -> list[int]:
    """Ticks of region ``region``'s checkpoints on disk, oldest first."""
    pattern = re.compile(rf"^region-{region}-t(\d{{8}})\.ckpt$")
    found = (pattern.match(p.name) for p in Path(directory).glob(f"region-{region}-t*.ckpt"))
    return sorted(int(m.group(1)) for m in found if m)


def read_checkpoint(directory: str | os.PathLike[str], region: int, tick: int) -> dict[str, Any]:
    """One checkpoint's state (``tick``, ``sim``, ``control``, ``message``).

    Raises:
        CheckpointError: missing, torn or not this format.
    """
    path = checkpoint_file(directory, region, tick)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: {exc.strerror}") from None
    state = decode_state(blob)
    if not isinstance(state, dict) or state.get("region") != region or state.get("tick") != tick:
        raise CheckpointError(f"{path} does not hold region {region} at tick {tick}")
    return state


#: Ticks between metric exports of a shard (the step latency histogram samples one step of each).
METRICS_EVERY_TICKS = 10


def _ray_node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


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
        drift = spec.drift_schedule(topology)
        self.control = MeshControl(topology, list(spec.faults), spec.control, drift)
        self.sim = RegionSim(topology, region, spec.seed, spec.traffic, drift)
        self.restored_tick: int | None = None
        self.recent: collections.deque[TelemetryFrame] = collections.deque(maxlen=spec.recent_frames)
        self.last_message: Message | None = None
        #: Checkpoint writes that failed, and unreadable checkpoints skipped on restore (newest last).
        self.checkpoint_errors: list[str] = []
        self._writer: threading.Thread | None = None
        self._ckpt_dir = Path(spec.checkpoint_dir) if spec.checkpoint_dir else None
        if self._ckpt_dir is not None:
            self._ckpt_dir.mkdir(parents=True, exist_ok=True)
            self._restore()

    @property
    def tick(self) -> int:
        return self.sim.tick

    def step(
        self, tick: int, actions: tuple[Action, ...], inbound: list[Message]
    ) -> tuple[TelemetryFrame, Message, npt.NDArray[np.float64]]:
        """Advance to ``tick`` with the tick's actions and the other regions' last messages."""
        if tick != self.sim.tick + 1:
            raise ShardBehindError(self.region, self.sim.tick, tick)
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
        self.last_message = message
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
        """Snapshot the state now; write and fsync it on a background thread, then prune old ones."""
        if self._ckpt_dir is None:
            return
        state = {
            "region": self.region,
            "tick": self.sim.tick,
            "sim": self.sim.dynamic_state(),
            "control": self.control.state(),
            "message": self.last_message,
        }
        blob = encode_state(state)
        self.flush()
        self._writer = threading.Thread(
            target=self._write, args=(self._ckpt_dir, self.sim.tick, blob), daemon=True
        )
        self._writer.start()

    def _write(self, directory: Path, tick: int, blob: bytes) -> None:
        try:
            write_atomic(checkpoint_file(directory, self.region, tick), blob)
            for old in checkpoint_ticks(directory, self.region)[:-KEEP_CHECKPOINTS]:
                checkpoint_file(directory, self.region, old).unlink(missing_ok=True)
        except OSError as exc:  # reported by status() and counted by the driver; the run goes on
            self._error(f"checkpoint of tick {tick} not written: {exc}")

    def _error(self, message: str) -> None:
        log.warning("region %d: %s", self.region, message)
        self.checkpoint_errors.append(message)
        del self.checkpoint_errors[:-20]

    def flush(self) -> None:
        """Wait for the checkpoint being written, if any."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None

    def _restore(self) -> None:
        """Load the newest readable checkpoint (a torn or foreign newest one is skipped and reported)."""
        assert self._ckpt_dir is not None
        for tick in reversed(checkpoint_ticks(self._ckpt_dir, self.region)):
            try:
                self.rewind(tick)
                log.warning("region %d: restarted; resumed from its checkpoint of tick %d", self.region, tick)
                return
            except CheckpointError as exc:
                self._error(f"checkpoint of tick {tick} skipped: {exc}")

    def rewind(self, tick: int) -> Message:
        """Go back (or forward) to the checkpoint taken after ``tick``; its outbound message.

        Raises:
            CheckpointError: that checkpoint is missing or unreadable.
        """
        if self._ckpt_dir is None:
            raise CheckpointError(f"region {self.region} keeps no checkpoints")
        self.flush()
        state = read_checkpoint(self._ckpt_dir, self.region, tick)
        self.sim.load_dynamic_state(state["sim"])
        self.control.load_state(state["control"])
        self.last_message = state["message"]
        self.recent.clear()
        self.restored_tick = self.sim.tick
        if self.last_message is None:
            raise CheckpointError(f"region {self.region}'s checkpoint of tick {tick} holds no message")
        return self.last_message


class ShardBehindError(X0tta6bl4Error):
    """A shard was asked for a tick that does not follow its own (it restarted from a checkpoint).

    The driver catches it and replays the ticks the shard is missing.
    """

    def __init__(self, region: int, at_tick: int, asked_tick: int) -> None:
        super().__init__(f"region {region} is at tick {at_tick}; asked for tick {asked_tick}")
        self.region = region
        self.at_tick = at_tick
        self.asked_tick = asked_tick


class MeshShardActor:
    """Ray actor body: a ShardCore behind methods the driver calls; reports Ray metrics."""

    def __init__(self, region: int, spec: MeshSpec) -> None:
        from x0tta6bl4.observability.metrics import mesh_metrics

        tracing.setup_tracing("mesh-shard")
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
        m["step_seconds"].observe(time.perf_counter() - started, tags=tags)
        m["serviceable_nodes"].set(float(summary[1]), tags=tags)
        m["faulty_nodes"].set(float(summary[3]), tags=tags)
        self._unreported = 0

    def step(
        self, tick: int, actions: tuple[Action, ...], inbound: list[Message], return_frame: bool = True
    ) -> StepOutput:
        """Advance one tick; the frame is returned only when asked (it is always kept in ``recent``)."""
        started = time.perf_counter()
        if actions and tracing.enabled():
            self._trace_actions(tick, actions)
        frame, message, summary = self.core.step(tick, actions, inbound)
        self._observe(started, actions, summary)
        return (frame if return_frame else None), message, summary

    def _trace_actions(self, tick: int, actions: tuple[Action, ...]) -> None:
        """A ``mesh.action`` span per action on this region's nodes, child of the controller's decision."""
        first, last = self.core.sim.first, self.core.sim.last
        for a in actions:
            if first <= a.node < last:
                attributes = {"action": a.name, "node": a.node, "region": self.core.region, "tick": tick}
                with tracing.span("mesh.action", attributes, parent=a.trace):
                    pass

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
            "checkpoint_errors": list(self.core.checkpoint_errors),
            "pid": os.getpid(),
            "node_id": _ray_node_id(),
        }

    def rewind(self, tick: int) -> Message:
        """Go back to the checkpoint taken after ``tick`` (a resumed run puts every shard there)."""
        return self.core.rewind(tick)

    def checkpoints(self) -> list[int]:
        """Ticks of this region's checkpoints on disk."""
        directory = self.spec.checkpoint_dir
        return checkpoint_ticks(directory, self.core.region) if directory else []

    def flush(self) -> None:
        """Finish the checkpoint being written and export the finished spans (before the actor is killed)."""
        self.core.flush()
        tracing.flush()
