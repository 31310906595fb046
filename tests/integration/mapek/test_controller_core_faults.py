"""The controller loop in process with the real detector: runbook answers it cannot name are never
applied, and a failed runbook query keeps it monitoring."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from x0tta6bl4.mapek.config import ControllerConfig


class _Runbooks:
    """A runbook source that answers with a fixed action (the served RAG app validates actions on
    ingest, so only a stand-in can produce an unknown one), or fails."""

    def __init__(self, action: str | None, fail: bool = False) -> None:
        self.action, self.fail, self.queries = action, fail, 0

    def query(self, text: str, k: int) -> dict[str, Any]:
        self.queries += 1
        if self.fail:
            raise ConnectionError("RAG app unreachable")
        return {"action": self.action, "passages": [{"action": self.action, "runbook_id": "x"}]}

    def ingest(self, documents: list[dict[str, Any]]) -> None:
        return None

    def signatures(self, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Its one runbook, signed by an operator: the controller acts only on signed runbooks."""
        from x0tta6bl4.rag.provenance import document_claim
        from x0tta6bl4.rag.store import Document
        from x0tta6bl4.security.provenance import RUNBOOK_CONTEXT, ProvenancePolicy

        claim = document_claim(Document("x", "stand-in", "stand-in runbook", None, self.action))
        signature = ProvenancePolicy().signer("operator/test").sign(claim, RUNBOOK_CONTEXT)
        return {"x": {"claim": claim.decode(), "signature": signature.to_dict()}} if "x" in doc_ids else {}


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    from x0tta6bl4.mapek.clients import LocalScorer
    from x0tta6bl4.models.bootstrap import BootstrapConfig, bootstrap_detector
    from x0tta6bl4.models.registry import ModelRegistry

    registry = ModelRegistry(tmp_path_factory.mktemp("core") / "registry")
    bootstrap_detector(registry, BootstrapConfig(nodes=300, ticks=80, epochs=2))
    return LocalScorer(str(registry.uri))


def _run(scorer, runbooks, ticks=60, lose_first=False):
    from x0tta6bl4.autonomy.config import RunConfig
    from x0tta6bl4.autonomy.job import plan_run
    from x0tta6bl4.mapek.controller import mesh_view
    from x0tta6bl4.mapek.core import ControllerCore
    from x0tta6bl4.mapek.knowledge import KnowledgeStore
    from x0tta6bl4.mesh.control import ControlParams
    from x0tta6bl4.mesh.pipeline import LocalMesh
    from x0tta6bl4.mesh.shard import MeshSpec

    plan = plan_run(
        RunConfig(
            nodes=300,
            regions=2,
            ticks=ticks,
            seed=4,
            ebpf=False,
            in_process=True,
            faults_per_1000_ticks=0,
            faults=[{"type": "node_crash", "node": 210, "start_tick": 30, "duration_ticks": 25}],
        )
    )
    mesh = LocalMesh(plan.topology, MeshSpec(plan.topology_spec, 4, plan.faults, ControlParams()))
    core = ControllerCore(
        mesh_view(plan.topology, 0),
        ControllerConfig(stream_id=f"t{id(runbooks)}"),
        scorer,
        runbooks,
        KnowledgeStore(":memory:"),
        "t",
    )
    actions: tuple[Any, ...] = ()
    steps = []
    for _ in range(ticks):
        if lose_first and actions:  # the answer carrying the first action never reached the driver
            actions, lose_first = (), False
        result = mesh.step(actions)
        applied = [(a.tick, a.name, a.node, a.peer) for a in result.actions]
        step = core.step(result.tick, mesh.frame(result).features, applied=applied)
        steps.append(step)
        actions = step.actions
    return core, mesh, steps


def test_an_action_the_runbooks_name_but_the_mesh_does_not_know_is_never_applied(scorer):
    runbooks = _Runbooks("reboot_the_universe")
    core, mesh, steps = _run(scorer, runbooks)
    assert runbooks.queries >= 1
    assert not mesh.control.actions and not any(s.actions for s in steps)
    assert any("unknown action 'reboot_the_universe'" in e for s in steps for e in s.errors)
    crash = [i for i in core.incidents if 210 in i.nodes]
    assert crash and not crash[0].attempts  # escalated, then cleared when the crash ended by itself
    assert crash[0].status in ("escalated", "cleared")


