"""ProcfsCollector: the host features /proc and /sys can measure (the fallback when eBPF cannot load)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from x0tta6bl4.telemetry.frame import FEATURES

IFF_UP = 0x1
T = TypeVar("T")

#: Counters summed into packet_drops_per_s: interface drops plus IPv4 discards and errors.
IP_DROP_COUNTERS = ("InDiscards", "OutDiscards", "InHdrErrors", "InAddrErrors", "OutNoRoutes")


class ProcfsError(OSError):
    """A /proc or /sys file is missing or does not parse; names the file."""


# -------------------------------------------------------------------------------------------- parsers


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp and /proc/net/netstat: pairs of ``Proto: names`` / ``Proto: values`` lines."""
    out: dict[str, dict[str, int]] = {}
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        proto, _, names = header.partition(":")
        vproto, _, nums = values.partition(":")
        if proto != vproto:
            raise ValueError(f"header {proto!r} followed by values of {vproto!r}")
        keys, vals = names.split(), nums.split()
        if len(keys) != len(vals):
            raise ValueError(f"{proto}: {len(keys)} names but {len(vals)} values")
        out.setdefault(proto, {}).update({k: int(v) for k, v in zip(keys, vals, strict=True)})
    return out


#: Column names of /proc/net/dev after the interface name.
NET_DEV_COLUMNS = (
    "rx_bytes",
    "rx_packets",
    "rx_errs",
    "rx_drop",
    "rx_fifo",
    "rx_frame",
    "rx_compressed",
    "rx_multicast",
    "tx_bytes",
    "tx_packets",
    "tx_errs",
    "tx_drop",
    "tx_fifo",
    "tx_colls",
    "tx_carrier",
    "tx_compressed",
)


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/dev: per-interface byte, packet, error and drop counters."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines()[2:]:
        if ":" not in line:
            continue
        name, _, rest = line.partition(":")
        nums = rest.split()
        if len(nums) != len(NET_DEV_COLUMNS):
            raise ValueError(
                f"interface {name.strip()!r}: {len(nums)} columns, expected {len(NET_DEV_COLUMNS)}"
            )
        out[name.strip()] = {k: int(v) for k, v in zip(NET_DEV_COLUMNS, nums, strict=True)}
    return out


