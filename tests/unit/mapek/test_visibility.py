"""fault_visibility: a fault counts as visible exactly when taking it out changes some telemetry."""

from __future__ import annotations

from x0tta6bl4.mapek.visibility import fault_visibility
from x0tta6bl4.mesh.drift import DriftConfig
from x0tta6bl4.mesh.faults import Fault
from x0tta6bl4.mesh.topology import TopologySpec


def test_a_crash_is_visible_and_a_fault_that_never_starts_is_not() -> None:
    spec = TopologySpec(60, 2, seed=3)
    topology = spec.build()
    relay = next(n for n in range(60) if not topology.gateways[n])
    faults = (
        Fault(0, "node_crash", start_tick=4, duration_ticks=6, node=relay),
        Fault(1, "cpu_exhaustion", start_tick=40, duration_ticks=6, node=relay),  # after the run's end
    )
    assert fault_visibility(spec, topology, 3, faults, 20) == {0: True, 1: False}
    drift = DriftConfig(daily_amplitude=0.5, daily_period_ticks=10)
    assert fault_visibility(spec, topology, 3, faults, 20, drift, only={1}) == {1: False}
