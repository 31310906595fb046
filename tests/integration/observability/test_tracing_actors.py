"""A trace crosses a Ray actor call: the driver's span parents the MeshShard's span, exported over OTLP/HTTP."""

import os

import pytest

from tests.otlp import OtlpReceiver
from x0tta6bl4.mesh.faults import Action
from x0tta6bl4.mesh.pipeline import ShardedMesh
from x0tta6bl4.mesh.shard import MeshSpec
from x0tta6bl4.mesh.topology import TopologySpec
from x0tta6bl4.observability import tracing

pytestmark = pytest.mark.ray


@pytest.fixture
def otlp(monkeypatch):
    """OTEL_* pointing at a local receiver; this process traces to it until the test ends."""
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
        tracing.shutdown_tracing()
        assert tracing.setup_tracing("test-driver")
        yield receiver
        tracing.shutdown_tracing()


def test_an_actions_trace_context_reaches_the_shard_that_applies_it(ray_local, otlp, tmp_path):
    topology_spec = TopologySpec(200, 2, seed=5)
    topology = topology_spec.build()
    mesh = ShardedMesh(topology, MeshSpec(topology=topology_spec, seed=5, checkpoint_dir=str(tmp_path)))
    try:
        mesh.step()
        node = int(topology.num_nodes - 1)  # in the last region
        with tracing.span("test.decide") as decide:
            action = Action("restart_node", node, tick=mesh.tick + 1, trace=tracing.inject())
        mesh.step((action,))
    finally:
        mesh.close()  # flushes the shards' spans before they are killed
    tracing.flush()
    applied = otlp.wait_for("mesh.action")
    assert len(applied) == 1, applied  # only the shard that owns the node
    span = applied[0]
    assert span["trace_id"] == format(decide.get_span_context().trace_id, "032x")
    assert span["parent_span_id"] == format(decide.get_span_context().span_id, "016x")
    assert span["attributes"]["action"] == "restart_node" and span["attributes"]["node"] == node
    # Recorded in the actor's process, which got OTEL_* through its runtime_env.
    assert span["resource"]["x0tta6bl4.component"] == "mesh-shard"
    assert span["resource"]["process.pid"] != os.getpid()
    assert otlp.named("test.decide")[0]["resource"]["service.name"] == "x0tta6bl4-test-driver"