def parse_cpu_times(text: str) -> tuple[int, int]:
    """/proc/stat aggregate ``cpu`` line: ``(busy, total)`` jiffies; idle and iowait are not busy."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:]]
            # user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is in user.
            total = sum(v[:8])
            return total - v[3] - v[4], total
    raise ValueError("no aggregate 'cpu' line")


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo in kB."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key.strip()] = int(parts[0])
    return out


def parse_schedstat(text: str) -> tuple[int, int]:
    """/proc/schedstat: ``(run_delay_ns, timeslices)`` summed over CPUs (fields 8 and 9 of each cpu line)."""
    delay = slices = 0
    seen = False
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0].startswith("cpu") and len(parts) >= 10:
            delay += int(parts[8])
            slices += int(parts[9])
            seen = True
    if not seen:
        raise ValueError("no cpu lines")
    return delay, slices


# -------------------------------------------------------------------------------------------- sampling


@dataclasses.dataclass(frozen=True)
class ProcfsSample:
    """Raw cumulative counters and gauges at one instant."""

    at: float
    snmp: dict[str, dict[str, int]]
    net_dev: dict[str, dict[str, int]]
    cpu_busy: int
    cpu_total: int
    meminfo: dict[str, int]
    schedstat: tuple[int, int] | None
    links_up: int


class ProcfsCollector:
    """Host features from /proc/net/{snmp,netstat,dev}, /proc/{stat,meminfo,schedstat} and /sys/class/net.

    Rates cover the time since the previous :meth:`poll` (the first since construction).
    What these files cannot measure (RTT, run-queue latency percentiles, queue depth)
    is NaN, never estimated.

    Args:
        proc: procfs root; a container reading its host mounts the host's /proc elsewhere.
        sys: sysfs root, for interface state.
    """

    def __init__(self, proc: str | Path = "/proc", sys: str | Path = "/sys") -> None:
        self.proc = Path(proc)
        self.sys = Path(sys)
        self._previous = self.sample()
        #: what the last poll measured beyond the frame's features
        self.extra: dict[str, float] = {}

    def _read(self, rel: str) -> str:
        path = self.proc / rel
        try:
            return path.read_text()
        except OSError as exc:
            raise ProcfsError(exc.errno, f"cannot read {path}: {exc.strerror}") from exc

    def _parse(self, rel: str, parser: Callable[[str], T]) -> T:
        text = self._read(rel)
        try:
            return parser(text)
        except (ValueError, IndexError) as exc:
            raise ProcfsError(f"cannot parse {self.proc / rel}: {exc}") from exc

    def _links_up(self, interfaces: list[str]) -> int:
        """Interfaces other than loopback that are administratively up and have an operational link."""
        up = 0
        for name in interfaces:
            base = self.sys / "class" / "net" / name
            try:
                flags = int((base / "flags").read_text(), 16)
                oper = (base / "operstate").read_text().strip()
            except (OSError, ValueError):
                continue
            if name != "lo" and flags & IFF_UP and oper in ("up", "unknown"):
                up += 1
        return up

    def sample(self) -> ProcfsSample:
        """Read every file once; ProcfsError names a file that is missing or malformed."""
        snmp = self._parse("net/snmp", parse_snmp)
        if (self.proc / "net" / "netstat").exists():
            for proto, counters in self._parse("net/netstat", parse_snmp).items():
                snmp.setdefault(proto, {}).update(counters)
        net_dev = self._parse("net/dev", parse_net_dev)
        busy, total = self._parse("stat", parse_cpu_times)
        meminfo = self._parse("meminfo", parse_meminfo)
        schedstat: tuple[int, int] | None = None
        if (self.proc / "schedstat").exists():
            schedstat = self._parse("schedstat", parse_schedstat)
        return ProcfsSample(
            at=time.monotonic(),
            snmp=snmp,
            net_dev=net_dev,
            cpu_busy=busy,
            cpu_total=total,
            meminfo=meminfo,
            schedstat=schedstat,
            links_up=self._links_up(sorted(net_dev)),
        )

    def poll(self) -> dict[str, float]:
        """Every feature of :data:`FEATURES` over the interval since the previous poll (NaN: unmeasurable)."""
        current = self.sample()
        features = features_between(self._previous, current)
        self.extra = extra_between(self._previous, current)
        self._previous = current
        return features


def _counter(sample: ProcfsSample, proto: str, name: str) -> int:
    return sample.snmp.get(proto, {}).get(name, 0)


def _grow(a: int, b: int) -> float:
    """Growth of a counter; a counter that went backwards (reset) counts from zero."""
    return float(b - a if b >= a else b)


def features_between(a: ProcfsSample, b: ProcfsSample) -> dict[str, float]:
    """The frame features measured between two samples; see :class:`ProcfsCollector`."""
    dt = max(b.at - a.at, 1e-9)
    out = dict.fromkeys(FEATURES, math.nan)

    d_total = b.cpu_total - a.cpu_total
    if d_total > 0:
        out["cpu_util"] = min(max((b.cpu_busy - a.cpu_busy) / d_total, 0.0), 1.0)
    mem_total = b.meminfo.get("MemTotal", 0)
    if mem_total > 0 and "MemAvailable" in b.meminfo:
        out["mem_util"] = 1.0 - b.meminfo["MemAvailable"] / mem_total

    # Interface bytes leave loopback out: traffic a host sends itself is not on any link.
    rx = tx = drops = 0.0
    for name, cur in b.net_dev.items():
        prev = a.net_dev.get(name)
        if prev is None:
            continue
        drops += _grow(prev["rx_drop"], cur["rx_drop"]) + _grow(prev["tx_drop"], cur["tx_drop"])
        if name == "lo":
            continue
        rx += _grow(prev["rx_bytes"], cur["rx_bytes"])
        tx += _grow(prev["tx_bytes"], cur["tx_bytes"])
    out["rx_bytes_per_s"] = rx / dt
    out["tx_bytes_per_s"] = tx / dt
    drops += sum(_grow(_counter(a, "Ip", c), _counter(b, "Ip", c)) for c in IP_DROP_COUNTERS)
    out["packet_drops_per_s"] = drops / dt

    retrans = _grow(_counter(a, "Tcp", "RetransSegs"), _counter(b, "Tcp", "RetransSegs"))
    out_segs = _grow(_counter(a, "Tcp", "OutSegs"), _counter(b, "Tcp", "OutSegs"))
    out["tcp_retransmits_per_s"] = retrans / dt
    # TCP's view of path loss: the share of sent segments that had to be sent again.
    out["loss_ratio"] = retrans / out_segs if out_segs > 0 else math.nan
    resets = _grow(_counter(a, "Tcp", "OutRsts"), _counter(b, "Tcp", "OutRsts")) + _grow(
        _counter(a, "Tcp", "EstabResets"), _counter(b, "Tcp", "EstabResets")
    )
    out["tcp_resets_per_s"] = resets / dt
    out["links_up"] = float(b.links_up)
    return out


def extra_between(a: ProcfsSample, b: ProcfsSample) -> dict[str, float]:
    """Measurements beyond the frame's features: mean run-queue wait (schedstat), listen drops."""
    dt = max(b.at - a.at, 1e-9)
    extra: dict[str, float] = {
        "tcp_listen_drops_per_s": _grow(
            _counter(a, "TcpExt", "ListenDrops"), _counter(b, "TcpExt", "ListenDrops")
        )
        / dt,
        "tcp_active_opens_per_s": _grow(_counter(a, "Tcp", "ActiveOpens"), _counter(b, "Tcp", "ActiveOpens"))
        / dt,
        "runqueue_wait_mean_ms": math.nan,
    }
    if a.schedstat is not None and b.schedstat is not None:
        slices = b.schedstat[1] - a.schedstat[1]
        if slices > 0:
            extra["runqueue_wait_mean_ms"] = (b.schedstat[0] - a.schedstat[0]) / slices / 1e6
    return extra