def test_an_unreachable_rag_app_is_reported_and_the_controller_keeps_monitoring(scorer):
    runbooks = _Runbooks("restart_node", fail=True)
    core, mesh, steps = _run(scorer, runbooks)
    errors = [e for s in steps for e in s.errors]
    assert errors and all("runbook query" in e for e in errors)
    assert not mesh.control.actions
    assert sum(s.analysed for s in steps) >= 30  # still analysing every (other) tick
    assert runbooks.queries >= 10  # asked again on every analysis while the incident was open
    assert np.isfinite(core.learner.thresholds).all()


def _sample(name, **labels):
    """A metric's value in the in-process registry (the core runs without Ray here: prometheus-client)."""
    from x0tta6bl4.observability.metrics import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_named_action_heals_the_crash_and_is_recorded_as_knowledge(scorer, prometheus_client_pipeline):
    healed = ("x0tta6bl4_mapek_actions_total", {"action": "restart_node", "verdict": "success"})
    resolved = ("x0tta6bl4_mapek_incidents_total", {"outcome": "resolved"})
    repairs = ("x0tta6bl4_mapek_time_to_repair_ticks_count", {})
    cycles = ("x0tta6bl4_mapek_cycles_total", {})
    before = [_sample(name, **labels) for name, labels in (healed, resolved, repairs, cycles)]
    core, mesh, steps = _run(scorer, _Runbooks("restart_node"))
    crash = next(s for s in mesh.control.faults if s.fault.node == 210)
    assert crash.remediated_by == "restart_node"
    incident = next(i for i in core.incidents if 210 in i.nodes)
    assert incident.status == "resolved" and incident.attempts[-1].outcome == "success"
    assert core.stats[incident.signature]["restart_node"][0] >= 1
    # The same story in the controller's metrics: one per analysed cycle, never per node.
    after = [_sample(name, **labels) for name, labels in (healed, resolved, repairs, cycles)]
    assert after[0] > before[0] and after[1] > before[1] and after[2] > before[2]
    assert after[3] - before[3] == sum(s.analysed for s in steps)
    assert (
        _sample("x0tta6bl4_mapek_nodes", state="HEALTHY")
        + _sample("x0tta6bl4_mapek_nodes", state="OPTIMIZING")
        > 0
    )
    assert _sample("x0tta6bl4_mapek_phase_seconds_count", phase="analyse") >= after[3] - before[3]


def test_an_action_the_mesh_never_received_is_discarded_and_planned_again(scorer):
    core, mesh, _ = _run(scorer, _Runbooks("restart_node"), lose_first=True)
    assert core.counters["attempts_discarded"] == 1
    incident = next(i for i in core.incidents if 210 in i.nodes)
    assert incident.status == "resolved"
    applied = [a for a in mesh.control.actions if a.node == 210]
    assert len(applied) == 1 and incident.attempts[-1].tick == applied[0].tick  # planned again, applied once
    for attempt in incident.attempts:
        assert core.knowledge.attempt_state("t", incident.incident_id, attempt.attempt) == "sent"


def test_traced_ticks_link_each_action_to_where_it_was_decided_and_to_its_verification(scorer):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from x0tta6bl4.observability import tracing

    tracing.shutdown_tracing()
    exporter = InMemorySpanExporter()
    assert tracing.setup_tracing("controller", exporter=exporter)
    try:
        core, mesh, _ = _run(scorer, _Runbooks("restart_node"))
    finally:
        tracing.shutdown_tracing()
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    names = [s.name for s in spans]
    assert {"mapek.score", "mapek.analyze", "mapek.plan", "mapek.knowledge"} <= set(names)
    assert names.count("mapek.analyze") == core.counters["analyses"]  # one per analysed tick, not per node
    score = next(s for s in spans if s.name == "mapek.score")
    assert score.attributes["nodes"] == 300 and "tick" in score.attributes
    executes = [s for s in spans if s.name == "mapek.execute"]
    applied = [a for a in mesh.control.actions if a.node == 210]
    assert executes and applied and applied[0].trace is not None  # the context rides on the action
    assert "trace" not in applied[0].to_dict()  # ... but is never journaled
    execute = executes[0]
    assert by_id[execute.parent.span_id].name == "mapek.plan"
    assert execute.attributes["action"] == "restart_node" and execute.attributes["node"] == 210
    assert applied[0].trace["traceparent"].split("-")[2] == format(execute.context.span_id, "016x")
    verify = next(s for s in spans if s.name == "mapek.verify")
    assert verify.parent.span_id == execute.context.span_id  # continues the decision's trace
    assert verify.context.trace_id == execute.context.trace_id
    assert verify.attributes["ok"] is True
    (link,) = verify.links
    assert by_id[link.context.span_id].name == "mapek.plan"  # and links the tick that judged it
    assert not core._action_traces  # judged contexts are dropped
