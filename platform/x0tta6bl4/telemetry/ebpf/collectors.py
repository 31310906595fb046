"""Per-program collectors, and the registry of shipped programs they form: each turns its maps into rates."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from x0tta6bl4.telemetry._histogram import counter_delta, percentile
from x0tta6bl4.telemetry.ebpf.loader import LoadedProgram
from x0tta6bl4.telemetry.ebpf.maps import U64Array, read_u64_array, read_u64_map
from x0tta6bl4.telemetry.ebpf.tracefs import symbolic_values

#: TCP states of include/net/tcp_states.h (stable since Linux 2.x).
TCP_STATES: dict[int, str] = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}


#: The collector class of each shipped program, in load order: the order the classes below are defined in.
#: Every :class:`ProgramCollector` subclass that names its ``program`` registers itself here.
COLLECTORS: dict[str, type[ProgramCollector]] = {}


@dataclasses.dataclass(frozen=True)
class ProgramSample:
    """What one program measured over one interval.

    ``values`` are scalars (rates per second, milliseconds; NaN when nothing was
    measured), ``breakdown`` maps a name (e.g. ``drop_reasons``) to per-key rates.
    ``lost`` counts events the program could not record (a full map) plus events the
    kernel never handed to it (``missed``: the kernel's per-program miss counter, a BPF
    program, this one for raw tracepoints, any tracing one for classic ones, already
    running on that CPU).
    """

    program: str
    interval_s: float
    events: int
    lost: int
    values: dict[str, float]
    breakdown: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    missed: int = 0

    @property
    def map_full(self) -> int:
        """Lost events the program itself counted (a map was full)."""
        return self.lost - self.missed


class ProgramCollector:
    """Reads one loaded program's maps each interval and converts them to a :class:`ProgramSample`.

    Array maps only grow in the kernel; the collector keeps the previous read and
    reports deltas, so no event is lost between a read and a clear. Hash maps that
    would otherwise fill up are drained with lookup-and-delete.

    A subclass that sets ``program`` registers itself as that program's collector (see
    :data:`COLLECTORS`), so a shipped program is its ``bpf/<program>.c`` and one subclass here.
    """

    #: The program this collector reads, ``bpf/<program>.c``; empty for the generic collector.
    program: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Register a subclass that names its own ``program``; two collectors for one program are refused."""
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("program", "")
        if name:
            if name in COLLECTORS:
                raise TypeError(
                    f"eBPF program {name!r} already has a collector: {COLLECTORS[name].__qualname__}"
                )
            COLLECTORS[name] = cls

    def __init__(self, loaded: LoadedProgram) -> None:
        self.loaded = loaded
        self._previous: dict[str, U64Array] = {}
        self._misses = 0
        self.prime()

    def prime(self) -> None:
        """Take the baseline the first interval is measured against."""
        self._misses = self.loaded.recursion_misses()
        self._delta("x0_stats")
        for name in self.arrays():
            self._delta(name)
        for name in self.drained_hashes():
            if self.loaded.has_table(name):
                read_u64_map(self.loaded.table(name), drain=True)

    def arrays(self) -> tuple[str, ...]:
        """Cumulative array maps this collector reads."""
        return ()

    def drained_hashes(self) -> tuple[str, ...]:
        """Hash maps this collector drains every interval."""
        return ()

    def _delta(self, name: str) -> U64Array:
        current = read_u64_array(self.loaded.table(name))
        previous = self._previous.get(name)
        self._previous[name] = current
        if previous is None:
            return np.zeros_like(current)
        return counter_delta(current, previous)

    def read(self, interval_s: float) -> ProgramSample:
        """The interval's sample; ``interval_s`` is the time since the previous read."""
        stats = self._delta("x0_stats")[:, 0]
        misses, self._misses = self._misses, self.loaded.recursion_misses()
        missed = max(self._misses - misses, 0)
        values: dict[str, float] = {}
        breakdown: dict[str, dict[str, float]] = {}
        self.collect(max(interval_s, 1e-9), values, breakdown)
        return ProgramSample(
            self.loaded.name, interval_s, int(stats[0]), int(stats[1]) + missed, values, breakdown, missed
        )

    def collect(self, dt: float, values: dict[str, float], breakdown: dict[str, dict[str, float]]) -> None:
        """Fill ``values`` and ``breakdown`` for the interval (programs without a collector report none)."""


