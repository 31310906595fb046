"""Each fault moves the right features on the right nodes, and on the paths through them."""

import numpy as np
import pytest

from tests.unit.mesh.conftest import descendants, run_mesh
from x0tta6bl4.mesh.faults import FAULT_CODES, Fault

START = 10


def _fault(kind, node, peer=None, duration=25, severity=0.9):
    return Fault(0, kind, START, duration, node, peer, severity)


def _others(n, *groups):
    mask = np.ones(n, dtype=bool)
    for g in groups:
        mask[np.asarray(g, dtype=np.int64)] = False
    return mask


def test_fault_free_runs_are_seeded_and_reproducible(baseline):
    again = run_mesh([])
    assert all(np.array_equal(a, b) for a, b in zip(baseline.frames, again.frames, strict=True))
    assert all((lab == 0).all() for lab in baseline.labels)
    assert baseline.feature(20, "loss_ratio").max() < 0.05


def test_node_crash_takes_node_down_breaks_paths_then_routing_reconverges(topology, tree, baseline, relay):
    run = run_mesh([_fault("node_crash", relay)])
    desc = descendants(tree, relay)
    t = START + 1  # before routing reconverges
    assert run.feature(t, "cpu_util")[relay] == 0 and run.feature(t, "loss_ratio")[relay] == 1
    assert (run.feature(t, "loss_ratio")[desc] > 0.9).all()
    assert (run.feature(t, "tcp_resets_per_s")[desc] > baseline.feature(t, "tcp_resets_per_s")[desc]).all()
    neighbours = topology.adjacency()[relay].indices
    assert (run.feature(t, "links_up")[neighbours] == baseline.feature(t, "links_up")[neighbours] - 1).all()
    t_late = START + 6  # rerouted around the dead node
    assert np.median(run.feature(t_late, "loss_ratio")[desc]) < 0.1
    assert (
        run.labels[t][relay] == FAULT_CODES["node_crash"] and run.labels[t].sum() == FAULT_CODES["node_crash"]
    )


def test_link_degradation_hurts_the_link_and_the_paths_over_it(tree, baseline, relay):
    parent = int(tree.parent[relay])
    run = run_mesh([_fault("link_degradation", relay, parent)])
    t = START + 2
    affected = np.concatenate([[relay], descendants(tree, relay)])
    loss, base_loss = run.feature(t, "loss_ratio"), baseline.feature(t, "loss_ratio")
    lat, base_lat = run.feature(t, "latency_mean_ms"), baseline.feature(t, "latency_mean_ms")
    assert (loss[affected] > base_loss[affected] + 0.1).all()
    assert (lat[affected] > base_lat[affected] + 20).all()
    assert (
        run.feature(t, "tcp_retransmits_per_s")[relay]
        > 3 * baseline.feature(t, "tcp_retransmits_per_s")[relay]
    )
    untouched = _others(loss.size, affected, [parent])
    assert np.allclose(loss[untouched], base_loss[untouched], atol=0.02)
    assert run.labels[t][relay] == run.labels[t][parent] == FAULT_CODES["link_degradation"]


def test_congestion_fills_queues_on_the_path_to_the_gateway(tree, baseline, relay):
    run = run_mesh([_fault("congestion", relay)])
    t = START + 3
    queue, base_queue = run.feature(t, "queue_depth_pkts"), baseline.feature(t, "queue_depth_pkts")
    assert queue[relay] > 20 * max(base_queue[relay], 0.5)
    desc = descendants(tree, relay)
    lat, base_lat = run.feature(t, "latency_mean_ms"), baseline.feature(t, "latency_mean_ms")
    assert (lat[desc] > base_lat[desc] * 1.5).all()  # every path through the hot spot slows down
    assert run.feature(t, "packet_drops_per_s")[relay] > 10 * (
        baseline.feature(t, "packet_drops_per_s")[relay] + 1
    )
    assert run.feature(t, "rx_bytes_per_s")[relay] > 5 * baseline.feature(t, "rx_bytes_per_s")[relay]


def test_cpu_exhaustion_saturates_cpu_and_slows_forwarding(tree, baseline, relay):
    run = run_mesh([_fault("cpu_exhaustion", relay)])
    t = START + 3
    assert run.feature(t, "cpu_util")[relay] == pytest.approx(1.0)
    assert (
        run.feature(t, "runqueue_latency_p95_ms")[relay]
        > 20 * baseline.feature(t, "runqueue_latency_p95_ms")[relay]
    )
    desc = descendants(tree, relay)
    assert (run.feature(t, "latency_mean_ms")[desc] >= baseline.feature(t, "latency_mean_ms")[desc]).all()
    others = _others(run.frames[t].shape[0], [relay])
    assert np.allclose(run.feature(t, "cpu_util")[others], baseline.feature(t, "cpu_util")[others], atol=0.05)


def test_memory_leak_grows_gradually_then_the_node_thrashes(baseline, relay):
    run = run_mesh([_fault("memory_leak", relay, duration=30)], ticks=START + 30)
    mem = np.array([run.feature(t, "mem_util")[relay] for t in range(START, START + 29)])
    assert (np.diff(mem[:16:3]) > 0.02).all()  # creeping up tick by tick, not a step
    assert (np.diff(mem) < 0.1).all()
    assert mem[1] - baseline.feature(START + 1, "mem_util")[relay] < 0.1
    assert mem[-1] > 0.9
    late = START + 28
    assert run.feature(late, "cpu_util")[relay] > baseline.feature(late, "cpu_util")[relay] + 0.2


def test_blackhole_attracts_transit_and_drops_it_silently(topology, baseline, relay):
    run = run_mesh([_fault("blackhole", relay)])
    t = START + 4  # after its fake routes have propagated
    neighbours = topology.adjacency()[relay].indices
    loss = run.feature(t, "loss_ratio")
    assert (loss[neighbours] > 0.9).sum() >= 2  # neighbours now route into it and lose everything
    # Silent: its drop counter stays at the baseline while it receives far more than it sends.
    assert run.feature(t, "packet_drops_per_s")[relay] <= baseline.feature(t, "packet_drops_per_s")[relay] + 1
    assert run.feature(t, "rx_bytes_per_s")[relay] > 3 * run.feature(t, "tx_bytes_per_s")[relay]
    assert loss[relay] < 0.1  # its own traffic still flows


def test_faults_end_by_themselves_after_their_duration(baseline, relay):
    run = run_mesh([_fault("cpu_exhaustion", relay, duration=8)], ticks=30)
    status = run.control.faults[0]
    assert status.ended_tick == START + 8 and status.remediated_by is None
    assert run.labels[START + 9].sum() == 0
    assert run.feature(29, "cpu_util")[relay] == pytest.approx(
        baseline.feature(29, "cpu_util")[relay], abs=0.05
    )
