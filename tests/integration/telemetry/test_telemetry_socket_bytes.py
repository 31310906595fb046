"""net_bytes: socket payload bytes are counted for the host and attributed to the sender's cgroup."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from x0tta6bl4.telemetry.ebpf import EbpfPrograms, EbpfReading
from x0tta6bl4.telemetry.ebpf.collectors import _cgroup2_mount

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("ebpf_host")]

SENDS = 2000
CHUNK_BYTES = 1000

#: Joins its own cgroup (argv[1]), then sends SENDS chunks of CHUNK_BYTES to 127.0.0.1:argv[2].
SENDER = f"""
import socket, sys
with open(sys.argv[1] + "/cgroup.procs", "w") as f:
    f.write("0")  # "0": the writing process itself
with socket.create_connection(("127.0.0.1", int(sys.argv[2]))) as s:
    for _ in range({SENDS}):
        s.sendall(b"x" * {CHUNK_BYTES})
"""


@pytest.fixture(scope="module")
def programs(ebpf_host: None) -> Iterator[EbpfPrograms]:
    with EbpfPrograms.from_names(["net_bytes"]) as loaded:
        assert not loaded.errors, loaded.errors
        yield loaded


@pytest.fixture
def cgroup() -> Iterator[Path]:
    """A fresh cgroup v2 directory, removed after the test."""
    root = _cgroup2_mount()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy is mounted on this host")
    path = Path(root) / f"x0-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup under {root}: {exc.strerror}")
    try:
        # A process must be able to join it (a delegated or threaded hierarchy may refuse).
        joined = subprocess.run(["sh", "-c", f"echo 0 > {path}/cgroup.procs"], capture_output=True, text=True)
        if joined.returncode != 0:
            pytest.skip(f"cannot move a process into {path}: {joined.stderr.strip()}")
        yield path
    finally:
        path.rmdir()


def _receive_all(server: socket.socket, received: list[int]) -> None:
    conn, _ = server.accept()
    with conn:
        while chunk := conn.recv(65536):
            received.append(len(chunk))


def test_bytes_a_process_sends_are_counted_for_the_host_and_its_cgroup(
    programs: EbpfPrograms, cgroup: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        received: list[int] = []
        reader = threading.Thread(target=_receive_all, args=(server, received))
        reader.start()
        programs.reset()
        sender = subprocess.run(
            [sys.executable, "-c", SENDER, str(cgroup), str(server.getsockname()[1])],
            capture_output=True,
            text=True,
            timeout=60,
        )
        reader.join(timeout=60)
        reading: EbpfReading = programs.poll()
    assert sender.returncode == 0, sender.stderr
    total = SENDS * CHUNK_BYTES
    assert sum(received) == total

    # Host totals include everything else this host sent meanwhile, so they are at least ours.
    seconds = reading.interval_s
    assert reading.value("net_bytes", "socket_tx_bytes_per_s") * seconds >= total - 1e-3
    assert reading.value("net_bytes", "socket_rx_bytes_per_s") * seconds >= total - 1e-3
    assert reading.value("net_bytes", "socket_sends_per_s") * seconds >= SENDS - 1e-6
    # The sender was alone in its cgroup: exactly its payload, sent bytes only.
    root = _cgroup2_mount()
    assert root is not None
    key = "/" + os.path.relpath(cgroup, root)
    per_cgroup = reading.samples["net_bytes"].breakdown["cgroup_bytes_per_s"]
    assert per_cgroup.get(key, 0.0) * seconds == pytest.approx(total, rel=1e-6)