def _hist_values(prefix: str, hist: U64Array, total_us: int, samples: int, values: dict[str, float]) -> None:
    """Mean (exact, from the kernel's sum) and p50/p95/p99 (from the log2 histogram), in milliseconds."""
    values[f"{prefix}_mean_ms"] = total_us / samples / 1000.0 if samples else math.nan
    for q, tag in ((0.50, "p50"), (0.95, "p95"), (0.99, "p99")):
        values[f"{prefix}_{tag}_ms"] = percentile(hist, q) / 1000.0


class TcpRetransmitCollector(ProgramCollector):
    """Retransmits per second, by TCP state; SYN-ACK retransmits; failed retransmit attempts."""

    program = "tcp_retransmit"

    def arrays(self) -> tuple[str, ...]:
        return ("retransmits",)

    def collect(self, dt: float, values: dict[str, float], breakdown: dict[str, dict[str, float]]) -> None:
        d = self._delta("retransmits")[:, 0]
        values["tcp_retransmits_per_s"] = float(d[:16].sum()) / dt
        values["tcp_synack_retransmits_per_s"] = float(d[16]) / dt
        values["tcp_failed_retransmits_per_s"] = float(d[17]) / dt
        breakdown["retransmits_by_state"] = {
            TCP_STATES.get(i, str(i)): float(d[i]) / dt for i in range(16) if d[i]
        }


class TcpStateCollector(ProgramCollector):
    """TCP state transitions, connections opened/closed and resets sent/received (by reason) per second."""

    program = "tcp_state"

    def __init__(self, loaded: LoadedProgram) -> None:
        fmt = loaded.formats.get("tcp:tcp_send_reset")
        self.reset_reasons = symbolic_values(fmt.print_fmt, "reason") if fmt else {}
        super().__init__(loaded)

    def arrays(self) -> tuple[str, ...]:
        return ("transitions", "resets", "reset_reasons")

    def collect(self, dt: float, values: dict[str, float], breakdown: dict[str, dict[str, float]]) -> None:
        t = self._delta("transitions")[:, 0].reshape(16, 16)
        r = self._delta("resets")[:, 0]
        reasons = self._delta("reset_reasons")[:, 0]
        values["tcp_resets_sent_per_s"] = float(r[0]) / dt
        values["tcp_resets_received_per_s"] = float(r[1]) / dt
        values["tcp_resets_per_s"] = float(r.sum()) / dt
        values["tcp_established_per_s"] = float(t[:, 1].sum()) / dt
        values["tcp_closed_per_s"] = float(t[:, 7].sum()) / dt
        breakdown["tcp_transitions"] = {
            f"{TCP_STATES.get(int(o), str(o))}->{TCP_STATES.get(int(n), str(n))}": float(t[o, n]) / dt
            for o, n in zip(*np.nonzero(t), strict=True)
        }
        breakdown["reset_reasons"] = {
            (self.reset_reasons.get(int(i), f"reason_{i}") if i < 63 else "reason_>=63"): float(reasons[i])
            / dt
            for i in np.nonzero(reasons)[0]
        }


class TcpRttCollector(ProgramCollector):
    """Smoothed RTT of TCP connections: mean and percentiles in ms, sampled connections."""

    program = "tcp_rtt"

    def arrays(self) -> tuple[str, ...]:
        return ("srtt_hist", "srtt_total")

    def drained_hashes(self) -> tuple[str, ...]:
        return ("by_conn",)

    def collect(self, dt: float, values: dict[str, float], breakdown: dict[str, dict[str, float]]) -> None:
        hist = self._delta("srtt_hist")[:, 0]
        total = self._delta("srtt_total")[:, 0]
        _hist_values("rtt", hist, int(total[0]), int(total[1]), values)
        values["rtt_samples_per_s"] = float(total[1]) / dt
        if self.loaded.has_table("by_conn"):
            _, conns = read_u64_map(self.loaded.table("by_conn"), drain=True)
            means = conns[:, 0] / np.maximum(conns[:, 1], 1) / 1000.0
            values["rtt_connections"] = float(len(conns))
            values["rtt_worst_connection_ms"] = float(means.max()) if len(conns) else math.nan


