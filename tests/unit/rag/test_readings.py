"""Query expansion: telemetry values read out in the runbooks' words, in linear time."""

import time

import pytest

from x0tta6bl4.rag.readings import expand_query, telemetry_readings


@pytest.mark.parametrize(
    ("text", "readings"),
    [
        ("n=29 cpu_util=1.00 runqueue_latency_p95_ms=185", ["CPU pinned at 1.0"]),
        ("telemetry agent at 100% cpu", ["CPU pinned at 1.0"]),
        ("the CPU is at 60%", []),
        ("Memory is at 95%, the box is swapping", ["memory near full, swapping"]),
        ("mem 0.44 -> 0.81 over 35 ticks", []),
        ("mem_util 0.52→0.90 in 33 ticks", ["memory near full, swapping"]),
        (
            "loss_ratio 1.00, latency_mean_ms 3000",
            ["loss 1.0, everything lost", "latency at the 3000 ms timeout"],
        ),
        ("loss 0.18-0.27 on 11 nodes", ["partial packet loss"]),
        ("ALERT latency=3000ms on 9 nodes", ["latency at the 3000 ms timeout"]),
        ("relay queue 100/100", ["queue full"]),
        ("queue_depth_pkts 85→100 in 1 tick", ["queue full"]),
        ("queue 2, cpu 0.2", []),
        ("ingress = n=641 rx x8", ["a multiple of normal"]),
        ("rx 19x baseline, tx 1.0x baseline", ["a multiple of normal"]),
        ("node 42 crashed, 9 downstream nodes lost path", []),
    ],
)
def test_telemetry_values_are_read_out(text, readings):
    assert telemetry_readings(text) == readings


def test_expansion_appends_readings_once_and_leaves_plain_text_alone():
    assert expand_query("node 7 went dark") == "node 7 went dark"
    assert expand_query("cpu 1.0 and later cpu 0.99") == "cpu 1.0 and later cpu 0.99 (CPU pinned at 1.0)"


@pytest.mark.parametrize(
    "text", ["cpu " * 1000, "cpu" + " " * 4000 + "x", "1" * 4000, "mem=" * 1000, "x 9" * 1300]
)
def test_hostile_queries_are_read_in_linear_time(text):
    started = time.perf_counter()
    telemetry_readings(text)
    assert time.perf_counter() - started < 0.5
