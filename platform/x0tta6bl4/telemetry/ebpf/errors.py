"""The typed errors of eBPF programs: each names the program and carries the kernel's or compiler's reason."""

from __future__ import annotations

from x0tta6bl4.errors import X0tta6bl4Error


class EbpfError(X0tta6bl4Error):
    """An eBPF program could not run; names the program and carries the kernel's or compiler's reason."""

    what = "could not be loaded"

    def __init__(self, program: str, reason: str, log: str = "") -> None:
        self.program = program
        self.reason = reason.strip() or "no reason given"
        #: The full compiler or verifier output, when there is one.
        self.log = log
        super().__init__(f"eBPF program {program!r} {self.what}: {self.reason}")


class BccUnavailableError(EbpfError):
    """BCC's Python module or its libbcc cannot be imported."""

    what = "cannot be loaded without BCC"


class TracepointMissingError(EbpfError):
    """A tracepoint the program requires does not exist on the running kernel."""

    what = "needs a tracepoint this kernel lacks"

    def __init__(self, program: str, tracepoint: str, reason: str) -> None:
        self.tracepoint = tracepoint
        super().__init__(program, f"{tracepoint}: {reason}")


class CompileError(EbpfError):
    """BCC/clang refused the program's C source."""

    what = "failed to compile"


class VerifierError(EbpfError):
    """The kernel's verifier (or the bpf() syscall) refused a compiled program."""

    what = "was refused by the kernel verifier"


class AttachError(EbpfError):
    """The kernel refused to attach a verified program to its tracepoint."""

    what = "failed to attach"


class MapReadError(EbpfError):
    """Reading a program's maps failed."""

    what = "maps could not be read"
