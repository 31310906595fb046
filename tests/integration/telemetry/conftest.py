"""Fixtures of the telemetry integration tests: veth-joined network namespaces (the eBPF gate is in tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest


def sh(*cmd: str) -> str:
    """Run a command, failing the test with its stderr when it fails."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


@dataclasses.dataclass(frozen=True)
class VethPair:
    """Two network namespaces joined by a veth pair: a (10.251.0.1) and b (10.251.0.2)."""

    ns_a: str
    ns_b: str
    dev_a: str
    dev_b: str
    ip_a: str = "10.251.0.1"
    ip_b: str = "10.251.0.2"

    def run(self, ns: str, *cmd: str) -> str:
        return sh("ip", "netns", "exec", ns, *cmd)

    def iperf(self, seconds: int, *client_args: str, port: int = 5201) -> dict[str, object]:
        """One iperf3 test from a to b; iperf3's JSON report."""
        server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns_b, "iperf3", "-s", "-1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 5
            while f":{port}" not in self.run(self.ns_b, "ss", "-Hltn", f"sport = :{port}"):
                if time.monotonic() > deadline:
                    raise AssertionError("iperf3 server did not start listening")
                time.sleep(0.05)
            report: dict[str, object] = json.loads(
                self.run(
                    self.ns_a,
                    "iperf3",
                    "-c",
                    self.ip_b,
                    "-p",
                    str(port),
                    "-t",
                    str(seconds),
                    "-J",
                    *client_args,
                )
            )
            server.wait(timeout=10)
            return report
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()


@pytest.fixture
def veth(ebpf_host: None) -> Iterator[VethPair]:
    """A fresh namespace pair with unique names, always torn down (processes, namespaces, veth)."""
    tag = uuid.uuid4().hex[:8]
    pair = VethPair(ns_a=f"x0t-{tag}-a", ns_b=f"x0t-{tag}-b", dev_a=f"x0a{tag}", dev_b=f"x0b{tag}")
    created: list[str] = []
    try:
        for ns in (pair.ns_a, pair.ns_b):
            sh("ip", "netns", "add", ns)
            created.append(ns)
        sh(
            "ip",
            "link",
            "add",
            pair.dev_a,
            "netns",
            pair.ns_a,
            "type",
            "veth",
            "peer",
            "name",
            pair.dev_b,
            "netns",
            pair.ns_b,
        )
        for ns, dev, ip in ((pair.ns_a, pair.dev_a, pair.ip_a), (pair.ns_b, pair.dev_b, pair.ip_b)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            # One MTU-sized packet per skb (no 64 KiB GSO aggregates), as on a physical link, so that
            # per-packet loss and queueing act on real packets.
            sh("ip", "-n", ns, "link", "set", dev, "up", "gso_max_segs", "1")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in created:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
