"""Mesh states from incidents and service level, and the monitoring cadence each state implies."""

from __future__ import annotations

import pytest

from x0tta6bl4.mapek.config import ControllerConfig
from x0tta6bl4.mapek.state import Health, deep_analysis, mesh_health, monitoring_interval_ticks

CFG = ControllerConfig()


def _mesh(
    open_incidents: int = 0, verifying: int = 0, suspects: int = 0, unserviceable_share: float = 0.0
) -> Health:
    return mesh_health(
        open_incidents,
        verifying,
        suspects,
        unserviceable_share,
        CFG.critical_unserviceable_share,
        CFG.critical_incidents,
    )


def test_a_quiet_mesh_is_healthy() -> None:
    assert _mesh() is Health.HEALTHY


def test_suspects_without_incidents_make_the_mesh_optimizing() -> None:
    assert _mesh(suspects=3) is Health.OPTIMIZING


def test_an_open_incident_without_an_action_in_verification_degrades_the_mesh() -> None:
    assert _mesh(open_incidents=1) is Health.DEGRADED
    assert _mesh(open_incidents=2, verifying=1, suspects=5) is Health.DEGRADED


def test_open_incidents_all_in_verification_make_the_mesh_recovering() -> None:
    assert _mesh(open_incidents=2, verifying=2) is Health.RECOVERING
    assert _mesh(open_incidents=1, verifying=1, suspects=4) is Health.RECOVERING


def test_losing_service_makes_the_mesh_critical_from_the_configured_share_on() -> None:
    share = CFG.critical_unserviceable_share
    assert _mesh(unserviceable_share=share) is Health.CRITICAL
    assert _mesh(unserviceable_share=share * 0.99) is Health.HEALTHY


def test_many_open_incidents_make_the_mesh_critical() -> None:
    n = CFG.critical_incidents
    assert _mesh(open_incidents=n, verifying=n) is Health.CRITICAL
    assert _mesh(open_incidents=n - 1, verifying=n - 1) is Health.RECOVERING


def test_states_are_ordered_by_concern() -> None:
    assert Health.HEALTHY < Health.OPTIMIZING < Health.DEGRADED < Health.CRITICAL
    assert max(Health.DEGRADED, Health.RECOVERING) is Health.DEGRADED


@pytest.mark.parametrize("state", list(Health))
def test_monitoring_is_relaxed_only_while_healthy(state: Health) -> None:
    interval = monitoring_interval_ticks(state, healthy_interval_ticks=4)
    assert interval == (4 if state is Health.HEALTHY else 1)


@pytest.mark.parametrize("state", list(Health))
def test_deep_analysis_runs_outside_healthy(state: Health) -> None:
    assert deep_analysis(state) is (state is not Health.HEALTHY)
