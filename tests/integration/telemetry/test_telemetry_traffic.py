"""Real traffic across namespaces: eBPF sees injected loss, netfilter drops, resets and a bottleneck's RTT."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from x0tta6bl4.telemetry.ebpf import EbpfPrograms, EbpfReading

if TYPE_CHECKING:  # for type checkers only: pytest itself loads conftest.py
    from conftest import VethPair

# serial: the kernel's TCP retransmits are counted host-wide, so a parallel test's traffic on a
# loaded machine swamps the control run's count.
pytestmark = [pytest.mark.root, pytest.mark.serial, pytest.mark.usefixtures("ebpf_host")]


@pytest.fixture(scope="module")
def programs(ebpf_host: None) -> Iterator[EbpfPrograms]:
    with EbpfPrograms.from_names(["tcp_retransmit", "tcp_state", "tcp_rtt", "skb_drops"]) as loaded:
        assert not loaded.errors, loaded.errors
        yield loaded


def measure(programs: EbpfPrograms, action: Callable[[], object]) -> EbpfReading:
    """What the programs counted while ``action`` ran."""
    programs.reset()
    action()
    return programs.poll()


def count(reading: EbpfReading, program: str, key: str) -> float:
    return reading.value(program, key) * reading.interval_s


def breakdown_count(reading: EbpfReading, program: str, table: str, key: str) -> float:
    return reading.samples[program].breakdown[table].get(key, 0.0) * reading.interval_s


def test_random_loss_raises_retransmits_and_records_netfilter_drops(
    programs: EbpfPrograms, veth: VethPair
) -> None:
    def traffic() -> object:
        return veth.iperf(2, "-b", "40M")  # paced, so the control run has no congestion losses

    rule = [
        "INPUT",
        "-i",
        veth.dev_b,
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.05",
        "-j",
        "DROP",
    ]
    control = measure(programs, traffic)
    veth.run(veth.ns_b, "iptables", "-A", *rule)
    lossy = measure(programs, traffic)
    listing = veth.run(veth.ns_b, "iptables", "-L", "INPUT", "-v", "-x", "-n")
    rule_drops = int(re.search(r"^\s*(\d+)\s+\d+\s+DROP", listing, re.M).group(1))  # type: ignore[union-attr]
    veth.run(veth.ns_b, "iptables", "-D", *rule)
    # Retransmits are counted host-wide: a second control run, after the lossy one, and the quieter
    # of the two, so another process's burst during one control run does not hide the loss.
    control_after = measure(programs, traffic)
    if count(control_after, "tcp_retransmit", "tcp_retransmits_per_s") < count(
        control, "tcp_retransmit", "tcp_retransmits_per_s"
    ):
        control = control_after

    retrans_control = count(control, "tcp_retransmit", "tcp_retransmits_per_s")
    retrans_lossy = count(lossy, "tcp_retransmit", "tcp_retransmits_per_s")
    assert retrans_lossy >= 20
    assert retrans_lossy > 5 * retrans_control + 5

    nf_control = breakdown_count(control, "skb_drops", "drop_reasons", "NETFILTER_DROP")
    nf_lossy = breakdown_count(lossy, "skb_drops", "drop_reasons", "NETFILTER_DROP")
    assert rule_drops >= 20
    # Every packet the rule dropped reached kfree_skb as NETFILTER_DROP (bar stragglers after the poll).
    assert 0.9 * rule_drops <= nf_lossy <= rule_drops + nf_control + 5
    assert count(lossy, "skb_drops", "packet_drops_per_s") >= nf_lossy - 1e-6


def test_tbf_bottleneck_moves_the_rtt_histogram(programs: EbpfPrograms, veth: VethPair) -> None:
    control = measure(programs, lambda: veth.iperf(2))
    veth.run(
        veth.ns_a,
        "tc",
        "qdisc",
        "add",
        "dev",
        veth.dev_a,
        "root",
        "tbf",
        "rate",
        "20mbit",
        "burst",
        "32kbit",
        "latency",
        "100ms",
    )
    shaped = measure(programs, lambda: veth.iperf(2))

    p95_control = control.value("tcp_rtt", "rtt_p95_ms")
    p95_shaped = shaped.value("tcp_rtt", "rtt_p95_ms")
    assert p95_shaped > 10.0  # a standing queue behind a 20 Mbit/s, 100 ms tbf
    assert p95_shaped > 10 * p95_control
    assert shaped.value("tcp_rtt", "rtt_mean_ms") > control.value("tcp_rtt", "rtt_mean_ms")


def test_connections_to_a_closed_port_count_resets_and_their_reasons(
    programs: EbpfPrograms, veth: VethPair
) -> None:
    attempts = 20
    script = f"for i in $(seq {attempts}); do (exec 3<>/dev/tcp/{veth.ip_b}/9) 2>/dev/null; done; true"
    reading = measure(programs, lambda: veth.run(veth.ns_a, "bash", "-c", script))

    assert count(reading, "tcp_state", "tcp_resets_sent_per_s") >= attempts - 1e-6
    assert count(reading, "tcp_state", "tcp_resets_received_per_s") >= attempts - 1e-6
    assert breakdown_count(reading, "tcp_state", "reset_reasons", "NO_SOCKET") >= attempts - 1e-6
    assert breakdown_count(reading, "skb_drops", "drop_reasons", "NO_SOCKET") >= attempts - 1e-6
    refused = breakdown_count(reading, "tcp_state", "tcp_transitions", "SYN_SENT->CLOSE")
    assert refused >= attempts - 1e-6
