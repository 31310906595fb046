"""Host telemetry exports each poll (source, time) and never per event: procfs here, no Ray, no root."""

from x0tta6bl4.observability.metrics import REGISTRY
from x0tta6bl4.telemetry.source import HostTelemetry


def _sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_each_procfs_poll_is_counted_and_timed_by_source():
    telemetry = HostTelemetry(7, force_procfs=True)
    polls = _sample("x0tta6bl4_telemetry_polls_total", source="procfs")
    timed = _sample("x0tta6bl4_telemetry_poll_seconds_count", source="procfs")
    for _ in range(3):
        telemetry.poll()
    assert _sample("x0tta6bl4_telemetry_polls_total", source="procfs") == polls + 3
    assert _sample("x0tta6bl4_telemetry_poll_seconds_count", source="procfs") == timed + 3
    assert _sample("x0tta6bl4_ebpf_programs_loaded") == 0.0  # the procfs fallback loads none
    telemetry.close()
