"""The shipped programs' sources, and a set of programs loaded independently and polled together."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.observability.metrics import metric
from x0tta6bl4.telemetry.ebpf.codegen import ProgramSource, bpf_dir
from x0tta6bl4.telemetry.ebpf.collectors import COLLECTORS, PROGRAMS, ProgramCollector, ProgramSample
from x0tta6bl4.telemetry.ebpf.errors import EbpfError, MapReadError
from x0tta6bl4.telemetry.ebpf.loader import LoadedProgram, load_program

_READ_SECONDS = metric("ebpf_read_seconds")


def program_sources(names: Sequence[str] | None = None, directory: Path | None = None) -> list[ProgramSource]:
    """The sources of the named programs (all of :data:`PROGRAMS` when None).

    Raises:
        ConfigError: a name that is not one of the shipped programs.
    """
    wanted = list(PROGRAMS) if names is None else [n.strip() for n in names if n.strip()]
    unknown = [n for n in wanted if n not in PROGRAMS]
    if unknown:
        raise ConfigError(
            f"unknown eBPF program(s) {', '.join(map(repr, unknown))}; available: {', '.join(PROGRAMS)}"
        )
    root = directory or bpf_dir()
    out = []
    for name in dict.fromkeys(wanted):
        path = root / f"{name}.c"
        try:
            out.append(ProgramSource(name, path.read_text(), path))
        except FileNotFoundError:
            raise ConfigError(f"eBPF program {name!r} has no source at {path}") from None
    return out


def parse_program_list(spec: str) -> list[str] | None:
    """``"all"`` -> None (every program), ``"a,b"`` -> ``["a", "b"]``; unknown names raise ConfigError."""
    if spec.strip() in ("", "all"):
        return None
    names = [n.strip() for n in spec.split(",") if n.strip()]
    program_sources(names)
    return names


@dataclasses.dataclass(frozen=True)
class EbpfReading:
    """Every loaded program's sample for one interval, and the programs whose maps could not be read."""

    interval_s: float
    samples: dict[str, ProgramSample]
    read_errors: dict[str, str]

    @property
    def events(self) -> int:
        return sum(s.events for s in self.samples.values())

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.samples.values())

    @property
    def events_per_s(self) -> float:
        return self.events / self.interval_s if self.interval_s > 0 else math.nan

    def value(self, program: str, key: str) -> float:
        """One program's value, NaN when the program is not loaded or did not measure it."""
        sample = self.samples.get(program)
        return sample.values.get(key, math.nan) if sample else math.nan


class EbpfPrograms:
    """A set of programs loaded independently: each failure is recorded, the others keep running."""

    def __init__(self, sources: Sequence[ProgramSource], *, attach: bool = True) -> None:
        self.loaded: dict[str, LoadedProgram] = {}
        self.collectors: dict[str, ProgramCollector] = {}
        #: programs that could not be loaded, with the typed reason
        self.errors: dict[str, EbpfError] = {}
        for source in sources:
            try:
                program = load_program(source, attach=attach)
            except EbpfError as exc:
                self.errors[source.name] = exc
                continue
            try:
                self.collectors[source.name] = COLLECTORS.get(source.name, ProgramCollector)(program)
            except Exception as exc:
                program.close()
                self.errors[source.name] = MapReadError(source.name, str(exc))
                continue
            self.loaded[source.name] = program
        self._last = time.monotonic()

    @classmethod
    def from_names(cls, names: Sequence[str] | None = None, *, attach: bool = True) -> EbpfPrograms:
        """Load the named shipped programs (all when None); unknown names raise ConfigError."""
        return cls(program_sources(names), attach=attach)

    def attach(self) -> None:
        for program in self.loaded.values():
            program.attach()

    def detach(self) -> None:
        for program in self.loaded.values():
            program.detach()

    def reset(self) -> None:
        """Start a fresh interval: the next poll covers only what happens from now on."""
        for collector in self.collectors.values():
            collector.prime()
        self._last = time.monotonic()

    def poll(self) -> EbpfReading:
        """Read every loaded program for the interval since the previous poll (or load/reset)."""
        now = time.monotonic()
        dt, self._last = now - self._last, now
        samples: dict[str, ProgramSample] = {}
        read_errors: dict[str, str] = {}
        for name, collector in self.collectors.items():
            started = time.perf_counter()
            try:
                samples[name] = collector.read(dt)
                _READ_SECONDS.observe(time.perf_counter() - started, tags={"program": name})
            except Exception as exc:
                read_errors[name] = str(MapReadError(name, f"{type(exc).__name__}: {exc}"))
        return EbpfReading(dt, samples, read_errors)

    def close(self) -> None:
        for program in self.loaded.values():
            program.close()
        self.loaded.clear()
        self.collectors.clear()

    def __enter__(self) -> EbpfPrograms:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
