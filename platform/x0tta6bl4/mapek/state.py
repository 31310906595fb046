"""Node and mesh states of the controller, and what each state means for monitoring."""

from __future__ import annotations

import enum


class Health(enum.IntEnum):
    """A node's or the mesh's state, in increasing order of concern (RECOVERING aside)."""

    HEALTHY = 0
    OPTIMIZING = 1  # something deviates (a score above threshold, a trend) but is not confirmed
    RECOVERING = 2  # an action was applied and its outcome is being verified
    DEGRADED = 3  # a confirmed alarm / an open incident without an action in verification
    CRITICAL = 4  # a node far above its threshold or silent; the mesh losing service


def mesh_health(
    open_incidents: int,
    verifying: int,
    suspects: int,
    unserviceable_share: float,
    critical_share: float,
    critical_incidents: int,
) -> Health:
    """The mesh's state from its incidents and service level."""
    if unserviceable_share >= critical_share or open_incidents >= critical_incidents:
        return Health.CRITICAL
    if open_incidents > verifying:
        return Health.DEGRADED
    if open_incidents:
        return Health.RECOVERING
    if suspects:
        return Health.OPTIMIZING
    return Health.HEALTHY


def monitoring_interval_ticks(state: Health, healthy_interval_ticks: int) -> int:
    """Ticks between analyses: relaxed while HEALTHY, every tick otherwise."""
    return healthy_interval_ticks if state == Health.HEALTHY else 1


def deep_analysis(state: Health) -> bool:
    """Whether peer-group and trend checks run every analysis (always outside HEALTHY)."""
    return state != Health.HEALTHY
