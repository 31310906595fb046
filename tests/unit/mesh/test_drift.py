"""Workload drift: the seeded schedule, the kernel's absent nodes, checkpoints and the fault placement."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pydantic import ValidationError

from x0tta6bl4.mesh.drift import NEVER, DriftConfig, DriftSchedule
from x0tta6bl4.mesh.faults import random_schedule
from x0tta6bl4.mesh.pipeline import LocalMesh
from x0tta6bl4.mesh.shard import MeshSpec
from x0tta6bl4.mesh.topology import TopologySpec
from x0tta6bl4.telemetry.frame import FEATURE_INDEX

TOPO = TopologySpec(300, 3, seed=4)
CHURN = DriftConfig(leave_share=0.05, leave_ticks=(6, 10), join_share=0.05, join_ticks=(4, 8))
FULL = DriftConfig(
    daily_amplitude=0.6,
    daily_period_ticks=20,
    region_step_tick=5,
    region_step_factor=2.0,
    region_step_region=1,
    leave_share=0.05,
    leave_ticks=(6, 10),
    join_share=0.05,
    join_ticks=(4, 8),
)


@pytest.fixture(scope="module")
def topology():
    return TOPO.build()


def _run(topology, drift: DriftConfig, ticks: int, **spec) -> tuple[LocalMesh, list[np.ndarray]]:
    mesh = LocalMesh(topology, MeshSpec(topology=TOPO, seed=4, drift=drift, **spec))
    frames = [mesh.frame(mesh.step()).features for _ in range(ticks)]
    return mesh, frames


def test_the_default_config_drifts_nothing_and_the_kernel_is_unchanged_bit_for_bit(topology) -> None:
    assert not DriftConfig().enabled
    assert MeshSpec(topology=TOPO, seed=4).drift_schedule(topology) is None
    # An enabled schedule that changes nothing (a 1x step) gives the same frames as no drift at all.
    idle = DriftConfig(region_step_tick=3, region_step_factor=1.0)
    _, plain = _run(topology, DriftConfig(), 8)
    _, same = _run(topology, idle, 8)
    assert all(np.array_equal(a, b) for a, b in zip(plain, same, strict=True))


def test_the_schedule_is_deterministic_from_the_seed_and_spares_gateways(topology) -> None:
    a = DriftSchedule.build(FULL, topology, 7)
    b = DriftSchedule.build(FULL, topology, 7)
    c = DriftSchedule.build(FULL, topology, 8)
    assert np.array_equal(a.leave_tick, b.leave_tick) and np.array_equal(a.join_tick, b.join_tick)
    assert not np.array_equal(a.leave_tick, c.leave_tick)
    leavers, joiners = a.leave_tick < NEVER, a.join_tick > 0
    assert leavers.sum() == joiners.sum() == 15 and not (leavers & joiners).any()
    assert not (a.churn & topology.gateways).any()
    assert ((a.leave_tick[leavers] >= 6) & (a.leave_tick[leavers] < 10)).all()
    assert ((a.join_tick[joiners] >= 4) & (a.join_tick[joiners] < 8)).all()
    assert np.array_equal(a.absent(0), joiners)
    assert np.array_equal(a.absent(20), leavers)


def test_the_demand_multiplier_follows_the_daily_cycle_and_the_region_step(topology) -> None:
    s = DriftSchedule.build(FULL, topology, 7)
    first, last = int(topology.region_offsets[1]), int(topology.region_offsets[2])
    peak = s.demand_multiplier(5, 0, topology.num_nodes)  # a quarter period: sin = 1
    assert peak is not None
    assert np.allclose(peak[first:last], 1.6 * 2.0) and np.allclose(peak[:first], 1.6)
    before = s.demand_multiplier(4, 0, topology.num_nodes)
    assert before is not None and np.allclose(before, before[0])  # no step yet: one value for all
    assert DriftSchedule.build(DriftConfig(), topology, 7).demand_multiplier(5, 0, 10) is None


def test_absent_nodes_have_nan_rows_carry_no_traffic_and_are_not_counted_as_members(topology) -> None:
    mesh, frames = _run(topology, CHURN, 14)
    s = DriftSchedule.build(CHURN, topology, 4)
    joiners, leavers = s.join_tick > 0, s.leave_tick < NEVER
    assert np.isnan(frames[0][joiners]).all() and not np.isnan(frames[0][~joiners]).any()
    last = frames[-1]
    assert np.isnan(last[leavers]).all()
    assert not np.isnan(last[joiners]).any()  # joined, and routing converged around them
    result = mesh.step()
    assert result.summary_dict()["nodes"] == topology.num_nodes - leavers.sum()
    # Absent nodes route nothing: no route of a member goes through them.
    _, tree = mesh.control.routing()
    assert not np.isin(tree.parent, np.flatnonzero(leavers)).any()
    assert (tree.hops[leavers] < 0).all()
    # Members lose a link for each neighbour that left.
    gone = np.flatnonzero(leavers)
    adjacency = topology.adjacency()
    neighbours = np.setdiff1d(adjacency[gone].indices, gone)
    before, after = frames[3][:, FEATURE_INDEX["links_up"]], last[:, FEATURE_INDEX["links_up"]]
    assert (after[neighbours] < before[neighbours]).any()


def test_a_joining_node_reports_only_once_routing_converged(topology) -> None:
    _, frames = _run(topology, CHURN, 12)
    s = DriftSchedule.build(CHURN, topology, 4)
    node = int(np.flatnonzero(s.join_tick > 0)[0])
    joined = int(s.join_tick[node])
    rows = [bool(np.isnan(frames[t][node]).all()) for t in range(12)]
    assert rows == [t < joined + 2 for t in range(12)]  # convergence_ticks = 2
    assert frames[joined + 2][node, FEATURE_INDEX["latency_mean_ms"]] < 3000.0  # it has a route


def test_a_shard_restored_from_a_checkpoint_continues_the_same_drift(topology, tmp_path) -> None:
    spec = {"checkpoint_dir": str(tmp_path), "checkpoint_every_ticks": 5}
    _, straight = _run(topology, FULL, 16)
    first, _ = _run(topology, FULL, 10, **spec)  # checkpoints after ticks 4 and 9
    for core in first.cores:
        core.flush()
    resumed = LocalMesh(topology, MeshSpec(topology=TOPO, seed=4, drift=FULL, **spec))
    assert [core.restored_tick for core in resumed.cores] == [9, 9, 9]
    resumed.control.load_state(copy.deepcopy(resumed.cores[0].control.state()))
    resumed._messages = [core.last_message for core in resumed.cores]
    again = [resumed.frame(resumed.step()).features for _ in range(6)]
    for a, b in zip(straight[10:], again, strict=True):
        assert np.array_equal(a, b, equal_nan=True)


def test_the_fault_schedule_never_picks_a_node_that_leaves_or_joins(topology) -> None:
    s = DriftSchedule.build(CHURN, topology, 4)
    faults = random_schedule(topology, 300, 4, faults_per_1000_ticks=200, exclude=s.churn)
    hit = {f.node for f in faults} | {f.peer for f in faults if f.peer is not None}
    assert faults and not hit & set(np.flatnonzero(s.churn).tolist())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"daily_amplitude": 1.5}, "less than 1"),
        ({"leave_share": 0.1}, "leave_ticks must be [first, last)"),
        ({"join_share": 0.1, "join_ticks": (0, 5)}, "join_ticks must be"),
        ({"leave_share": 0.3, "leave_ticks": (1, 2), "join_share": 0.3, "join_ticks": (1, 2)}, "exceed 0.5"),
        ({"daily_amplitdue": 0.5}, "Extra inputs are not permitted"),
    ],
)
def test_bad_drift_values_are_refused_with_a_clear_message(fields, message) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace(")", r"\)")):
        DriftConfig(**fields)
