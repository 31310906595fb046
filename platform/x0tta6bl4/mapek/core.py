"""The MAPE-K loop without Ray: monitor scores, analyse, plan from runbooks, execute, learn.

The module is one unit: the four phases share one mutable state (incidents, the learner,
cooldowns, attempts awaiting the mesh's acknowledgement) that each phase reads and writes every
tick; split across modules, that state would travel between them without any phase becoming
testable alone (each is tested through ``ControllerCore.step``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.sparse import identity

from x0tta6bl4.mapek import rootcause
from x0tta6bl4.mapek.audit import ControllerAudit
from x0tta6bl4.mapek.config import ControllerConfig
from x0tta6bl4.mapek.incidents import Attempt, Incident, signature
from x0tta6bl4.mapek.interfaces import MeshView, Runbooks, Scorer, StepResult
from x0tta6bl4.mapek.knowledge import KnowledgeStore
from x0tta6bl4.mapek.membership import MembershipWatch
from x0tta6bl4.mapek.state import Health, deep_analysis, mesh_health, monitoring_interval_ticks
from x0tta6bl4.mapek.symptoms import FeatureBaselines, describe, recovering, unexplained
from x0tta6bl4.mapek.thresholds import LeakWatch, ThresholdLearner, neighbour_max, trend_slope
from x0tta6bl4.mesh.faults import ACTIONS, Action
from x0tta6bl4.mesh.routing import RoutingTree
from x0tta6bl4.observability import tracing
from x0tta6bl4.observability.metrics import domain_metrics
from x0tta6bl4.telemetry.frame import FEATURE_INDEX, FEATURES, unlisted_rows

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Excess given to a silent node so that it ranks above every scored symptom around it.
SILENT_EXCESS = 1e6

#: Actions whose own effect disrupts service around the target for a while (reboot, quarantine).
DISRUPTIVE = ("restart_node", "isolate_node")

#: Ticks after opening that an incident stays unconfirmed (no action) to rule out a transient.
CONFIRM_TICKS = 2

#: The controller's metrics: recorded once per analysed tick (never per node).
_METRICS = domain_metrics("mapek")


class _PlanUnavailableError(Exception):
    """The runbooks could not be asked this tick."""


class ControllerCore:
    """Monitor, Analyse, Plan, Execute over a Knowledge store; transport-free.

    The Ray actor (:class:`~x0tta6bl4.mapek.controller.MapeKController`) feeds it frames and
    wires it to the served apps; benchmarks and tests can feed it directly.

    Args:
        view: the mesh's structure.
        config: controller configuration.
        scorer: where anomaly scores come from.
        runbooks: where remediation plans come from (None: no planning, detect only).
        knowledge: the knowledge store.
        run_id: the run whose learner state and incidents this controller owns.
    """

    def __init__(
        self,
        view: MeshView,
        config: ControllerConfig,
        scorer: Scorer,
        runbooks: Runbooks | None,
        knowledge: KnowledgeStore,
        run_id: str,
    ) -> None:
        self.view = view
        self.config = config
        self.scorer = scorer
        self.runbooks = runbooks
        self.knowledge = knowledge
        self.run_id = run_id
        self.adjacency = view.adjacency()
        self._reach = self.adjacency + identity(view.num_nodes, format="csr")
        self.routing = rootcause.RoutingKnowledge(view)
        self.membership = MembershipWatch(
            self.routing, self.adjacency, config.membership_load_change_share, config.membership_grace_ticks
        )
        self.features, static = scorer.contract()
        self._columns = [FEATURES.index(f) for f in self.features]
        n = view.num_nodes
        self.learner = ThresholdLearner(n, config, static)
        self.baselines = FeatureBaselines(n, len(FEATURES))
        self.run = np.zeros(n, dtype=np.int64)
        self.recent_scores = np.zeros((8, n), dtype=np.float32)
        self.recent_thresholds = np.full((8, n), static, dtype=np.float64)
        self.mem_history = np.zeros((config.trend_ticks, n), dtype=np.float64)
        self.mem_filled = 0
        self.leaks = LeakWatch(n, config.leak_allowance_sigmas, config.leak_alarm_sigmas)
        self.node_state = np.zeros(n, dtype=np.int8)
        self.mesh_state = Health.HEALTHY
        self.incidents: list[Incident] = []
        self.next_incident_id = 0
        self.last_tick = -1
        self.last_analysed = -1
        self.pending: list[F32] = []
        self.restarted_at: dict[int, int] = {}
        self.scaled: dict[int, int] = {}
        self.rate_limited: set[int] = set()
        self.isolated: set[int] = set()
        self.avoided_links: set[tuple[int, int]] = set()
        self.errors: list[str] = []
        self._last_features = np.zeros((n, len(FEATURES)), dtype=np.float32)
        self._last_silent = np.zeros(n, dtype=bool)
        self._slope_cache = np.zeros(n, dtype=np.float64)
        self.counters = {
            "analyses": 0,
            "false_alarms": 0,
            "late_detections": 0,
            "pushes": 0,
            "push_errors": 0,
            "attempts_discarded": 0,
        }
        self.audit = ControllerAudit(config, run_id, self.counters, self.errors)
        self.stats = knowledge.action_stats()
        self._last_push = -1
        #: Attempts recorded as pending: the mesh has not acknowledged them yet (see :meth:`acknowledge`).
        self._unacked: list[tuple[Incident, Attempt]] = []
        #: Tick of the checkpoint this controller resumed from (None: it started fresh).
        self.restored_tick: int | None = None
        #: Trace context of each attempt's ``mapek.execute`` span, by (incident, attempt): its verification
        #: continues that trace (in memory only: a restarted controller verifies in new traces).
        self._action_traces: dict[tuple[int, int], dict[str, str]] = {}
        self._restore()

    @property
    def _watches_leaks(self) -> bool:
        return self.config.learning and self.config.leak_watch

    # ------------------------------------------------------------ durability
    def _restore(self) -> None:
        saved = self.knowledge.load_learner(self.run_id)
        if saved is None:
            return
        tick, state = saved
        self.learner.load_state(state)
        if "baseline_level" in state and state["baseline_level"].shape == self.baselines.level.shape:
            self.baselines.level = state["baseline_level"]
            self.baselines.seen = state["baseline_seen"].astype(bool)
        self.leaks.load_state(state)
        self.incidents = [Incident.from_dict(d) for d in self.knowledge.incidents(self.run_id)]
        self.next_incident_id = max((i.incident_id for i in self.incidents), default=-1) + 1
        self.last_tick = self.last_analysed = tick
        self.restored_tick = tick
        for inc in self.incidents:
            for a in inc.attempts:
                self._remember_action(a.action, a.node, a.peer, a.tick)
        by_id = {i.incident_id: i for i in self.incidents}
        for pending in self.knowledge.pending_attempts(self.run_id):
            owner = by_id.get(int(pending["incident_id"]))
            if owner is None:
                continue
            match = [a for a in owner.attempts if a.attempt == pending["attempt"]]
            if match:
                self._unacked.append((owner, match[0]))
        log.info(
            "controller resumed run %s at tick %d with %d incidents", self.run_id, tick, len(self.incidents)
        )

    def checkpoint(self, tick: int) -> None:
        state = self.learner.state()
        state["baseline_level"] = self.baselines.level
        state["baseline_seen"] = self.baselines.seen
        state.update(self.leaks.state())
        self.knowledge.save_learner(self.run_id, tick, state)

    # --------------------------------------------------------------- monitor
    def step(
        self,
        tick: int,
        features: F32,
        unserviceable_share: float = 0.0,
        applied: Sequence[tuple[int, str, int, int | None]] | None = None,
    ) -> StepResult:
        """One tick of telemetry (``[nodes, features]`` in FEATURES order, NaN = not measured).

        ``applied``: the actions the mesh applied since the last step that answered, as
        ``(tick, action, node, peer)`` (see :meth:`acknowledge`); None when every action this
        controller returned is applied (an in-process loop).
        """
        self.acknowledge(applied)
        if tick <= self.last_tick:
            return self.idle(tick)
        self.last_tick = tick
        self.pending.append(features[:, self._columns])
        mem = np.nan_to_num(features[:, FEATURE_INDEX["mem_util"]].astype(np.float64))
        mem[unlisted_rows(features)] = np.nan  # no record: no trend across the gap
        self.mem_history = np.roll(self.mem_history, -1, axis=0)
        self.mem_history[-1] = mem
        self.mem_filled = min(self.mem_filled + 1, self.config.trend_ticks)
        if self._watches_leaks:
            links = np.nan_to_num(features[:, FEATURE_INDEX["links_up"]])
            down = (links == 0) & (np.nan_to_num(features[:, FEATURE_INDEX["cpu_util"]]) == 0)
            # Real hosts are left out: their rows are polled every few ticks and held in between,
            # so their increments are not a tick's (they keep the trend check).
            reporting = ~down & np.isfinite(mem) & self.view.actionable
            self.leaks.update(mem, reporting, self.node_state == Health.HEALTHY)
        interval = monitoring_interval_ticks(self.mesh_state, self.config.healthy_interval_ticks)
        if tick - self.last_analysed < interval and self.last_analysed >= 0:
            return self.idle(tick)
        window = np.stack(self.pending[-self._max_window() :])
        self.pending.clear()
        errors: list[str] = []
        started = time.perf_counter()
        try:
            with tracing.span("mapek.score", {"tick": tick, "nodes": self.view.num_nodes}):
                scores = self.scorer.score(
                    range(self.view.num_nodes), window, self.view.pairs, self.config.stream_id
                )
        except Exception as exc:  # Serve unreachable, replica restarting: keep last thresholds, try next tick
            msg = f"tick {tick}: scoring failed ({type(exc).__name__}: {exc}); keeping last thresholds"
            log.warning(msg)
            self.errors.append(msg)
            _METRICS["idle_cycles"].inc(tags={"reason": "scoring_failed"})
            return self.idle(tick, (msg,))
        scored = time.perf_counter()
        self.last_analysed = tick
        self.counters["analyses"] += 1
        actions = self._analyse_plan_execute(
            tick, features, scores.astype(np.float32), unserviceable_share, errors
        )
        analysed = time.perf_counter()
        with tracing.span("mapek.knowledge", {"tick": tick}):
            pushed = self._maybe_push(tick)
            if tick % self.config.checkpoint_every_ticks == 0:
                self.checkpoint(tick)
        self._observe(started, scored, analysed)
        return StepResult(
            tick,
            tuple(actions),
            True,
            self.mesh_state.name,
            self._alarmed_ids(),
            self.open_incidents(),
            pushed,
            tuple(errors),
        )

    def _observe(self, started: float, scored: float, analysed: float) -> None:
        """Export one analysed cycle: its phases' times, the mesh's and nodes' states, open incidents."""
        phase = _METRICS["phase_seconds"]
        phase.observe(scored - started, tags={"phase": "score"})
        phase.observe(analysed - scored, tags={"phase": "analyse"})
        phase.observe(time.perf_counter() - analysed, tags={"phase": "knowledge"})
        _METRICS["cycles"].inc()
        for state, count in zip(Health, np.bincount(self.node_state, minlength=len(Health)), strict=False):
            _METRICS["nodes"].set(float(count), tags={"state": state.name})
            _METRICS["mesh_state"].set(float(state == self.mesh_state), tags={"state": state.name})
        _METRICS["open_incidents"].set(float(self.open_incidents()))

    def acknowledge(self, applied: Sequence[tuple[int, str, int, int | None]] | None) -> None:
        """Settle the attempts awaiting the mesh's acknowledgement.

        An attempt the mesh applied is recorded as sent; one it never received (the step that
        returned it never reached the driver: the controller died, or its answer timed out) is
        discarded, so the incident plans again instead of waiting on an action that never ran.
        """
        if not self._unacked:
            return
        done = None if applied is None else {(int(t), a, int(n), p) for t, a, n, p in applied}
        discarded = False
        for inc, attempt in self._unacked:
            key = (attempt.tick, attempt.action, attempt.node, attempt.peer)
            if done is None or key in done:
                self.knowledge.mark_sent(self.run_id, inc.incident_id, attempt.attempt, attempt.tick)
                continue
            self._action_traces.pop((inc.incident_id, attempt.attempt), None)
            if attempt in inc.attempts:
                inc.attempts.remove(attempt)
            if not inc.attempts and inc.status == "acting":
                inc.status = "open"
            self.knowledge.discard_attempt(self.run_id, inc.to_dict(), attempt.attempt)
            self.counters["attempts_discarded"] += 1
            discarded = True
        self._unacked.clear()
        if discarded:  # cooldowns and "already done" marks count only what the mesh received
            self._recount_actions()

    def _recount_actions(self) -> None:
        self.restarted_at.clear()
        self.scaled.clear()
        self.rate_limited.clear()
        self.isolated.clear()
        self.avoided_links.clear()
        for inc in self.incidents:
            for a in inc.attempts:
                self._remember_action(a.action, a.node, a.peer, a.tick)

    def _max_window(self) -> int:
        return max(1, self.config.healthy_interval_ticks)

    def idle(self, tick: int, errors: tuple[str, ...] = ()) -> StepResult:
        """The result of a step that analysed nothing: no actions, the current state and alarms."""
        return StepResult(
            tick, (), False, self.mesh_state.name, self._alarmed_ids(), self.open_incidents(), errors=errors
        )

    def open_incidents(self) -> int:
        return sum(1 for i in self.incidents if i.is_open)

    def _alarmed_ids(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.flatnonzero(self.node_state >= Health.RECOVERING))

    # --------------------------------------------------------------- analyse
    def _analyse_plan_execute(
        self, tick: int, features: F32, scores: F32, unserviceable_share: float, errors: list[str]
    ) -> list[Action]:
        c = self.config
        analysis = tracing.start_span("mapek.analyze", {"tick": tick})
        self._last_features = features
        # A node without a record (an all-NaN row: not a member of the mesh) has no data: it never
        # alarms, and neither its score nor its features are learned from.
        unlisted = unlisted_rows(features)
        thr = self._membership_thresholds(tick, unlisted)
        scores = np.where(unlisted, np.float32(0.0), scores) if unlisted.any() else scores
        excess = np.maximum(scores.astype(np.float64), 0.0) / np.maximum(thr, 1e-9)
        above = excess > 1.0
        # A fault's sign counts as above the threshold whatever the score says (nodes with a baseline).
        level, signed = self.baselines.level, np.zeros_like(above)
        if c.blackhole_sign_alarms:  # traffic in, nothing forwarded
            signed |= rootcause.blackhole_sign(features, level)
        if c.surge_sign_alarms:  # a full queue under several times the usual traffic
            signed |= rootcause.surge_sign(features, level)
        if c.uplink_loss_alarms:  # its own uplink turned lossy
            parent = self._tree().parent
            settled = ~self.membership.in_grace(tick)  # a moved node's baseline is of its old path
            settled &= np.where(parent >= 0, settled[np.maximum(parent, 0)], True)
            signed |= rootcause.uplink_loss_sign(features, level, parent) & settled
        above |= signed & self.baselines.seen & ~unlisted
        self.run = np.where(above, self.run + 1, 0)
        silent = self._last_silent = self._silent(features, unlisted)
        deep = deep_analysis(self.mesh_state) or tick % 5 == 0
        self._slope_cache = (
            np.nan_to_num(trend_slope(self.mem_history))
            if self.mem_filled >= 3
            else np.zeros(self.view.num_nodes)
        )
        trend = np.zeros(self.view.num_nodes, dtype=bool)
        if deep and self.mem_filled >= c.trend_ticks:
            trend = (self._slope_cache >= c.trend_slope_per_tick) & (self.mem_history[-1] >= c.trend_level)
        if self._watches_leaks:  # every analysis: the sum is kept every tick
            leaking = self.leaks.alarms & ~unlisted
            trend |= leaking
            # Described by its growth since the sum started climbing: the window's slope still
            # averages in the ticks before the leak.
            self._slope_cache = np.where(
                leaking, np.maximum(self._slope_cache, self.leaks.growth_per_tick), self._slope_cache
            )
        alarmed = (self.run >= c.persist_ticks) | (excess >= c.severe_factor) | silent | trend
        alarmed[list(self.isolated)] = False  # quarantined on purpose: unreachable is what it should be
        in_incident = np.zeros(self.view.num_nodes, dtype=bool)
        for inc in self.incidents:
            if inc.is_open:
                in_incident[list(inc.nodes)] = True
        healthy = ~(above | alarmed | in_incident | unlisted)
        self.baselines.update(features, healthy)
        self.learner.observe(scores, healthy)
        self.recent_scores = np.roll(self.recent_scores, -1, axis=0)
        self.recent_scores[-1] = scores
        self.recent_thresholds = np.roll(self.recent_thresholds, -1, axis=0)
        self.recent_thresholds[-1] = thr
        # Peer-group check: a root is at least as abnormal as its most abnormal neighbour.
        shown = np.where(alarmed, np.maximum(excess, np.where(trend, c.severe_factor, 0.0)), 0.0)
        shown[silent] = SILENT_EXCESS  # a node that stopped reporting is the root of what happens around it
        peer_max = neighbour_max(shown, self.adjacency) if deep else np.zeros_like(shown)
        self._correlate(tick, alarmed, shown, peer_max, features, silent)
        analysis.end()
        actions: list[Action] = []
        with tracing.span("mapek.plan", {"tick": tick}):
            for inc in self.incidents:
                if inc.is_open:
                    self._progress(tick, inc, alarmed, excess, features, actions, errors)
        # States.
        state = np.where(above | trend, Health.OPTIMIZING, Health.HEALTHY).astype(np.int8)
        state[alarmed] = Health.DEGRADED
        state[(excess >= c.severe_factor) | silent] = Health.CRITICAL
        state[list(self.isolated)] = Health.OPTIMIZING  # quarantined: deviates as intended, no alarm
        for inc in self.incidents:
            if inc.is_open and inc.verifying is not None:
                state[list(inc.nodes)] = np.maximum(state[list(inc.nodes)], Health.RECOVERING)
        self.node_state = state
        open_incidents = [i for i in self.incidents if i.is_open]
        self.mesh_state = mesh_health(
            len(open_incidents),
            sum(1 for i in open_incidents if i.verifying is not None),
            int((state == Health.OPTIMIZING).sum()),
            unserviceable_share,
            c.critical_unserviceable_share,
            c.critical_incidents,
        )
        return actions

    def _membership_thresholds(self, tick: int, unlisted: npt.NDArray[np.bool_]) -> F64:
        """The thresholds in force after this frame's membership: nodes that a join or leave moved
        (see :mod:`~x0tta6bl4.mapek.membership`) forget what they learned under the old routing tree
        and are judged against at least ``membership_grace_threshold_share`` of the served model's
        threshold for a grace period."""
        moved = self.membership.update(tick, unlisted, self.isolated, self.avoided_links)
        if moved.size:
            self.learner.forget(moved)
            self.run[moved] = 0
        thr = self.learner.thresholds
        if not self.config.learning:
            return thr
        grace = self.membership.in_grace(tick)
        floor = self.config.membership_grace_threshold_share * self.learner.static_default
        return np.where(grace, np.maximum(thr, floor), thr) if grace.any() else thr

    def _silent(self, features: F32, unlisted: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """Nodes that report the collector's unreachable record: no links, no CPU, no traffic."""
        f = np.nan_to_num(features)
        silent: npt.NDArray[np.bool_] = (
            (f[:, FEATURE_INDEX["links_up"]] == 0)
            & (f[:, FEATURE_INDEX["cpu_util"]] == 0)
            & (f[:, FEATURE_INDEX["rx_bytes_per_s"]] == 0)
            & self.baselines.seen
            & (self.baselines.level[:, FEATURE_INDEX["links_up"]] > 0)
            & ~np.isin(np.arange(self.view.num_nodes), list(self.isolated))
            & ~unlisted  # no record at all is absence from the mesh, not a crash
        )
        return silent

    def _within_hops(self, nodes: set[int], hops: int) -> npt.NDArray[np.bool_]:
        mask = np.zeros(self.view.num_nodes, dtype=np.float64)
        mask[list(nodes)] = 1.0
        for _ in range(hops):
            mask = self._reach @ mask
        return np.asarray(mask > 0)

    def _correlate(
        self,
        tick: int,
        alarmed: npt.NDArray[np.bool_],
        shown: F64,
        peer_max: F64,
        features: F32,
        silent: npt.NDArray[np.bool_],
    ) -> None:
        """Attach new alarms to open incidents nearby; open incidents for the rest, root first."""
        c = self.config
        covered = np.zeros(self.view.num_nodes, dtype=bool)
        open_incidents = [i for i in self.incidents if i.is_open]
        for inc in open_incidents:  # until confirmed, the root follows the signals (routing converges)
            if inc.confirmed_tick is None:
                self._reroot(inc, shown, peer_max)
        for inc in open_incidents:
            covered[list(inc.nodes)] = True
        new = alarmed & ~covered
        if not new.any():
            return
        for inc in open_incidents:
            attempt = inc.verifying
            if attempt is not None and attempt.action in DISRUPTIVE and tick <= attempt.due_tick:
                # Alarms while our own reboot or quarantine takes effect are its expected impact.
                inc.nodes.update(int(i) for i in np.flatnonzero(new))
                return
        for inc in open_incidents:
            near = new & self._within_hops(inc.nodes, c.correlation_hops)
            if near.any():
                inc.nodes.update(int(i) for i in np.flatnonzero(near))
                new &= ~near
                if inc.confirmed_tick is None:
                    self._reroot(inc, shown, peer_max)
        if new.any():
            new &= ~self._captured(open_incidents, new, features)
        while new.any():
            order = np.flatnonzero(new)
            root = int(order[np.argmax(shown[order])])
            members = new & self._within_hops({root}, c.correlation_hops)
            members[root] = True
            inc = Incident(
                self.next_incident_id, tick, root, {int(i) for i in np.flatnonzero(members)}, "", ""
            )
            self.next_incident_id += 1
            self._reroot(inc, shown, peer_max)
            self._late_check(inc, tick)
            self.incidents.append(inc)
            self.knowledge.save_incident(self.run_id, inc.to_dict())
            new &= ~members

    def _captured(
        self, open_incidents: list[Incident], new: npt.NDArray[np.bool_], features: F32
    ) -> npt.NDArray[np.bool_]:
        """New alarms whose routes a blackhole root of an open incident captured (the mesh routes to
        it as to a gateway, from beyond the correlation radius): they join that incident as symptoms."""
        holes = {
            inc.root: inc
            for inc in open_incidents
            if rootcause.blackhole_sign(features[[inc.root]], self.baselines.level[[inc.root]])[0]
        }
        joined = np.zeros_like(new)
        if not holes:
            return joined
        tree = self.routing.tree(self.isolated | self.membership.absent, self.avoided_links, holes)
        top = rootcause.root_of(tree)
        for root, inc in holes.items():
            mine = new & (top == root)
            inc.nodes.update(int(i) for i in np.flatnonzero(mine))
            joined |= mine
        return joined

    def _reroot(self, inc: Incident, shown: F64, peer_max: F64) -> None:
        """Root = the member routing knowledge blames (:func:`rootcause.locate_root`); without a routing
        relation among the members, the most abnormal one that passes the peer-group check."""
        members = np.array(sorted(inc.nodes))
        passes = members[shown[members] >= self.config.peer_ratio * peer_max[members]]
        pool = passes if passes.size else members
        fallback = int(pool[np.argmax(shown[pool])])
        features, level, silent = self._last_features, self.baselines.level, self._last_silent
        inc.root = rootcause.locate_root(members, shown, silent, features, level, self._tree(), fallback).node
        inc.description, inc.signature = self._describe(inc.root, len(inc.nodes) - 1)

    def _describe(self, node: int, neighbours: int) -> tuple[str, str]:
        text = describe(
            node,
            self._last_features[node],
            self.baselines.level[node],
            mem_slope_per_tick=float(self._slope_cache[node]),
            neighbours_alarmed=neighbours,
            gateway=bool(self.view.gateways[node]),
        )
        return text, signature(text)

    def _unexplained(self, inc: Incident) -> bool:
        """Whether the incident is one node's score alone: no neighbour alarms with it and none of the
        root's counters moved (see :func:`~x0tta6bl4.mapek.symptoms.unexplained`)."""
        root = inc.root
        return len(inc.nodes) == 1 and unexplained(
            self._last_features[root], self.baselines.level[root], float(self._slope_cache[root])
        )

    def _recovering(self, inc: Incident) -> bool:
        """Whether every node of the incident is coming back (see
        :func:`~x0tta6bl4.mapek.symptoms.recovering`) or shows nothing but its score, the root among
        the former."""
        level, features, slope = self.baselines.level, self._last_features, self._slope_cache
        if not recovering(features[inc.root], level[inc.root]):
            return False
        return all(
            recovering(features[n], level[n]) or unexplained(features[n], level[n], float(slope[n]))
            for n in inc.nodes
        )

    def _late_check(self, inc: Incident, tick: int) -> None:
        """Feedback: when the root's score had been rising for a while, its threshold was too high."""
        s, t = self.recent_scores[:, inc.root], self.recent_thresholds[:, inc.root]
        rising = s > 0.5 * t
        run = 0
        for flag in rising[::-1]:
            if not flag:
                break
            run += 1
        late = run - self.config.persist_ticks
        if late >= self.config.late_detection_ticks:
            inc.detected_late_by = int(late)
            self.counters["late_detections"] += 1
            self.learner.adjust([inc.root], self.config.late_detection_lower)

    # ------------------------------------------------------- plan and execute
    def _progress(
        self,
        tick: int,
        inc: Incident,
        alarmed: npt.NDArray[np.bool_],
        excess: F64,
        features: F32,
        actions: list[Action],
        errors: list[str],
    ) -> None:
        c = self.config
        members = np.array(sorted(inc.nodes))
        active = alarmed[members].any()
        inc.quiet_ticks = 0 if active else inc.quiet_ticks + 1
        attempt = inc.verifying
        if attempt is not None:
            if tick < attempt.due_tick:
                return
            silent, level = self._last_silent, self.baselines.level
            ok = rootcause.action_worked(
                attempt.action, attempt.node, members, alarmed, silent, features, level
            )
            self._judge(tick, inc, attempt, ok)
            if ok:
                self._close(tick, inc, "resolved")
                return
            # Ask the runbooks again with what the root shows now (a blackhole's sign can come late).
            inc.description, inc.signature = self._describe(inc.root, len(inc.nodes) - 1)
            inc.plan = None
        if inc.quiet_ticks >= c.clear_ticks:
            if inc.confirmed_tick is None:
                self._close(tick, inc, "false_alarm")
                self.counters["false_alarms"] += 1
                self.learner.adjust(members, c.false_alarm_raise)
            else:
                self._close(tick, inc, "cleared")
            return
        if inc.confirmed_tick is None:
            if tick - inc.opened_tick < CONFIRM_TICKS and not (excess[inc.root] >= c.severe_factor):
                return
            if tick - inc.opened_tick < c.route_settle_ticks and rootcause.unrouted(features[inc.root]):
                return  # a live root without a route: routing may still converge (and show a blackhole)
            if tick - inc.opened_tick < c.unexplained_confirm_ticks and self._unexplained(inc):
                return  # only the score speaks for a fault: wait for it to persist (or to fall back)
            if c.recovery_check and self._recovering(inc):
                return  # its nodes are coming back, not failing: nothing to act on
            inc.confirmed_tick = tick
            inc.description, inc.signature = self._describe(inc.root, len(inc.nodes) - 1)
        if not c.remediation or inc.status == "escalated" or self.runbooks is None:
            return
        if len(actions) >= c.max_actions_per_tick:
            return
        if len(inc.attempts) >= c.max_attempts:
            inc.status = "escalated"
            self.knowledge.save_incident(self.run_id, inc.to_dict())
            return
        try:
            action = self._plan(tick, inc, excess, features, errors)
            if action is None and self._next_root(inc, excess):
                action = self._plan(tick, inc, excess, features, errors)
        except _PlanUnavailableError:
            return  # no runbooks this tick: keep monitoring and ask again next time
        if action is None:
            inc.status = "escalated"
            self.knowledge.save_incident(self.run_id, inc.to_dict())
            return
        actions.append(action)

    def _plan(self, tick: int, inc: Incident, excess: F64, features: F32, errors: list[str]) -> Action | None:
        """The next action for ``inc``: learned ones first, then the runbooks' in rank order; when none
        of the first ``rag_k`` runbooks' actions can be taken, the runbooks are asked once more, wider."""
        c = self.config
        if inc.plan is None:
            inc.plan = self._query(tick, inc, c.rag_k, errors)
        action = self._first_feasible(tick, inc, excess, features, errors)
        if action is None and (inc.plan or {}).get("asked_k", c.rag_k) < c.rag_k_wide:
            inc.plan = self._query(tick, inc, c.rag_k_wide, errors)
            action = self._first_feasible(tick, inc, excess, features, errors)
        return action

    def _query(self, tick: int, inc: Incident, k: int, errors: list[str]) -> dict[str, Any]:
        """The runbooks' answer for ``inc``, with the ``asked_k`` it was asked for (a small corpus
        answers fewer: the wide query is still asked only once per plan)."""
        assert self.runbooks is not None
        try:
            return {**self.runbooks.query(inc.description, k), "asked_k": k}
        except Exception as exc:  # RAG unreachable: no plan this tick, keep monitoring
            msg = f"tick {tick}: runbook query for incident {inc.incident_id} failed ({exc})"
            log.warning(msg)
            errors.append(msg)
            self.errors.append(msg)
            raise _PlanUnavailableError(msg) from exc

    def _first_feasible(
        self, tick: int, inc: Incident, excess: F64, features: F32, errors: list[str]
    ) -> Action | None:
        """The first candidate of ``inc``'s plan that is untried and whose preconditions hold, sent."""
        assert self.runbooks is not None
        candidates: list[tuple[str, str]] = []
        if self.config.learning:
            learned = self.stats.get(inc.signature, {})
            ranked = sorted(learned.items(), key=lambda kv: -(kv[1][0] + 1) / (kv[1][0] + kv[1][1] + 2))
            candidates += [(a, "knowledge") for a, (ok, bad) in ranked if ok > bad]
        answer = inc.plan or {}
        named = self.audit.signed_actions(inc.incident_id, answer, self.runbooks, errors)
        for name in named:
            if name is None:
                continue
            if name not in ACTIONS:
                msg = f"incident {inc.incident_id}: runbook recommends unknown action {name!r}; ignored"
                log.warning(msg)
                errors.append(msg)
                continue
            candidates.append((name, "runbook"))
        tried = {(a.action, a.node) for a in inc.attempts}  # a failed reroute is not retried via another peer
        for name, source in candidates:
            target = self._target(name, inc.root, excess)
            if target is None or (name, target[0]) in tried:
                continue
            node, peer = target
            if not self._preconditions(tick, name, node, peer, features):
                continue
            delay = self.config.settle_ticks[name]
            attempt = Attempt(len(inc.attempts), tick + 1, name, node, peer, source, tick + delay)
            inc.attempts.append(attempt)
            inc.status = "acting"
            self._remember_action(name, node, peer, tick + 1)
            self.knowledge.record_attempt(self.run_id, inc.to_dict(), attempt.to_dict())  # pending
            self._unacked.append((inc, attempt))
            reason = f"incident {inc.incident_id} ({source}): {inc.description}"[:300]
            self.audit.action_sent(inc.incident_id, attempt, tick + 1)
            trace = self._trace_execute(inc, attempt)
            return Action(name, node, peer, tick + 1, reason=reason, trace=trace)
        return None

    def _next_root(self, inc: Incident, excess: F64) -> bool:
        """Escalate to the next most abnormal member not tried yet; False when none is left."""
        tried = {a.node for a in inc.attempts} | {inc.root}
        members = [
            m for m in sorted(inc.nodes, key=lambda m: -excess[m]) if m not in tried and excess[m] > 1.0
        ]
        if not members:
            return False
        inc.root = members[0]
        inc.description, inc.signature = self._describe(inc.root, len(inc.nodes) - 1)
        inc.plan = None
        return True

    def _target(self, name: str, root: int, excess: F64) -> tuple[int, int | None] | None:
        if not self.view.actionable[root]:
            return None
        if name != "reroute":
            return root, None
        uplink = rootcause.uplink_peer(root, self._tree(), excess >= 1.0)
        if uplink is not None and self.view.actionable[uplink]:
            return root, uplink  # the root's own trouble starts on its link to its next hop
        nbrs = self.adjacency.indices[self.adjacency.indptr[root] : self.adjacency.indptr[root + 1]]
        nbrs = nbrs[self.view.actionable[nbrs]]
        if nbrs.size == 0:
            return root, None
        peer = int(nbrs[np.argmax(excess[nbrs])])
        return (root, peer) if excess[peer] >= 0.5 else (root, None)

    def _tree(self) -> RoutingTree:
        """The routing tree the mesh runs on: its members, less the controller's isolations and avoidances."""
        return self.membership.tree(self.isolated, self.avoided_links)

    def _preconditions(self, tick: int, name: str, node: int, peer: int | None, features: F32) -> bool:
        """The runbooks' preconditions that telemetry and the controller's own record can check."""
        f = np.nan_to_num(features[node])
        base = self.baselines.level[node]
        if name == "restart_node":
            last = self.restarted_at.get(node)
            return last is None or tick - last >= self.config.restart_cooldown_ticks
        rx, rx0 = f[FEATURE_INDEX["rx_bytes_per_s"]], base[FEATURE_INDEX["rx_bytes_per_s"]]
        hole = bool(
            rootcause.blackhole_sign(features[node][None], base[None])[0]
        )  # traffic in, nothing forwarded
        if name == "isolate_node":  # only a blackhole is quarantined; never a gateway
            return node not in self.isolated and not self.view.gateways[node] and hole
        if name == "rate_limit":  # there is a surge to cap; a blackhole's rx grows too, but it queues nothing
            queue = f[FEATURE_INDEX["queue_depth_pkts"]]
            return node not in self.rate_limited and (rx > 1.5 * rx0 + 1e4 or queue >= 20) and not hole
        if name == "scale_capacity":
            return (
                self.scaled.get(node, 0) < self.config.max_capacity_scalings
                and f[FEATURE_INDEX["cpu_util"]] >= 0.8
            )
        if name == "reroute":  # steers honest nodes only: a blackhole ignores it
            key = (min(node, peer), max(node, peer)) if peer is not None else (node, -1)
            return (
                key not in self.avoided_links and not (peer is None and self.view.gateways[node]) and not hole
            )
        return False

    def _remember_action(self, name: str, node: int, peer: int | None, tick: int) -> None:
        if name == "restart_node":
            self.restarted_at[node] = tick
        elif name == "isolate_node":
            self.isolated.add(node)
        elif name == "rate_limit":
            self.rate_limited.add(node)
        elif name == "scale_capacity":
            self.scaled[node] = self.scaled.get(node, 0) + 1
        elif name == "reroute":
            self.avoided_links.add((min(node, peer), max(node, peer)) if peer is not None else (node, -1))

    def _trace_execute(self, inc: Incident, attempt: Attempt) -> dict[str, str] | None:
        """The ``mapek.execute`` span of a decided action; its context travels with the action."""
        if not tracing.enabled():
            return None
        attributes = {
            "incident": inc.incident_id,
            "attempt": attempt.attempt,
            "action": attempt.action,
            "node": attempt.node,
            "source": attempt.source,
            "apply_tick": attempt.tick,
        }
        with tracing.span("mapek.execute", attributes):
            carrier = tracing.inject()
        self._action_traces[(inc.incident_id, attempt.attempt)] = carrier
        return carrier

    def _judge(self, tick: int, inc: Incident, attempt: Attempt, ok: bool) -> None:
        with tracing.span(
            "mapek.verify",
            {"incident": inc.incident_id, "attempt": attempt.attempt, "action": attempt.action, "ok": ok},
            parent=self._action_traces.pop((inc.incident_id, attempt.attempt), None),
            links=[tracing.current_carrier()],
        ):
            self._record_judgement(tick, inc, attempt, ok)

    def _record_judgement(self, tick: int, inc: Incident, attempt: Attempt, ok: bool) -> None:
        attempt.outcome = "success" if ok else "failed"
        _METRICS["actions"].inc(tags={"action": attempt.action, "verdict": attempt.outcome})
        attempt.judged_tick = tick
        self.audit.action_judged(inc.incident_id, attempt, tick)
        self.knowledge.record_judgement(
            self.run_id, inc.to_dict(), attempt.to_dict(), ok, learn=self.config.learning
        )
        if self.config.learning:
            ok_n, bad_n = self.stats.setdefault(inc.signature, {}).get(attempt.action, (0, 0))
            self.stats[inc.signature][attempt.action] = (ok_n + ok, bad_n + (not ok))

    def _close(self, tick: int, inc: Incident, status: str) -> None:
        inc.status = status
        inc.closed_tick = tick
        _METRICS["incidents"].inc(tags={"outcome": status})
        if status == "resolved":
            _METRICS["time_to_repair_ticks"].observe(tick - inc.opened_tick)
        self.knowledge.save_incident(self.run_id, inc.to_dict())
        if status == "resolved" and self.config.ingest_resolved and self.runbooks is not None:
            doc = inc.resolved_document(self.run_id, tick)
            try:
                self.runbooks.ingest([self.audit.signed_document(doc)])
            except Exception as exc:
                msg = f"tick {tick}: adding incident {inc.incident_id} to the runbook corpus failed ({exc})"
                log.warning(msg)
                self.errors.append(msg)

    # -------------------------------------------------------------- thresholds
    def _maybe_push(self, tick: int) -> bool:
        if not self.config.learning or tick - self._last_push < self.config.push_every_ticks:
            return False
        if self.learner.filled < self.config.learn_warmup_ticks:
            return False
        self._last_push = tick
        thr = self.learner.thresholds
        default = float(np.median(thr))
        per_node = {
            str(i): round(float(v), 3) for i, v in enumerate(thr) if abs(v - default) > 0.05 * default
        }
        try:
            self.scorer.push_thresholds(default, per_node)
        except Exception as exc:
            msg = f"tick {tick}: pushing thresholds to the served detector failed ({exc})"
            log.warning(msg)
            self.errors.append(msg)
            self.counters["push_errors"] += 1
            return False
        self.counters["pushes"] += 1
        _METRICS["threshold"].set(default, tags={"stat": "median"})
        _METRICS["threshold"].set(float(np.quantile(thr, 0.9)), tags={"stat": "p90"})
        self.audit.record(
            "thresholds.push",
            "served detector",
            {"tick": tick, "default": default, "per_node": len(per_node)},
        )
        return True

    def summary(self) -> dict[str, Any]:
        """Counters, incident statuses and threshold statistics (for the report)."""
        thr = self.learner.thresholds
        statuses: dict[str, int] = {}
        for inc in self.incidents:
            statuses[inc.status] = statuses.get(inc.status, 0) + 1
        return {
            "mode": self.config.mode,
            "strategy": self.config.strategy,
            "mesh_state": self.mesh_state.name,
            "incidents": len(self.incidents),
            "incident_statuses": statuses,
            "actions": sum(len(i.attempts) for i in self.incidents),
            "threshold_median": float(np.median(thr)),
            "threshold_p90": float(np.quantile(thr, 0.9)),
            "static_threshold": self.learner.static_default,
            "errors": len(self.errors),
            **self.counters,
        }