class SkbDropsCollector(ProgramCollector):
    """Packets dropped per second, in total and per drop reason named by the running kernel."""

    program = "skb_drops"

    def __init__(self, loaded: LoadedProgram) -> None:
        fmt = loaded.formats.get("skb:kfree_skb")
        self.reasons = symbolic_values(fmt.print_fmt, "reason") if fmt else {}
        super().__init__(loaded)

    def arrays(self) -> tuple[str, ...]:
        return ("drops",)

    def collect(self, dt: float, values: dict[str, float], breakdown: dict[str, dict[str, float]]) -> None:
        d = self._delta("drops")[:, 0]
        values["packet_drops_per_s"] = float(d.sum()) / dt
        breakdown["drop_reasons"] = {
            (self.reasons.get(int(i), f"reason_{i}") if i < 255 else "reason_>=255"): float(d[i]) / dt
            for i in np.nonzero(d)[0]
        }


class RunqlatCollector(ProgramCollector):
    """Run-queue latency: mean and percentiles in ms, wakeups measured per second."""

    program = "runqlat"

    def arrays(self) -> tuple[str, ...]:
        return ("runq_hist", "runq_total")

    def collect(self, dt: float, values: dict[str, float], breakdown: dict[str, dict[str, float]]) -> None:
        hist = self._delta("runq_hist")[:, 0]
        total = self._delta("runq_total")[:, 0]
        _hist_values("runqueue_latency", hist, int(total[0]), int(total[1]), values)
        values["runqueue_waits_per_s"] = float(total[1]) / dt


def _cgroup2_mount() -> Path | None:
    """Mount point of the unified (v2) cgroup hierarchy, whose ids bpf_get_current_cgroup_id() returns."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    return None


class NetBytesCollector(ProgramCollector):
    """Socket payload bytes per second (IPv4/IPv6) for the host and per cgroup."""

    program = "net_bytes"

    def __init__(self, loaded: LoadedProgram) -> None:
        self._cgroup_paths: dict[int, str] = {}
        super().__init__(loaded)

    def arrays(self) -> tuple[str, ...]:
        return ("totals",)

    def drained_hashes(self) -> tuple[str, ...]:
        return ("by_cgroup",)

    def _cgroup_path(self, cgroup_id: int) -> str:
        """The cgroup v2 path of an id (cgroup v2 ids are the inode numbers of its directories)."""
        if cgroup_id not in self._cgroup_paths:
            self._cgroup_paths = {}
            root = _cgroup2_mount()
            if root is not None:
                for dirpath, _, _ in os.walk(root):
                    with contextlib.suppress(OSError):
                        rel = os.path.relpath(dirpath, root)
                        self._cgroup_paths[os.stat(dirpath).st_ino] = "/" if rel == "." else "/" + rel
        return self._cgroup_paths.get(cgroup_id, f"cgroup#{cgroup_id}")

    def collect(self, dt: float, values: dict[str, float], breakdown: dict[str, dict[str, float]]) -> None:
        t = self._delta("totals")[0]
        values["socket_tx_bytes_per_s"] = float(t[0]) / dt
        values["socket_rx_bytes_per_s"] = float(t[1]) / dt
        values["socket_sends_per_s"] = float(t[2]) / dt
        values["socket_recvs_per_s"] = float(t[3]) / dt
        keys, per_cg = read_u64_map(self.loaded.table("by_cgroup"), drain=True)
        order = np.argsort(-(per_cg[:, 0] + per_cg[:, 1]).astype(np.float64))[:10]
        breakdown["cgroup_bytes_per_s"] = {
            self._cgroup_path(int(keys[i])): float(per_cg[i, 0] + per_cg[i, 1]) / dt for i in order
        }


#: The programs x0tta6bl4 ships, in load order; each is bpf/<name>.c and the collector above that names it.
PROGRAMS: tuple[str, ...] = tuple(COLLECTORS)
