"""ControllerCore's leak watch: a slow memory leak is acted on while the node's memory is still low.

The stand-in scorer, runbooks and tree of ``test_core_rootcause``; the leaking node's score never
moves, so only its memory's growth can raise the alarm.
"""

from __future__ import annotations

import numpy as np
import pytest

from x0tta6bl4.mapek.config import ControllerConfig
from x0tta6bl4.mapek.core import ControllerCore
from x0tta6bl4.mapek.interfaces import MeshView
from x0tta6bl4.mapek.knowledge import KnowledgeStore
from x0tta6bl4.telemetry.frame import FEATURE_INDEX

from .test_core_rootcause import _features, _Runbooks, _Scorer
from .test_mapek_thresholds import MEM_NOISE, SLOWEST_LEAK
from .test_rootcause import _view

LEAK_START = 30
MEM = FEATURE_INDEX["mem_util"]


def _run(
    mode: str, ticks: int, view: MeshView | None = None, leaking: int = 5
) -> tuple[ControllerCore, list[tuple[int, float, str]]]:
    """``ticks`` of a mesh whose node ``leaking`` leaks from LEAK_START; every action with its tick and
    that node's memory."""
    config = ControllerConfig(mode=mode, audit=False, ingest_resolved=False)  # type: ignore[arg-type]
    core = ControllerCore(
        view or _view(), config, _Scorer(), _Runbooks("restart_node"), KnowledgeStore(":memory:"), "t"
    )
    rng = np.random.default_rng(20)
    mem = 0.35 + np.cumsum(rng.normal(0.0, MEM_NOISE, (ticks, core.view.num_nodes)), axis=0)
    mem[LEAK_START:, leaking] += SLOWEST_LEAK * np.arange(1, ticks - LEAK_START + 1)
    acted = []
    for tick in range(ticks):
        features = _features(False)
        features[:, MEM] = mem[tick]
        acted += [
            (tick, float(mem[tick, 5]), f"{a.name} {a.node}") for a in core.step(tick, features).actions
        ]
    return core, acted


def test_learning_restarts_a_slowly_leaking_node_within_a_few_ticks_of_the_leak() -> None:
    core, acted = _run("learning", LEAK_START + 12)
    assert acted, "the leak was not acted on"
    tick, mem, action = acted[0]
    assert action == "restart_node 5"
    assert tick <= LEAK_START + 8 and mem < 0.5, (tick, mem)
    (incident,) = core.incidents
    assert incident.root == 5 and "mem_util rising" in incident.description


@pytest.mark.parametrize("mode", ["static", "learning"])
def test_healthy_wandering_memory_raises_no_incident(mode: str) -> None:
    core, _ = _run(mode, LEAK_START)
    assert core.incidents == []


def test_static_mode_waits_for_the_fixed_trend_level() -> None:
    _, acted = _run("static", LEAK_START + 12)
    assert acted == []  # memory is still under 0.6: static mode's trend check has not fired


def test_a_resumed_controller_keeps_the_memory_spreads_it_learned() -> None:
    core, _ = _run("learning", LEAK_START)
    core.checkpoint(LEAK_START - 1)
    resumed = ControllerCore(
        core.view, core.config, _Scorer(), _Runbooks("restart_node"), core.knowledge, "t"
    )
    assert resumed.restored_tick == LEAK_START - 1
    assert np.array_equal(resumed.leaks.variance, core.leaks.variance)
    assert resumed.leaks.alarms.sum() == 0 and (resumed.leaks.learned >= resumed.leaks.warmup_ticks).all()


def test_a_real_hosts_memory_held_between_polls_is_left_to_the_trend_check() -> None:
    """Host rows are polled every few ticks and held in between: a tick's increment means nothing."""
    mesh = _view()
    watch_only = MeshView(mesh.num_nodes, mesh.pairs, mesh.gateways, np.arange(mesh.num_nodes) != 6)
    core, acted = _run("learning", LEAK_START + 12, watch_only, leaking=6)
    assert acted == [] and core.incidents == []
    assert core.leaks.learned[6] == 0 and core.leaks.learned[5] > 0
