"""Drivers that advance the whole mesh tick by tick: sharded over Ray actors, or in one process."""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import time
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from x0tta6bl4 import RAY_NAMESPACE
from x0tta6bl4.connect import platform_actor_options
from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.mesh.control import MeshControl
from x0tta6bl4.mesh.faults import Action
from x0tta6bl4.mesh.region import SUMMARY_FIELDS, Message, empty_message
from x0tta6bl4.mesh.shard import MeshShardActor, MeshSpec, ShardCore, StepOutput, shard_name
from x0tta6bl4.mesh.topology import Topology
from x0tta6bl4.telemetry.frame import TelemetryFrame


class ShardLostError(X0tta6bl4Error):
    """A shard died and could not be brought back to the current tick."""


@dataclasses.dataclass(frozen=True)
class TickResult:
    """What one tick of the whole mesh produced.

    ``frames`` holds every region's TelemetryFrame, or None when the shards kept them
    (fetch and join them with :meth:`Mesh.frame`);
    ``summary`` sums the regions' summary vectors (:data:`~x0tta6bl4.mesh.region.SUMMARY_FIELDS`).
    """

    tick: int
    frames: list[TelemetryFrame] | None
    summary: npt.NDArray[np.float64]
    actions: tuple[Action, ...]

    def summary_dict(self) -> dict[str, float]:
        return dict(zip(SUMMARY_FIELDS, (float(v) for v in self.summary), strict=True))


class Mesh(Protocol):
    """The interface the autonomy job and the benchmarks drive."""

    topology: Topology
    control: MeshControl

    @property
    def tick(self) -> int: ...

    def step(self, actions: tuple[Action, ...] = ()) -> TickResult: ...

    def frame(self, result: TickResult) -> TelemetryFrame: ...

    def close(self) -> None: ...


class LocalMesh:
    """Every region's ShardCore stepped in turn in this process: the kernel without Ray."""

    def __init__(self, topology: Topology, spec: MeshSpec) -> None:
        self.topology = topology
        self.spec = spec
        self.control = MeshControl(topology, list(spec.faults), spec.control)
        self.cores = [ShardCore(topology, r, spec) for r in range(topology.num_regions)]
        self._messages: list[Message] = [empty_message()] * topology.num_regions

    @property
    def tick(self) -> int:
        return self.control.tick

    def step(self, actions: tuple[Action, ...] = ()) -> TickResult:
        for action in actions:
            action.validate(self.topology)
        tick = self.control.tick + 1
        self.control.advance(tick, actions)
        frames, messages, summaries = [], [], []
        for r, core in enumerate(self.cores):
            inbound = [m for q, m in enumerate(self._messages) if q != r]
            frame, message, summary = core.step(tick, actions, inbound)
            frames.append(frame)
            messages.append(message)
            summaries.append(summary)
        self._messages = messages
        return TickResult(tick, frames, np.sum(summaries, axis=0), actions)

    def frame(self, result: TickResult) -> TelemetryFrame:
        assert result.frames is not None
        return TelemetryFrame.concat(result.frames)

    def close(self) -> None:
        for core in self.cores:
            core.flush()


