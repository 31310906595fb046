"""Drifting workloads: a daily traffic cycle, a region's load step, nodes leaving and joining.

:class:`DriftConfig` says what drifts; :class:`DriftSchedule` is the seeded, pure per-tick answer
the kernel and the control plane ask (demand multiplier per node, which nodes are members). The
default config drifts nothing, and a run with it is the same, bit for bit, as one without drift.

Membership: an absent node (left, or not yet joined) is not part of the mesh. It carries no
traffic, forwards nothing, takes no part in routing, and has no telemetry row at all: its row
is NaN (the collector holds no record of it), unlike a crashed node's all-zero "unreachable"
record. A leaving node leaves gracefully: routing stops picking it as a next hop
``convergence_ticks`` before it goes, so no route breaks when it does. A joining node enters
routing at its join tick and reports once routing has converged around it (``convergence_ticks``
later); until then its row stays NaN. Gateways never leave or join, and absent nodes are never
at fault (the fault schedule skips every node that leaves or joins).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from x0tta6bl4.mesh.topology import Topology

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

#: Tick of a leave or join that never happens.
NEVER = np.iinfo(np.int64).max // 2


class DriftConfig(BaseModel):
    """What drifts in a run; every field's default is "no drift"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    daily_amplitude: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="daily traffic cycle: every node's demand swings by this share around its mean "
        "(0.6: from 0.4x to 1.6x), on top of the traffic model's own weak swing",
    )
    daily_period_ticks: int = Field(default=240, ge=2, description="ticks of one daily cycle")
    daily_phase_ticks: int = Field(
        default=0, ge=0, description="tick at which the cycle crosses its mean on the way up"
    )
    region_step_tick: int | None = Field(
        default=None, ge=1, description="from this tick on, one region's demand is multiplied (None: no step)"
    )
    region_step_factor: float = Field(
        default=1.0, gt=0, le=10, description="the step's demand multiplier (1.75: 75 % more traffic)"
    )
    region_step_region: int | None = Field(
        default=None, ge=0, description="the region that steps (None: one drawn from the seed)"
    )
    leave_share: float = Field(
        default=0.0, ge=0, le=0.5, description="share of non-gateway nodes that leave the mesh during the run"
    )
    leave_ticks: tuple[int, int] = Field(
        default=(1, 1), description="[first, last) ticks within which each leaving node leaves (seeded)"
    )
    join_share: float = Field(
        default=0.0,
        ge=0,
        le=0.5,
        description="share of non-gateway nodes absent at the start that join the mesh during the run",
    )
    join_ticks: tuple[int, int] = Field(
        default=(1, 1), description="[first, last) ticks within which each joining node joins (seeded)"
    )

    @model_validator(mode="after")
    def _windows(self) -> DriftConfig:
        for name, share in (("leave", self.leave_share), ("join", self.join_share)):
            first, last = getattr(self, f"{name}_ticks")
            if share > 0 and not 1 <= first < last:
                raise ValueError(
                    f"{name}_ticks must be [first, last) with 1 <= first < last when {name}_share > 0; "
                    f"got [{first}, {last})"
                )
        if self.leave_share + self.join_share > 0.5:
            raise ValueError("leave_share + join_share cannot exceed 0.5")
        return self

    @property
    def enabled(self) -> bool:
        """Whether anything drifts at all."""
        return bool(
            self.daily_amplitude > 0
            or (self.region_step_tick is not None and self.region_step_factor != 1.0)
            or self.leave_share > 0
            or self.join_share > 0
        )


