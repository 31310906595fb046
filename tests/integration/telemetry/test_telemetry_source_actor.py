"""EbpfSource actors on a local Ray: one pinned per node, eBPF frames, and surviving a failed poll."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from x0tta6bl4 import RAY_NAMESPACE
from x0tta6bl4.telemetry.ebpf import PROGRAMS
from x0tta6bl4.telemetry.frame import FEATURES
from x0tta6bl4.telemetry.source import EbpfSource, TelemetryPollError, source_name, start_sources

pytestmark = [pytest.mark.ray, pytest.mark.root, pytest.mark.usefixtures("ebpf_host")]


@pytest.fixture(scope="module")
def ray_node(ebpf_host: None, ray_local: Any) -> str:
    """The integration tests' shared local Ray; this node's id."""
    return str(ray.get_runtime_context().get_node_id())


@pytest.fixture(scope="module")
def sources(ray_node: str) -> Iterator[dict[str, Any]]:
    handles = start_sources({ray_node: 7})
    try:
        yield handles
    finally:
        for handle in handles.values():
            ray.kill(handle)


def test_start_sources_pins_one_named_source_to_each_node(ray_node: str, sources: dict[str, Any]) -> None:
    assert list(sources) == [ray_node]
    named = ray.get_actor(source_name(ray_node), namespace=RAY_NAMESPACE)
    assert ray.get(named.ray_node_id.remote()) == ray_node
    again = start_sources({ray_node: 7})  # get_if_exists: the same actor, not a second one
    assert again[ray_node]._actor_id == sources[ray_node]._actor_id


def test_source_polls_this_host_as_one_ebpf_row(ray_node: str, sources: dict[str, Any]) -> None:
    handle = sources[ray_node]
    first = ray.get(handle.poll.remote())
    time.sleep(0.2)  # CPU time advances in clock ticks; a shorter interval has no CPU reading
    frame = ray.get(handle.poll.remote())
    assert frame.source == "ebpf"
    assert frame.feature_names == FEATURES
    assert frame.node_ids.tolist() == [7]
    assert frame.tick == first.tick + 1
    assert np.isfinite(frame.column("cpu_util")[0])
    assert np.isfinite(frame.column("runqueue_latency_p95_ms")[0])  # the scheduler always runs something
    assert math.isnan(frame.column("queue_depth_pkts")[0])  # not measured, so not estimated

    status = ray.get(handle.status.remote())
    assert status["source"] == "ebpf"
    assert status["ebpf_off_reason"] is None
    assert {n for n, p in status["programs"].items() if p["loaded"]} == set(PROGRAMS)
    assert status["columns_from_procfs"] == []
    assert status["ray_node_id"] == ray_node

    extra = ray.get(handle.extra_features.remote())
    assert extra["events_per_s"] > 0
    assert extra["lost_events"] == 0
    assert isinstance(extra["drop_reasons"], dict)
    assert "rtt_p50_ms" in extra


def test_source_survives_a_failed_poll_and_reports_it(ray_node: str, tmp_path: Path) -> None:
    for rel in ("net/snmp", "net/netstat", "net/dev", "stat", "meminfo"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path("/proc") / rel, tmp_path / rel)
    actor = EbpfSource.options(  # type: ignore[attr-defined]
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=ray_node, soft=False)
    ).remote(9, ["skb_drops"], False, str(tmp_path))
    try:
        before = ray.get(actor.poll.remote())
        good_snmp = (tmp_path / "net/snmp").read_text()
        (tmp_path / "net/snmp").write_text("Tcp: RetransSegs OutSegs\nTcp: 1\n")
        with pytest.raises(TelemetryPollError, match="net/snmp"):
            ray.get(actor.poll.remote())
        status = ray.get(actor.status.remote())
        assert status["last_poll_failed"] is True
        assert status["failed_polls"] == 1
        assert "net/snmp" in status["last_poll_error"]

        (tmp_path / "net/snmp").write_text(good_snmp)
        after = ray.get(actor.poll.remote())
        assert after.tick == before.tick + 1
        assert after.source == "ebpf"
        assert ray.get(actor.status.remote())["last_poll_failed"] is False
    finally:
        ray.kill(actor)