class ShardedMesh:
    """One detached, named MeshShard actor per region; the driver exchanges boundary messages.

    Each tick the driver pickles the tick's input once (actions and every shard's
    previous boundary message: small, only nodes on region borders), hands it to every
    shard, and collects frames, messages and summaries in one round trip per shard. A shard that dies is
    restarted by Ray from its last checkpoint; the driver replays the ticks since then
    from the messages and actions it kept, so the run continues bit-identically.
    """

    def __init__(
        self, topology: Topology, spec: MeshSpec, keep_actors: bool = False, fetch_frames: bool = False
    ) -> None:
        """Create the shard actors (replacing any left over under the same names).

        Args:
            topology: the mesh (each shard rebuilds it from ``spec.topology``).
            spec: simulation spec; needs ``checkpoint_dir``.
            keep_actors: leave the actors running after :meth:`close` (default False).
            fetch_frames: bring every frame to the driver each tick (default False: frames
                stay in the shards' recent-frame buffers until someone pulls them).
        """
        import ray

        if spec.checkpoint_dir is None:
            raise ConfigError("a sharded mesh needs a checkpoint directory")
        self.topology = topology
        self.spec = spec
        self.keep_actors = keep_actors
        self.fetch_frames = fetch_frames
        self.control = MeshControl(topology, list(spec.faults), spec.control)
        self._remote = ray.remote(MeshShardActor)
        self.actors = []
        for r in range(topology.num_regions):
            name = shard_name(r)
            with contextlib.suppress(ValueError):  # a shard left over from an earlier run: replace it
                ray.kill(ray.get_actor(name, namespace=RAY_NAMESPACE))
            self.actors.append(
                self._remote.options(**platform_actor_options(name, max_task_retries=0)).remote(r, spec)
            )
        self._history = max(spec.checkpoint_every_ticks + 3, 16)
        self._messages: dict[int, list[Message]] = {}  # tick -> message of every region
        self._actions: dict[int, tuple[Action, ...]] = {}
        self.restarts = 0

    @property
    def tick(self) -> int:
        return self.control.tick

    def _payload(self, tick: int) -> bytes:
        """The tick's input for every shard, pickled once: tick, actions, all previous messages."""
        previous = self._messages.get(tick - 1)
        if previous is None and tick > 0:
            raise ShardLostError(f"messages of tick {tick - 1} are no longer kept; cannot step tick {tick}")
        payload = (tick, self._actions[tick], previous or [], self.fetch_frames)
        return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)

    def _submit(self, region: int, payload: bytes) -> Any:
        # Hundreds of steps a second: keep them out of Ray's task-event stream (the
        # dashboard still shows the actors, their state and their other calls).
        return self.actors[region].step_packed.options(enable_task_events=False).remote(payload)

    def step(self, actions: tuple[Action, ...] = ()) -> TickResult:
        import ray

        for action in actions:
            action.validate(self.topology)
        tick = self.control.tick + 1
        self._actions[tick] = actions
        payload = self._payload(tick)
        refs = [self._submit(r, payload) for r in range(len(self.actors))]
        self.control.advance(tick, actions)
        try:
            outs = ray.get(refs)
        except ray.exceptions.RayActorError:
            outs = self._recover(tick, refs)
        self._messages[tick] = [o[1] for o in outs]
        for old in [t for t in self._messages if t <= tick - self._history]:
            del self._messages[old]
            self._actions.pop(old, None)
        frames = [o[0] for o in outs] if self.fetch_frames else None
        return TickResult(tick, frames, np.sum([o[2] for o in outs], axis=0), actions)

    def _recover(self, tick: int, refs: list[Any]) -> list[StepOutput]:
        """Bring every dead shard back to ``tick`` by replaying from its checkpoint."""
        import ray

        outs: list[StepOutput] = []
        for r, ref in enumerate(refs):
            try:
                outs.append(ray.get(ref))
                continue
            except ray.exceptions.RayActorError:
                pass
            self.restarts += 1
            restored = int(self._wait_alive(r)["tick"])
            for t in range(restored + 1, tick):
                replayed: StepOutput = ray.get(self._submit(r, self._payload(t)))
                self._messages[t][r] = replayed[1]  # equal to the lost one: the kernel is deterministic
            outs.append(ray.get(self._submit(r, self._payload(tick))))
        return outs

    def _wait_alive(self, region: int, timeout_s: float = 60.0) -> dict[str, Any]:
        import ray

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                status: dict[str, Any] = ray.get(self.actors[region].status.remote(), timeout=10)
                return status
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                if time.monotonic() > deadline:
                    raise ShardLostError(
                        f"shard {region} did not come back within {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.2)

    def frame(self, result: TickResult) -> TelemetryFrame:
        """The whole mesh's frame of a tick: from the result, or pulled from the shards."""
        import ray

        if result.frames is not None:
            return TelemetryFrame.concat(result.frames)
        return TelemetryFrame.concat(ray.get([a.frame.remote(result.tick) for a in self.actors]))

    def status(self) -> list[dict[str, Any]]:
        import ray

        return list(ray.get([a.status.remote() for a in self.actors]))

    def close(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.get([a.flush.remote() for a in self.actors], timeout=30)
        if not self.keep_actors:
            for actor in self.actors:
                ray.kill(actor)
