"""Suite `ebpf`: cost of the tracepoint programs on loopback TCP, event rate they sustain, events lost."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from x0tta6bl4.bench._report import result
from x0tta6bl4.connect import free_local_port
from x0tta6bl4.errors import X0tta6bl4Error
from x0tta6bl4.telemetry.ebpf import EbpfPrograms, bpf_stats
from x0tta6bl4.telemetry.source import ebpf_blockers

#: Workloads: iperf3 write size in bytes (None: iperf3's default 128 KiB writes).
WORKLOADS: dict[str, int | None] = {"bulk": None, "small_writes": 128}


class BenchUnavailableError(X0tta6bl4Error):
    """The suite cannot run on this host (eBPF blocked, iperf3 missing)."""


def _log(msg: str) -> None:
    sys.stderr.write(f"[bench ebpf] {msg}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def _iperf3_server(port: int) -> Iterator[None]:
    """An iperf3 server on 127.0.0.1:port for the duration of the block."""
    proc = subprocess.Popen(
        ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise BenchUnavailableError(f"iperf3 server did not listen on 127.0.0.1:{port}")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _iperf3_run(port: int, seconds: int, length: int | None) -> float:
    """One client run; received throughput in bytes per second."""
    cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]
    if length is not None:
        cmd += ["-l", str(length)]
    for attempt in range(3):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
        doc = json.loads(out.stdout or "{}")
        if "error" not in doc and out.returncode == 0:
            return float(doc["end"]["sum_received"]["bits_per_second"]) / 8.0
        # The server refuses a client while it finishes the previous test ("busy"); retry.
        time.sleep(0.2 * (attempt + 1))
    raise BenchUnavailableError(f"iperf3 client failed: {doc.get('error', out.stderr.strip())}")


def _compare(
    programs: EbpfPrograms, port: int, workload: str, length: int | None, rounds: int, seconds: int
) -> tuple[list[dict[str, Any]], Counter[str], Counter[str]]:
    """Throughput with vs without the programs attached for one workload; rows, events lost per program
    and, of those, the ones the kernel skipped (per-program miss counters)."""
    with_bps: list[float] = []
    without_bps: list[float] = []
    events = 0
    lost: Counter[str] = Counter()
    missed: Counter[str] = Counter()
    traced_s = 0.0
    for r in range(rounds):
        for attached in (True, False) if r % 2 == 0 else (False, True):
            if not attached:
                without_bps.append(_iperf3_run(port, seconds, length))
                continue
            programs.attach()
            programs.reset()
            with_bps.append(_iperf3_run(port, seconds, length))
            reading = programs.poll()
            programs.detach()
            events += reading.events
            lost.update({name: sample.lost for name, sample in reading.samples.items()})
            missed.update({name: sample.missed for name, sample in reading.samples.items()})
            traced_s += reading.interval_s
        _log(
            f"{workload} round {r + 1}/{rounds}: with {with_bps[-1] / 1e6:.1f} MB/s, "
            f"without {without_bps[-1] / 1e6:.1f} MB/s"
        )
    params = {
        "workload": workload,
        "write_bytes": length or 131072,
        "rounds": rounds,
        "seconds_per_run": seconds,
        "programs": sorted(programs.loaded),
    }
    ratio = statistics.median(w / wo for w, wo in zip(with_bps, without_bps, strict=True))
    rows = [
        result(
            "loopback_throughput_ratio", ratio, "with/without", params=params, target=("value", ">=", 0.97)
        ),
        result(
            "loopback_throughput_bytes_per_s",
            statistics.median(with_bps),
            "B/s",
            params={**params, "probes": "attached"},
            baseline=("loopback_throughput_without_probes_bytes_per_s", statistics.median(without_bps)),
        ),
        result(
            "traced_events_per_s",
            events / traced_s if traced_s else 0.0,
            "events/s",
            params=params,
            # The syscall-heavy workload is the one built to drive the event rate.
            target=("value", ">=", 100000.0) if length is not None else None,
        ),
    ]
    return rows, lost, missed


def _probe_costs(programs: EbpfPrograms, port: int, seconds: int) -> list[dict[str, Any]]:
    """Kernel-timed run time of each program per event, under the syscall-heavy workload.

    A separate run: the kernel's timing itself costs two clock reads per program run,
    which must not weigh on the throughput comparison.
    """
    with bpf_stats():
        programs.attach()
        before = {name: p.run_stats() for name, p in programs.loaded.items()}
        _iperf3_run(port, seconds, WORKLOADS["small_writes"])
        after = {name: p.run_stats() for name, p in programs.loaded.items()}
        programs.detach()
    rows = []
    for name in sorted(programs.loaded):
        runs = after[name][1] - before[name][1]
        ns = after[name][0] - before[name][0]
        rows.append(
            result(
                "probe_run_ns_per_event",
                ns / runs if runs else 0.0,
                "ns/event",
                params={"program": name, "workload": "small_writes", "events": runs},
            )
        )
    return rows


def results(quick: bool) -> list[dict[str, Any]]:
    """Loopback TCP throughput with vs without the programs, event rate traced, events lost, cost per event.

    Each round runs a workload once with the programs attached and once without,
    alternating which goes first; the ratio reported is the median of the rounds'
    with/without ratios, which cancels slow drifts of the machine's load.
    """
    blockers = ebpf_blockers()
    if blockers:
        raise BenchUnavailableError(
            "eBPF cannot load here: " + "; ".join(f"{b.reason} (fix: {b.fix})" for b in blockers)
        )
    if shutil.which("iperf3") is None:
        raise BenchUnavailableError("iperf3 is not installed (fix: apt-get install -y iperf3)")
    rounds, seconds = (2, 1) if quick else (6, 3)
    programs = EbpfPrograms.from_names(None, attach=False)
    if programs.errors:
        _log("programs not loaded: " + "; ".join(str(e) for e in programs.errors.values()))
    loaded = sorted(programs.loaded)
    rows: list[dict[str, Any]] = []
    total_lost: Counter[str] = Counter()
    total_missed: Counter[str] = Counter()
    try:
        port = free_local_port()
        with _iperf3_server(port):
            for workload, length in WORKLOADS.items():
                workload_rows, lost, missed = _compare(programs, port, workload, length, rounds, seconds)
                rows += workload_rows
                total_lost.update(lost)
                total_missed.update(missed)
            rows += _probe_costs(programs, port, seconds)
    finally:
        programs.close()
    rows.append(
        result(
            "lost_events",
            float(total_lost.total()),
            "events",
            # Map-full drops, and events the kernel skipped (its per-program miss counters) because a
            # BPF program was running on that CPU (an interrupt arriving while a handler ran), per program.
            params={
                "programs": loaded,
                "by_program": {n: total_lost[n] for n in loaded},
                "kernel_missed_by_program": {n: total_missed[n] for n in loaded},
                "map_full_by_program": {n: total_lost[n] - total_missed[n] for n in loaded},
            },
            target=("value", "<=", 0.0),
        )
    )
    return rows
