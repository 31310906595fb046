"""Host telemetry (eBPF, else procfs) as a TelemetryFrame row, and the per-node EbpfSource Ray actor."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import platform as _stdlib_platform
import socket
import sysconfig
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from x0tta6bl4.connect import platform_actor_options
from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.observability import tracing
from x0tta6bl4.observability.metrics import domain_metrics
from x0tta6bl4.telemetry.ebpf import EbpfPrograms, EbpfReading, program_sources, tracefs_root
from x0tta6bl4.telemetry.frame import FEATURES, TelemetryFrame
from x0tta6bl4.telemetry.procfs import ProcfsCollector

#: Host telemetry and eBPF metrics (exported per poll).
_METRICS = domain_metrics("telemetry")

#: Frame features eBPF measures, and which program's value provides them. The
#: other features (cpu, memory, interface bytes, links, loss ratio) always come
#: from procfs, which counts them exactly and for free.
EBPF_FEATURES: dict[str, tuple[str, str]] = {
    "tcp_retransmits_per_s": ("tcp_retransmit", "tcp_retransmits_per_s"),
    "packet_drops_per_s": ("skb_drops", "packet_drops_per_s"),
    "tcp_resets_per_s": ("tcp_state", "tcp_resets_per_s"),
    "latency_mean_ms": ("tcp_rtt", "rtt_mean_ms"),
    "latency_p95_ms": ("tcp_rtt", "rtt_p95_ms"),
    "runqueue_latency_p95_ms": ("runqlat", "runqueue_latency_p95_ms"),
}

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
DEBIAN_BCC_DIR = Path("/usr/lib/python3/dist-packages")


class TelemetryPollError(X0tta6bl4Error):
    """A poll failed; the source keeps running and reports the error in its status."""


# ------------------------------------------------------------------------------------------- blockers


@dataclasses.dataclass(frozen=True)
class Blocker:
    """Something that keeps eBPF from loading on this host, and the command that fixes it."""

    check: str
    reason: str
    fix: str


def _effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def _debian_arch() -> str:
    machine = _stdlib_platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "ppc64le": "ppc64el"}.get(
        machine, machine
    )


def _header_fix(release: str) -> str:
    """Shell commands that give BCC kernel headers at /lib/modules/<release>/{build,source}."""
    arch = _debian_arch()
    flavours = sorted(Path("/usr/src").glob(f"linux-headers-*-{arch}"))
    exact = Path(f"/usr/src/linux-headers-{release}")
    build = exact if exact.is_dir() else (flavours[-1] if flavours else None)
    if build is None:
        return f"apt-get install -y linux-headers-{arch}   # then run `x0tta6bl4 doctor` again for the links"
    common = None
    makefile = build / "Makefile"
    if makefile.is_file():
        for line in makefile.read_text(errors="replace").splitlines():
            if line.startswith("include ") and line.endswith("/Makefile"):
                common = Path(line.split()[1]).parent
    cmd = f"mkdir -p /lib/modules/{release} && ln -sfn {build} /lib/modules/{release}/build"
    if common is not None:
        cmd += f" && ln -sfn {common} /lib/modules/{release}/source"
    return cmd


def _headers_present(release: str) -> bool:
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return True
    base = Path("/lib/modules") / release
    build, source = base / "build", base / "source"
    if not (build / "include").is_dir():
        return False
    return (build / "include/linux/kconfig.h").is_file() or (source / "include/linux/kconfig.h").is_file()


def ebpf_blockers() -> list[Blocker]:
    """Everything that prevents loading eBPF programs here, each with a human reason and the exact fix."""
    blockers: list[Blocker] = []
    caps = _effective_caps()

    def has(bit: int) -> bool:
        return bool(caps >> bit & 1)

    if not (has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))):
        if os.geteuid() == 0:
            fix = (
                "give the process the capabilities: docker run --cap-add BPF --cap-add PERFMON ... "
                "(Kubernetes: securityContext.capabilities.add: [BPF, PERFMON])"
            )
        else:
            fix = 'sudo -E env "PATH=$PATH" x0tta6bl4 telemetry'
        blockers.append(
            Blocker(
                "privileges",
                f"the process (uid {os.geteuid()}) lacks CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN), "
                "which loading and attaching BPF programs needs",
                fix,
            )
        )
    if tracefs_root() is None:
        blockers.append(
            Blocker(
                "tracefs",
                "tracefs is not mounted, so tracepoint formats cannot be read nor programs attached",
                "mount -t tracefs nodev /sys/kernel/tracing",
            )
        )
    if not Path("/sys/kernel/btf/vmlinux").is_file():
        blockers.append(
            Blocker(
                "btf",
                "the kernel exposes no BTF (/sys/kernel/btf/vmlinux): the raw-tracepoint programs take "
                "their argument types and struct offsets from it",
                "run a kernel built with CONFIG_DEBUG_INFO_BTF=y (every current distribution kernel is)",
            )
        )
    if importlib.util.find_spec("bcc") is None:
        pth = Path(sysconfig.get_paths()["purelib"]) / "zz_debian_bcc.pth"
        # As scripts/setup.sh does: a directory holding only a bcc link, never all of dist-packages.
        linkdir = Path(sysconfig.get_paths()["data"]) / "debian-bcc"
        link = f"mkdir -p {linkdir} && ln -sfn {DEBIAN_BCC_DIR}/bcc {linkdir}/bcc && echo {linkdir} > {pth}"
        installed = (DEBIAN_BCC_DIR / "bcc").is_dir()
        blockers.append(
            Blocker(
                "bcc",
                "BCC's Python module is not importable"
                + (
                    f" from this interpreter ({DEBIAN_BCC_DIR} is not on its path)"
                    if installed
                    else " (not installed)"
                ),
                link if installed else f"apt-get install -y python3-bpfcc bpfcc-tools && {link}",
            )
        )
    else:
        try:
            import bcc  # noqa: F401
        except (ImportError, OSError) as exc:
            blockers.append(
                Blocker("bcc", f"import bcc failed: {exc}", "apt-get install -y --reinstall libbpfcc")
            )
    release = os.uname().release
    if not _headers_present(release):
        blockers.append(
            Blocker(
                "kernel_headers",
                f"BCC compiles programs against kernel headers, and /lib/modules/{release}/build (with its "
                "source tree) does not provide them",
                _header_fix(release),
            )
        )
    return blockers


# ------------------------------------------------------------------------------------- host telemetry


class HostTelemetry:
    """This host's telemetry as one frame row per poll: eBPF where it loads, procfs for the rest.

    Args:
        node_id: the mesh's id for this host (the row's node id).
        programs: eBPF programs to load (all when None); unknown names raise ConfigError.
        force_procfs: never try eBPF.
        proc, sys: procfs/sysfs roots (a container mounts the host's elsewhere).
        host: host name for the frame (default: this machine's).
    """

    def __init__(
        self,
        node_id: int,
        *,
        programs: Sequence[str] | None = None,
        force_procfs: bool = False,
        proc: str | Path = "/proc",
        sys: str | Path = "/sys",
        host: str | None = None,
    ) -> None:
        sources = program_sources(programs)
        self.node_id = int(node_id)
        self.host = host or socket.gethostname()
        self.blockers: list[Blocker] = []
        self.ebpf: EbpfPrograms | None = None
        self.ebpf_off_reason: str | None = None
        self.requested = [s.name for s in sources]
        if force_procfs:
            self.ebpf_off_reason = "procfs fallback forced"
        else:
            self.blockers = ebpf_blockers()
            if self.blockers:
                self.ebpf_off_reason = "; ".join(b.reason for b in self.blockers)
            else:
                self.ebpf = EbpfPrograms(sources)
                if not self.ebpf.loaded:
                    self.ebpf_off_reason = "no eBPF program could be loaded: " + "; ".join(
                        str(e) for e in self.ebpf.errors.values()
                    )
                    self.ebpf.close()
                    self.ebpf = None
        self.procfs = ProcfsCollector(proc, sys)
        _METRICS["ebpf_programs_loaded"].set(float(len(self.ebpf.loaded) if self.ebpf is not None else 0))
        self.tick = 0
        self.failed_polls = 0
        self.last_poll_error: str | None = None
        self.last_poll_failed = False
        self._reading: EbpfReading | None = None

    @property
    def source(self) -> str:
        return "ebpf" if self.ebpf is not None else "procfs"

    def poll(self) -> TelemetryFrame:
        """Measure the interval since the previous poll.

        Raises:
            TelemetryPollError: reading failed; :meth:`status` reports it and the next poll retries.
        """
        started = time.perf_counter()
        try:
            reading = self.ebpf.poll() if self.ebpf is not None else None
            features = self.procfs.poll()
        except Exception as exc:
            self.failed_polls += 1
            _METRICS["poll_failures"].inc(tags={"source": self.source})
            self.last_poll_failed = True
            self.last_poll_error = (
                f"poll {self.tick + 1} at {time.strftime('%H:%M:%S')}: {type(exc).__name__}: {exc}"
            )
            raise TelemetryPollError(self.last_poll_error) from exc
        if reading is not None:
            for feature, (program, key) in EBPF_FEATURES.items():
                if program in reading.samples:
                    features[feature] = reading.value(program, key)
        self.tick += 1
        self.last_poll_failed = False
        self._reading = reading
        self._observe(reading, time.perf_counter() - started)
        row = np.array([[features.get(name, math.nan) for name in FEATURES]], dtype=np.float32)
        return TelemetryFrame(
            features=row,
            node_ids=np.array([self.node_id], dtype=np.int64),
            feature_names=FEATURES,
            tick=self.tick,
            source=self.source,
            host=self.host,
        )

    def _observe(self, reading: EbpfReading | None, elapsed_s: float) -> None:
        """Export one poll: its time, and each program's events and losses (once per poll, not per event)."""
        tags = {"source": self.source}
        _METRICS["polls"].inc(tags=tags)
        _METRICS["poll_seconds"].observe(elapsed_s, tags=tags)
        if reading is None:
            return
        for name, sample in reading.samples.items():
            _METRICS["ebpf_events"].inc(sample.events, tags={"program": name})
            _METRICS["ebpf_lost_events"].inc(sample.lost, tags={"program": name})
        for name in reading.read_errors:
            _METRICS["ebpf_read_errors"].inc(tags={"program": name})

    def columns_from_procfs(self) -> list[str]:
        """eBPF features this host fills from procfs (or NaN) because their program is not running."""
        running = set(self.ebpf.loaded) if self.ebpf is not None else set()
        if self._reading is not None:
            running -= set(self._reading.read_errors)
        return [f for f, (program, _) in EBPF_FEATURES.items() if program not in running]

    def status(self) -> dict[str, Any]:
        """Source in use, why eBPF is off, per-program state and errors, last poll error."""
        programs: dict[str, dict[str, Any]] = {}
        if self.ebpf is not None:
            for name, loaded in self.ebpf.loaded.items():
                programs[name] = {
                    "loaded": True,
                    "tracepoints": sorted(loaded.handlers),
                    "skipped_tracepoints": loaded.skipped_tracepoints,
                }
            for name, err in self.ebpf.errors.items():
                programs[name] = {"loaded": False, "error_type": type(err).__name__, "error": str(err)}
        return {
            "node_id": self.node_id,
            "host": self.host,
            "source": self.source,
            "ebpf_off_reason": self.ebpf_off_reason,
            "programs_requested": self.requested,
            "blockers": [dataclasses.asdict(b) for b in self.blockers],
            "programs": programs,
            "read_errors": dict(self._reading.read_errors) if self._reading is not None else {},
            "columns_from_procfs": self.columns_from_procfs(),
            "ticks": self.tick,
            "failed_polls": self.failed_polls,
            "last_poll_failed": self.last_poll_failed,
            "last_poll_error": self.last_poll_error,
        }

    def extra_features(self) -> dict[str, Any]:
        """The last poll's measurements beyond the frame: drop reasons, RTT p50/p99, event rate, losses."""
        extra: dict[str, Any] = {"source": self.source, "tick": self.tick, **self.procfs.extra}
        reading = self._reading
        if reading is not None:
            extra["interval_s"] = reading.interval_s
            extra["events_per_s"] = reading.events_per_s
            extra["lost_events"] = reading.lost
            for sample in reading.samples.values():
                extra.update(sample.values)
                extra.update(sample.breakdown)
        return extra

    def close(self) -> None:
        if self.ebpf is not None:
            self.ebpf.close()
            self.ebpf = None


# ----------------------------------------------------------------------------------------- Ray actor


@ray.remote(num_cpus=0, max_restarts=-1)
class EbpfSource:
    """One per Ray node, pinned there: the node's kernel telemetry as a one-row TelemetryFrame."""

    def __init__(
        self,
        node_id: int,
        programs: Sequence[str] | None = None,
        force_procfs: bool = False,
        proc: str = "/proc",
        sys: str = "/sys",
    ) -> None:
        tracing.setup_tracing("ebpf-source")
        self._telemetry = HostTelemetry(
            node_id, programs=programs, force_procfs=force_procfs, proc=proc, sys=sys
        )

    def poll(self, trace: dict[str, str] | None = None) -> TelemetryFrame:
        """Measure since the previous poll; a failure raises TelemetryPollError, the actor keeps running.

        ``trace``: the caller's W3C trace context, continued by the poll's ``telemetry.poll`` span.
        """
        attributes = {"node": self._telemetry.node_id, "source": self._telemetry.source}
        with tracing.span("telemetry.poll", attributes, parent=trace):
            return self._telemetry.poll()

    def status(self) -> dict[str, Any]:
        status = self._telemetry.status()
        status["ray_node_id"] = ray.get_runtime_context().get_node_id()
        return status

    def extra_features(self) -> dict[str, Any]:
        return self._telemetry.extra_features()

    def ray_node_id(self) -> str:
        """The Ray node this actor runs on (it must be the one it was pinned to)."""
        return str(ray.get_runtime_context().get_node_id())


def source_name(ray_node_id: str) -> str:
    """Name of the detached EbpfSource actor of a Ray node."""
    return f"ebpf-source-{ray_node_id}"


def start_sources(
    node_ids: Mapping[str, int] | None = None,
    *,
    programs: Sequence[str] | None = None,
    force_procfs: bool = False,
) -> dict[str, Any]:
    """Create (or find) one detached, named EbpfSource per alive Ray node, pinned to it.

    Args:
        node_ids: mesh node id per Ray node id, as the mesh assigns them; when None the
            alive nodes are numbered 0.. in Ray node id order.
        programs: eBPF programs to load (all when None).
        force_procfs: use the procfs fallback everywhere.

    Returns:
        Actor handle per Ray node id.

    Raises:
        ConfigError: an unknown program name, or a node missing from ``node_ids``.
    """
    program_sources(programs)
    alive = sorted(str(n["NodeID"]) for n in ray.nodes() if n.get("Alive"))
    missing = [n for n in alive if node_ids is not None and n not in node_ids]
    if missing:
        raise ConfigError(f"no mesh node id for Ray node(s) {', '.join(missing)}")
    handles: dict[str, Any] = {}
    for i, ray_node in enumerate(alive):
        mesh_id = node_ids[ray_node] if node_ids is not None else i
        handles[ray_node] = EbpfSource.options(  # type: ignore[attr-defined]
            **platform_actor_options(
                source_name(ray_node),
                get_if_exists=True,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=ray_node, soft=False),
            )
        ).remote(mesh_id, list(programs) if programs is not None else None, force_procfs)
    return handles
