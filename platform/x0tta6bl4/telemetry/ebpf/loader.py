"""Compiles, verifies and attaches one program through BCC; errors carry the compiler or verifier reason."""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from x0tta6bl4.telemetry.ebpf.btf import BTF_VMLINUX, BtfScalar, running_btf
from x0tta6bl4.telemetry.ebpf.codegen import PRELUDE_NAME, ProgramSource, bpf_dir, render_prelude
from x0tta6bl4.telemetry.ebpf.errors import (
    AttachError,
    BccUnavailableError,
    CompileError,
    TracepointMissingError,
    VerifierError,
)
from x0tta6bl4.telemetry.ebpf.tracefs import TracepointFormat, read_format, tracefs_root


def _import_bcc(program: str) -> Any:
    try:
        import bcc
    except (ImportError, OSError) as exc:
        raise BccUnavailableError(program, f"import bcc failed: {exc}") from exc
    return bcc


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture what C code (clang, libbcc) writes to file descriptor 2; the text lands in the yielded list."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))


def _compile_reason(log: str, program: str) -> str:
    """The compiler's error lines. A ``#line`` directive makes the program's own lines read
    ``<program>.c:N``; what is left on BCC's ``/virtual/main.c`` is in the generated prelude."""
    prelude = f"{program}(generated prelude):"
    errors = [
        re.sub(r"/virtual/main\.c:(\d+):", rf"{prelude}\1:", ln) for ln in log.splitlines() if "error:" in ln
    ]
    return "; ".join(errors) if errors else (log.strip().splitlines() or ["unknown compiler failure"])[-1]


def _verifier_reason(log: str, exc: Exception) -> str:
    """The verifier's verdict: errno, its message and the instruction it refused.

    (BTF source lines are not quoted: BCC rewrites the source before the pass
    that emits them, so they do not match the program's own line numbers.)
    """
    noise = ("processed ", "verification time", "stack depth", "bpf: Failed to load program", "HINT:", ";")
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errno_line = next((ln for ln in lines if ln.startswith("bpf: Failed to load program")), "")
    cause = errno_line.split(":", 2)[-1].strip() if errno_line else str(exc)
    message, insn = "", ""
    for ln in lines:
        m = re.match(r"^(\d+): \(\w+\) (.*?)(?:\s+;.*)?$", ln)
        if m:
            insn = f"insn {m.group(1)}: {m.group(2).strip()}"
        elif not ln.startswith(noise) and not re.match(r"^\d+: ", ln):
            message = ln
    if not message:
        return cause
    return f"{cause}: {message}" + (f" (at {insn})" if insn else "")


class LoadedProgram:
    """One compiled, verified program and the tracepoints it is attached to.

    Each program is its own BCC object, so one program's failure never affects another.
    """

    def __init__(
        self,
        source: ProgramSource,
        bpf: Any,
        handlers: dict[str, str],
        formats: dict[str, TracepointFormat],
        skipped: list[str],
        raw: set[str] | None = None,
    ) -> None:
        self.name = source.name
        self.source = source
        self.bpf = bpf
        #: tracepoint "cat:ev" -> handler function name
        self.handlers = handlers
        self.formats = formats
        #: optional tracepoints this kernel lacks (their handlers were compiled out)
        self.skipped_tracepoints = skipped
        #: tracepoints whose handler is a raw tracepoint program (per-program recursion guard)
        self.raw_tracepoints = raw or set()
        self.attached: list[str] = []

    def attach(self) -> None:
        """Attach every handler to its tracepoint (idempotent)."""
        for tp, fn in self.handlers.items():
            if tp in self.attached:
                continue
            failure: Exception | None = None
            err = 0
            with _captured_stderr() as log:
                try:
                    if tp in self.raw_tracepoints:
                        self.bpf.attach_raw_tracepoint(tp=tp.split(":", 1)[1].encode(), fn_name=fn.encode())
                    else:
                        self.bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
                except Exception as exc:
                    failure, err = exc, ct.get_errno()
            if failure is not None:
                detail = os.strerror(err) if err else str(failure)
                text = "".join(log).strip()
                raise AttachError(
                    self.name, f"{tp}: {detail}" + (f" ({text})" if text else ""), text
                ) from failure
            self.attached.append(tp)

    def detach(self) -> None:
        """Detach from every tracepoint; maps and loaded code stay, so attach() is cheap."""
        for tp in list(self.attached):
            if tp in self.raw_tracepoints:
                self.bpf.detach_raw_tracepoint(tp=tp.split(":", 1)[1].encode())
            else:
                self.bpf.detach_tracepoint(tp=tp.encode())
            self.attached.remove(tp)

    def table(self, name: str) -> Any:
        return self.bpf.get_table(name.encode())

    def has_table(self, name: str) -> bool:
        try:
            self.bpf.get_table(name.encode())
        except KeyError:
            return False
        return True

    def _fdinfo_sum(self, field: str) -> int:
        """A counter of the kernel's fdinfo for the program's handlers, summed over them."""
        total = 0
        for fn in self.bpf.funcs.values():
            for line in Path(f"/proc/self/fdinfo/{fn.fd}").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == field:
                    total += int(value)
        return total

    def run_stats(self) -> tuple[int, int]:
        """``(run_time_ns, run_count)`` of the program's handlers, summed, from the kernel's BPF stats.

        The kernel only counts while ``kernel.bpf_stats_enabled`` is 1 (see :func:`bpf_stats`).
        """
        return self._fdinfo_sum("run_time_ns"), self._fdinfo_sum("run_cnt")

    def recursion_misses(self) -> int:
        """Events the kernel skipped because a BPF program already ran on that CPU (they count as lost).

        fdinfo's ``recursion_misses`` is the program's ``misses`` counter: for classic tracepoints
        any tracing program running on the CPU (the shared ``bpf_prog_active``), for raw
        tracepoints only this same program re-entered (its own ``prog->active``).
        """
        return self._fdinfo_sum("recursion_misses")

    def close(self) -> None:
        """Detach and free the program and its maps."""
        self.attached.clear()
        self.bpf.cleanup()