@dataclasses.dataclass(frozen=True, eq=False)
class DriftSchedule:
    """The drift of one run, resolved for every node (pure: every answer is a function of the tick).

    Shapes:
        leave_tick, join_tick, step_nodes: ``[nodes]``.
    """

    config: DriftConfig
    leave_tick: I64
    join_tick: I64
    step_nodes: Mask
    step_region: int | None

    @staticmethod
    def build(config: DriftConfig, topology: Topology, seed: int) -> DriftSchedule:
        """Resolve ``config`` for ``topology``, deterministically from ``seed``."""
        n = topology.num_nodes
        rng = np.random.default_rng([seed, 26, 4])
        leave = np.full(n, NEVER, dtype=np.int64)
        join = np.zeros(n, dtype=np.int64)
        candidates = np.flatnonzero(~topology.gateways)
        n_leave = round(config.leave_share * n)
        n_join = round(config.join_share * n)
        if n_leave + n_join:
            picked = rng.choice(candidates, size=min(n_leave + n_join, candidates.size), replace=False)
            leavers, joiners = picked[:n_leave], picked[n_leave:]
            leave[leavers] = rng.integers(*config.leave_ticks, size=leavers.size)
            join[joiners] = rng.integers(*config.join_ticks, size=joiners.size)
        region: int | None = None
        step = np.zeros(n, dtype=bool)
        if config.region_step_tick is not None and config.region_step_factor != 1.0:
            region = config.region_step_region
            if region is None:
                region = int(rng.integers(0, topology.num_regions))
            if region >= topology.num_regions:
                raise ValueError(
                    f"region_step_region {region} but the mesh has {topology.num_regions} regions"
                )
            offsets = topology.region_offsets
            step[int(offsets[region]) : int(offsets[region + 1])] = True
        return DriftSchedule(config, leave, join, step, region)

    @property
    def churn(self) -> Mask:
        """Nodes that leave or join at some point (never chosen for faults)."""
        return (self.leave_tick < NEVER) | (self.join_tick > 0)

    def absent(self, tick: int) -> Mask:
        """Nodes that are not members of the mesh at ``tick`` (not joined yet, or left)."""
        return (tick < self.join_tick) | (tick >= self.leave_tick)

    def draining(self, tick: int, lead_ticks: int) -> Mask:
        """Members that leave within ``lead_ticks``: routing stops picking them as next hops."""
        return (tick >= self.leave_tick - lead_ticks) & (tick < self.leave_tick)

    def settling(self, tick: int, lead_ticks: int) -> Mask:
        """Members that joined less than ``lead_ticks`` ago: no route yet, so no telemetry row yet."""
        return (tick >= self.join_tick) & (tick < self.join_tick + lead_ticks) & (self.join_tick > 0)

    def event_ticks(self, lead_ticks: int) -> frozenset[int]:
        """Ticks at which membership or routing eligibility changes."""
        leave = self.leave_tick[self.leave_tick < NEVER]
        join = self.join_tick[self.join_tick > 0]
        ticks = np.concatenate([leave, leave - lead_ticks, join, join + lead_ticks])
        return frozenset(int(t) for t in ticks)

    def demand_multiplier(self, tick: int, first: int, last: int) -> F64 | None:
        """Demand multiplier of nodes ``first..last-1`` at ``tick`` (None: 1 for all, nothing drifts)."""
        c = self.config
        daily = 1.0
        if c.daily_amplitude > 0:
            daily = 1.0 + c.daily_amplitude * float(
                np.sin(2.0 * np.pi * (tick - c.daily_phase_ticks) / c.daily_period_ticks)
            )
        stepped = (
            c.region_step_tick is not None and tick >= c.region_step_tick and self.step_region is not None
        )
        if daily == 1.0 and not stepped:
            return None
        out = np.full(last - first, daily)
        if stepped:
            out = np.where(self.step_nodes[first:last], out * c.region_step_factor, out)
        return out


def realistic_drift(ticks: int) -> DriftConfig:
    """The drift of the bench's drift scenarios and of `x0tta6bl4 run --drift`, scaled to the run.

    Two daily cycles of +-55 % demand, one region's demand x1.75 from mid-run on, and 3 % of the
    nodes leaving and 3 % joining between a fifth and four fifths of the run.
    """
    window = (max(1, ticks // 5), max(2, 4 * ticks // 5))
    return DriftConfig(
        daily_amplitude=0.55,
        daily_period_ticks=max(2, ticks // 2),
        region_step_tick=max(1, ticks // 2),
        region_step_factor=1.75,
        leave_share=0.03,
        leave_ticks=window,
        join_share=0.03,
        join_ticks=window,
    )
