"""Drivers that advance the whole mesh tick by tick: sharded over Ray actors, or in one process."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pickle
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from x0tta6bl4 import RAY_NAMESPACE
from x0tta6bl4.connect import platform_actor_options
from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.mesh.checkpoint import CheckpointError
from x0tta6bl4.mesh.control import MeshControl
from x0tta6bl4.mesh.faults import Action
from x0tta6bl4.mesh.journal import JOURNAL_NAME, ActionJournal
from x0tta6bl4.mesh.region import SUMMARY_FIELDS, Message, empty_message
from x0tta6bl4.mesh.shard import (
    MeshShardActor,
    MeshSpec,
    ShardBehindError,
    ShardCore,
    StepOutput,
    read_checkpoint,
    shard_name,
)
from x0tta6bl4.mesh.topology import Topology
from x0tta6bl4.observability.metrics import domain_metrics
from x0tta6bl4.telemetry.frame import TelemetryFrame

#: Shard recoveries (restarts, replayed ticks) as the driver sees them.
_RECOVERY = domain_metrics("recovery")

log = logging.getLogger(__name__)


#: Memory a spread actor reserves: Ray places an actor that requests no resources at all on a
#: random node, ignoring its scheduling strategy (soft affinity and SPREAD alike); a token request
#: makes the strategy count without holding any CPU.
SPREAD_MEMORY_BYTES = 1 << 20


def spread_over_nodes(index: int) -> dict[str, Any]:
    """Ray options that put the ``index``-th actor of a set on the alive nodes in turn.

    Zero-CPU actors with the default strategy land where Ray likes (usually the driver's node).
    Soft node affinity places them round-robin and lets one whose node died restart on any other
    node (its checkpoints are on shared storage). One node: no options, so single-node placement
    is what it always was.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = sorted(str(n["NodeID"]) for n in ray.nodes() if n.get("Alive"))
    if len(nodes) < 2:
        return {}
    return {
        "scheduling_strategy": NodeAffinitySchedulingStrategy(nodes[index % len(nodes)], soft=True),
        "memory": SPREAD_MEMORY_BYTES,
    }


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
        self.control = MeshControl(topology, list(spec.faults), spec.control, spec.drift_schedule(topology))
        self.cores = [ShardCore(topology, r, spec) for r in range(topology.num_regions)]
        self._messages: list[Message] = [empty_message()] * topology.num_regions
        directory = spec.checkpoint_dir
        self.journal = ActionJournal(Path(directory) / JOURNAL_NAME) if directory else None

    @property
    def tick(self) -> int:
        return self.control.tick

    def step(self, actions: tuple[Action, ...] = ()) -> TickResult:
        for action in actions:
            action.validate(self.topology)
        tick = self.control.tick + 1
        if self.journal is not None:
            self.journal.append(tick, actions)
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
    from the messages and actions it kept, so the run continues bit-identically. That covers a
    shard that dies during a step, one restarted between two steps (it answers
    :class:`ShardBehindError`) and one that dies again during its replay, up to
    ``max_recoveries`` attempts per shard and tick; every wait on a shard has a timeout.

    The tick's actions go to the action journal (``<checkpoint_dir>/actions.jsonl``) before the
    tick is sent, so a run whose driver died can be resumed: every shard rewinds to the newest
    checkpoint they all hold and the driver replays the journal from there.
    """

    def __init__(
        self,
        topology: Topology,
        spec: MeshSpec,
        keep_actors: bool = False,
        fetch_frames: bool = False,
        resume: bool = False,
        step_timeout_s: float = 60.0,
        max_recoveries: int = 3,
    ) -> None:
        """Create the shard actors (replacing any left over under the same names).

        Args:
            topology: the mesh (each shard rebuilds it from ``spec.topology``).
            spec: simulation spec; needs ``checkpoint_dir``.
            keep_actors: leave the actors running after :meth:`close` (default False).
            fetch_frames: bring every frame to the driver each tick (default False: frames
                stay in the shards' recent-frame buffers until someone pulls them).
            resume: continue an interrupted run from the shards' newest common checkpoint
                (:attr:`resumed_from` says which tick; :attr:`journal` holds the actions applied
                after it) instead of starting at tick 0 (default False).
            step_timeout_s: longest wait for one shard's step before it counts as failed (default 60).
            max_recoveries: recovery attempts per shard and tick before :class:`ShardLostError`
                (default 3).

        Raises:
            ConfigError: ``spec`` has no checkpoint directory.
            ShardLostError: ``resume`` and the shards hold no common readable checkpoint.
        """
        import ray

        if spec.checkpoint_dir is None:
            raise ConfigError("a sharded mesh needs a checkpoint directory")
        self.topology = topology
        self.spec = spec
        self.keep_actors = keep_actors
        self.fetch_frames = fetch_frames
        self.step_timeout_s = step_timeout_s
        self.max_recoveries = max_recoveries
        self.control = MeshControl(topology, list(spec.faults), spec.control, spec.drift_schedule(topology))
        self.journal = ActionJournal(Path(spec.checkpoint_dir) / JOURNAL_NAME)
        if not resume:
            self.journal.entries.clear()  # a new run with this directory starts its own journal
            self.journal.path.unlink(missing_ok=True)
        self._remote = ray.remote(MeshShardActor)
        self.actors = []
        for r in range(topology.num_regions):
            name = shard_name(r)
            with contextlib.suppress(ValueError):  # a shard left over from an earlier run: replace it
                ray.kill(ray.get_actor(name, namespace=RAY_NAMESPACE))
            options = platform_actor_options(name, max_task_retries=0, **spread_over_nodes(r))
            self.actors.append(self._remote.options(**options).remote(r, spec))
        # Two checkpoints' worth: a shard whose newest checkpoint is torn restores the one before.
        self._history = max(2 * spec.checkpoint_every_ticks + 3, 16)
        self._messages: dict[int, list[Message]] = {}  # tick -> message of every region
        self._actions: dict[int, tuple[Action, ...]] = {}
        #: Shard recoveries (restarts replayed back to the current tick).
        self.restarts = 0
        #: Tick of the common checkpoint a resumed run continued from (None: not resumed).
        self.resumed_from: int | None = self._resume() if resume else None

    def _resume(self) -> int:
        """Rewind every shard to the newest checkpoint all of them hold; load the driver's control state."""
        import ray

        held = ray.get([a.checkpoints.remote() for a in self.actors], timeout=self.step_timeout_s)
        common: list[int] = sorted(set.intersection(*(set(map(int, ticks)) for ticks in held)), reverse=True)
        for tick in common:
            try:
                messages = ray.get([a.rewind.remote(tick) for a in self.actors], timeout=self.step_timeout_s)
                state = read_checkpoint(self.spec.checkpoint_dir or "", 0, tick)
            except CheckpointError as exc:
                log.warning("checkpoint of tick %d unusable for resuming (%s); trying older", tick, exc)
                continue
            self.control.load_state(state["control"])
            self._messages[tick] = list(messages)
            return tick
        raise ShardLostError(f"the shards hold no common readable checkpoint in {self.spec.checkpoint_dir}")

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
        """Advance every shard one tick with ``actions`` (journaled first).

        Raises:
            ShardLostError: a shard could not be brought back to this tick.
        """
        import ray

        for action in actions:
            action.validate(self.topology)
        tick = self.control.tick + 1
        self._actions[tick] = actions
        self.journal.append(tick, actions)
        payload = self._payload(tick)
        refs = [self._submit(r, payload) for r in range(len(self.actors))]
        self.control.advance(tick, actions)
        try:
            outs = list(ray.get(refs, timeout=self.step_timeout_s))
        except (ray.exceptions.RayError, ShardBehindError):
            outs = [self._recover(r, tick, ref) for r, ref in enumerate(refs)]
        self._messages[tick] = [o[1] for o in outs]
        for old in [t for t in self._messages if t <= tick - self._history]:
            del self._messages[old]
            self._actions.pop(old, None)
        frames = [o[0] for o in outs] if self.fetch_frames else None
        return TickResult(tick, frames, np.sum([o[2] for o in outs], axis=0), actions)

    def _recover(self, region: int, tick: int, ref: Any) -> StepOutput:
        """Region ``region``'s output of ``tick``: as sent, or after bringing its restarted shard back.

        A restarted shard is at its checkpoint's tick: the ticks since are replayed from the
        messages and actions the driver kept. A failure during the replay starts the recovery
        again, up to ``max_recoveries`` times.
        """
        import ray

        error: BaseException | None = None
        for attempt in range(self.max_recoveries + 1):
            try:
                if attempt == 0:
                    out: StepOutput = ray.get(ref, timeout=self.step_timeout_s)
                    return out
                self.restarts += 1
                _RECOVERY["shard_restarts"].inc()
                at = int(self._wait_alive(region)["tick"])
                if at >= tick:
                    raise ShardLostError(f"shard {region} is at tick {at}, past {tick}: its output is lost")
                _RECOVERY["replayed_ticks"].inc(tick - at - 1)
                for t in range(at + 1, tick):
                    replayed: StepOutput = ray.get(
                        self._submit(region, self._payload(t)), timeout=self.step_timeout_s
                    )
                    # equal to the lost one: the kernel is deterministic
                    self._messages[t][region] = replayed[1]
                out = ray.get(self._submit(region, self._payload(tick)), timeout=self.step_timeout_s)
                return out
            except ShardLostError:
                raise
            except (ray.exceptions.RayError, ShardBehindError) as exc:
                error = exc
        raise ShardLostError(
            f"shard {region} failed {self.max_recoveries + 1} times at tick {tick}: "
            f"{type(error).__name__}: {error}"
        )

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
        frames = ray.get([a.frame.remote(result.tick) for a in self.actors], timeout=self.step_timeout_s)
        return TelemetryFrame.concat(frames)

    def status(self) -> list[dict[str, Any]]:
        import ray

        return list(ray.get([a.status.remote() for a in self.actors], timeout=self.step_timeout_s))

    def placement(self) -> list[dict[str, Any]]:
        """Each shard's Ray node, pid and the checkpoint tick it restored from (None: never restarted)."""
        keys = ("region", "node_id", "pid", "restored_tick")
        return [{k: s.get(k) for k in keys} for s in self.status()]

    def close(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.get([a.flush.remote() for a in self.actors], timeout=30)
        if not self.keep_actors:
            for actor in self.actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