BPF_STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """Have the kernel time every BPF program run inside the block (restores the previous setting)."""
    previous = BPF_STATS_SYSCTL.read_text().strip()
    BPF_STATS_SYSCTL.write_text("1")
    try:
        yield
    finally:
        BPF_STATS_SYSCTL.write_text(previous)


def _raw_tracepoint_args(program: str, tp: str) -> list[BtfScalar] | None:
    """The arguments the kernel passes to raw tracepoint ``tp``; None when it has no such tracepoint."""
    try:
        return running_btf().tracepoint_args(tp.split(":", 1)[1])
    except (OSError, ValueError) as exc:
        raise CompileError(program, f"{tp}: cannot read the kernel's BTF ({BTF_VMLINUX}): {exc}") from exc


def load_program(
    source: ProgramSource, *, attach: bool = True, tracefs: Path | None = None, directory: Path | None = None
) -> LoadedProgram:
    """Compile, verify and (by default) attach one program.

    Classic tracepoints (``X0_TP``) take their record layout from tracefs; raw tracepoints
    (``X0_RAW_TP``) take their arguments, and ``X0_KFIELD`` struct members their offsets,
    from the running kernel's BTF.

    Raises:
        BccUnavailableError, TracepointMissingError, CompileError, VerifierError, AttachError:
            each names ``source.name`` and carries the reason the kernel or compiler gave.
    """
    bcc = _import_bcc(source.name)
    root = tracefs or tracefs_root()
    if root is None:
        raise TracepointMissingError(source.name, "*", "tracefs is not mounted at /sys/kernel/tracing")
    tracepoints = source.tracepoints()
    if not tracepoints:
        raise CompileError(
            source.name, "the source defines no X0_TP(cat, ev) or X0_RAW_TP(cat, ev, (args)) handler"
        )
    try:
        raw = source.raw_tracepoints()
    except ValueError as exc:
        raise CompileError(source.name, str(exc)) from exc
    formats: dict[str, TracepointFormat] = {}
    raw_args: dict[str, list[BtfScalar]] = {}
    skipped: list[str] = []
    for cat, ev, required in tracepoints:
        tp = f"{cat}:{ev}"
        if tp in raw:
            args = _raw_tracepoint_args(source.name, tp)
            if args is None:
                if required:
                    raise TracepointMissingError(source.name, tp, "no such raw tracepoint in the kernel BTF")
                skipped.append(tp)
                continue
            raw_args[tp] = args
            # The format file still names the values (drop and reset reasons) for user space.
            with contextlib.suppress(OSError, ValueError):
                formats[tp] = read_format(cat, ev, root)
            continue
        try:
            formats[tp] = read_format(cat, ev, root)
        except FileNotFoundError:
            if required:
                raise TracepointMissingError(source.name, tp, "no such tracepoint on this kernel") from None
            skipped.append(tp)
        except (OSError, ValueError) as exc:
            raise TracepointMissingError(source.name, tp, f"unreadable format: {exc}") from exc

    prelude = render_prelude(source, formats, raw_args, (directory or bpf_dir()) / PRELUDE_NAME)
    text = prelude + f'#line 1 "{source.name}.c"\n' + source.text

    failure: Exception | None = None
    bpf: Any = None
    with _captured_stderr() as log:
        try:
            bpf = bcc.BPF(text=text.encode())
        except Exception as exc:
            failure = exc
    if failure is not None:
        full = "".join(log)
        raise CompileError(source.name, _compile_reason(full, source.name), full) from failure

    handlers = {tp: f"x0_raw__{tp.replace(':', '__')}" for tp in raw_args}
    handlers.update({tp: f"x0_tp__{f.category}__{f.event}" for tp, f in formats.items() if tp not in raw})
    for tp, fn in handlers.items():
        prog_type = bcc.BPF.RAW_TRACEPOINT if tp in raw_args else bcc.BPF.TRACEPOINT
        with _captured_stderr() as log:
            try:
                bpf.load_func(fn.encode(), prog_type)
            except Exception as exc:
                failure = exc
        if failure is not None:
            full = "".join(log)
            bpf.cleanup()
            raise VerifierError(
                source.name, f"{fn} ({tp}): {_verifier_reason(full, failure)}", full
            ) from failure
    program = LoadedProgram(source, bpf, handlers, formats, skipped, raw=set(raw_args))
    if attach:
        try:
            program.attach()
        except AttachError:
            program.close()
            raise
    return program
