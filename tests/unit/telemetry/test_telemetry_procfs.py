"""procfs parsing and the features ProcfsCollector derives: exact where measurable, NaN where not."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pytest

from x0tta6bl4.telemetry.frame import FEATURES
from x0tta6bl4.telemetry.procfs import (
    ProcfsCollector,
    ProcfsError,
    ProcfsSample,
    features_between,
    parse_cpu_times,
    parse_meminfo,
    parse_net_dev,
    parse_schedstat,
    parse_snmp,
)

SNMP = """Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors InDiscards OutDiscards OutNoRoutes
Ip: 2 64 1000 1 2 3 4 5
Tcp: RtoAlgorithm ActiveOpens EstabResets InSegs OutSegs RetransSegs OutRsts
Tcp: 1 10 2 500 1000 7 3
"""

NET_DEV = """Inter-|   Receive   |  Transmit
 face |bytes packets errs drop fifo frame compr multicast|bytes packets errs drop fifo colls carrier compr
    lo:  500 5 0 1 0 0 0 0  500 5 0 0 0 0 0 0
  eth0: 1000 10 0 2 0 0 0 0 2000 20 0 3 0 0 0 0
"""


def test_parse_snmp_pairs_header_and_value_lines() -> None:
    snmp = parse_snmp(SNMP)
    assert snmp["Tcp"]["RetransSegs"] == 7
    assert snmp["Ip"]["OutNoRoutes"] == 5


def test_parse_snmp_refuses_mismatched_lines() -> None:
    with pytest.raises(ValueError, match="names but"):
        parse_snmp("Tcp: A B\nTcp: 1\n")


def test_parse_net_dev_reads_every_interface() -> None:
    dev = parse_net_dev(NET_DEV)
    assert dev["eth0"]["tx_bytes"] == 2000
    assert dev["eth0"]["tx_drop"] == 3
    assert dev["lo"]["rx_drop"] == 1


def test_parse_cpu_times_counts_idle_and_iowait_as_not_busy() -> None:
    busy, total = parse_cpu_times("cpu  10 0 5 80 5 0 0 0 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n")
    assert (busy, total) == (15, 100)


def test_parse_schedstat_sums_run_delay_and_timeslices() -> None:
    text = (
        "version 15\ntimestamp 1\ncpu0 0 0 0 0 0 0 100 2000 10\ncpu1 0 0 0 0 0 0 100 3000 30\ndomain0 3 1 2\n"
    )
    assert parse_schedstat(text) == (5000, 40)


def test_the_running_kernels_files_parse() -> None:
    proc = Path("/proc")
    assert "RetransSegs" in parse_snmp((proc / "net/snmp").read_text())["Tcp"]
    assert "lo" in parse_net_dev((proc / "net/dev").read_text())
    assert parse_meminfo((proc / "meminfo").read_text())["MemTotal"] > 0
    busy, total = parse_cpu_times((proc / "stat").read_text())
    assert 0 <= busy <= total


def _sample(at: float, retrans: int, out_segs: int, eth_rx: int, drops: int) -> ProcfsSample:
    return ProcfsSample(
        at=at,
        snmp={
            "Tcp": {"RetransSegs": retrans, "OutSegs": out_segs, "OutRsts": 0, "EstabResets": 0},
            "Ip": {"InDiscards": drops},
        },
        net_dev={
            "eth0": {"rx_bytes": eth_rx, "tx_bytes": 0, "rx_drop": 0, "tx_drop": 0},
            "lo": {"rx_bytes": 10**9, "tx_bytes": 10**9, "rx_drop": 0, "tx_drop": 0},
        },
        cpu_busy=50,
        cpu_total=100,
        meminfo={"MemTotal": 1000, "MemAvailable": 250},
        schedstat=None,
        links_up=2,
    )


def test_features_between_are_exact_rates_over_the_interval() -> None:
    a = _sample(0.0, retrans=0, out_segs=0, eth_rx=0, drops=0)
    b = dataclasses.replace(
        _sample(2.0, retrans=50, out_segs=1000, eth_rx=4000, drops=6), cpu_busy=80, cpu_total=200
    )
    f = features_between(a, b)
    assert set(f) == set(FEATURES)
    assert f["tcp_retransmits_per_s"] == 25.0
    assert f["loss_ratio"] == pytest.approx(0.05)
    assert f["rx_bytes_per_s"] == 2000.0  # loopback bytes are not link traffic
    assert f["packet_drops_per_s"] == 3.0
    assert f["cpu_util"] == pytest.approx(0.3)
    assert f["mem_util"] == pytest.approx(0.75)
    assert f["links_up"] == 2.0


def test_what_procfs_cannot_measure_is_nan() -> None:
    f = features_between(_sample(0.0, 0, 0, 0, 0), _sample(1.0, 0, 0, 0, 0))
    for name in ("latency_mean_ms", "latency_p95_ms", "runqueue_latency_p95_ms", "queue_depth_pkts"):
        assert math.isnan(f[name]), name
    assert math.isnan(f["loss_ratio"])  # nothing sent: loss unknown, not zero


def test_collector_on_the_live_host_fills_every_measurable_feature() -> None:
    collector = ProcfsCollector()
    time.sleep(0.1)  # CPU time advances in clock ticks (10 ms at HZ=100)
    f = collector.poll()
    assert 0.0 <= f["cpu_util"] <= 1.0
    assert 0.0 < f["mem_util"] < 1.0
    assert f["tcp_retransmits_per_s"] >= 0.0
    assert math.isnan(f["latency_p95_ms"])


def test_a_missing_proc_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ProcfsError, match=r"net/snmp"):
        ProcfsCollector(proc=tmp_path)
