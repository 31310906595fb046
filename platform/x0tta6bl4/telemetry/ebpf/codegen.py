"""Program sources and the C generated before them: X0_RAW_TP arguments, X0_KFIELD readers, the prelude."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from x0tta6bl4.telemetry.ebpf.btf import BtfMember, BtfScalar, running_btf
from x0tta6bl4.telemetry.ebpf.errors import CompileError
from x0tta6bl4.telemetry.ebpf.tracefs import C_SCALAR, TracepointFormat, render_struct

#: Shared prelude every program is compiled with (see bpf/x0tta6bl4.h).
PRELUDE_NAME = "x0tta6bl4.h"


def _c_scalar(value: BtfScalar) -> str:
    """The C type a program sees a kernel value as: pointers as ``const void *`` (never dereferenced
    directly: the kernel headers' layouts may not be the running kernel's), integers by size and sign."""
    if value.pointer:
        return "const void *"
    return ("s" if value.signed else "u") + C_SCALAR[value.size]


def _normal_type(decl: str) -> str:
    """A C type spelled as :meth:`KernelBtf.type_name` spells it (no qualifiers, ``T*``)."""
    decl = re.sub(r"\b(?:const|volatile)\b", " ", decl)
    return re.sub(r"\s*\*\s*", "*", " ".join(decl.split())).strip()


def render_raw_tracepoint(
    category: str, event: str, params: Sequence[tuple[str, str]], args: Sequence[BtfScalar]
) -> str:
    """C declarations of one raw tracepoint handler's parameters, checked against the kernel's TP_PROTO.

    ``params`` are the ``(type, name)`` pairs the program declares; each must have the type the
    kernel passes at that position. The kernel may pass more arguments than declared (they are
    ignored); declared trailing arguments an older kernel does not pass arrive as 0, and only
    the ones it passes get ``X0_ARG__<cat>__<ev>__<name>``.

    Raises:
        ValueError: a declared argument whose type is not the kernel's.
    """
    tag = f"{category}__{event}"
    decls, values, lines = [], [], [f"#define X0_HAVE__{tag} 1"]
    for i, (ptype, pname) in enumerate(params):
        if i >= len(args):
            decls.append(f"u64 {pname}")
            values.append("0")
            continue
        if _normal_type(ptype) != args[i].type_name:
            raise ValueError(
                f"{category}:{event} passes {args[i].type_name} as argument {i + 1} on this kernel, "
                f"the program declares {ptype} {pname}"
            )
        ctype = _c_scalar(args[i])
        decls.append(f"{ctype} {pname}")
        values.append(f"({ctype})ctx->args[{i}]")
        lines.append(f"#define X0_ARG__{tag}__{pname} 1")
    lines.append(f"#define X0_RAW_PARAMS__{tag} {', '.join(decls) or 'void'}")
    lines.append(f"#define X0_RAW_VALUES__{tag} {', '.join(values)}")
    return "\n".join(lines) + "\n"


def render_kernel_field(alias: str, member: BtfMember, ctype: str) -> str:
    """A reader for one kernel struct member at the running kernel's offset (from BTF), and its checks.

    The program names the C type it expects (``u8`` ... ``s64``; ``u64`` for a pointer); a field
    whose size or signedness differs on this kernel is refused here, and static assertions pin
    the offset inside the struct, so a layout change fails the build instead of reading garbage.

    Raises:
        ValueError: ``ctype`` is not the member's type on this kernel.
    """
    where = f"{member.struct_name}.{member.path}"
    expected = "u64" if member.value.pointer else _c_scalar(member.value)
    if ctype != expected:
        raise ValueError(
            f"{where} is {member.value.type_name} ({expected}) on this kernel, the program reads {ctype}"
        )
    return (
        f"#define X0_KOFF__{alias} {member.offset}\n"
        f"static __always_inline {ctype} x0_kread__{alias}(const void *base)\n"
        "{\n"
        f"    {ctype} v = 0;\n"
        f"    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + X0_KOFF__{alias});\n"
        "    return v;\n"
        "}\n"
        f"_Static_assert(X0_KOFF__{alias} + sizeof({ctype}) <= {member.struct_size}, "
        f'"{where} lies outside struct {member.struct_name} ({member.struct_size} bytes per BTF)");\n'
    )


def bpf_dir() -> Path:
    """Directory of the .c programs: $X0TTA6BL4_BPF_DIR, else the repository's bpf/, else a bpf/ that a
    Ray job ships beside the package in its ``py_modules`` (:func:`x0tta6bl4.connect.package_runtime_env`)."""
    env = os.environ.get("X0TTA6BL4_BPF_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[4] / "bpf"
    if repo.is_dir():
        return repo
    for entry in sys.path:
        shipped = Path(entry or ".") / "bpf"
        if shipped.is_dir() and any(shipped.glob("*.c")):
            return shipped
    return repo


@dataclasses.dataclass(frozen=True)
class ProgramSource:
    """The C text of one program and the name errors and metrics use for it."""

    name: str
    text: str
    path: Path | None = None

    def _code(self) -> str:
        return re.sub(r"/\*.*?\*/|//[^\n]*", "", self.text, flags=re.S)

    def tracepoints(self) -> list[tuple[str, str, bool]]:
        """``(category, event, required)`` of every ``X0_TP(cat, ev)`` and ``X0_RAW_TP(cat, ev, (args))``."""
        code = self._code()
        found: list[tuple[str, str, bool]] = []
        for cat, ev in re.findall(r"\bX0_(?:RAW_)?TP\(\s*(\w+)\s*,\s*(\w+)\s*[,)]", code):
            guard = re.search(rf"#\s*if(?:def\s+|\s+defined\s*\(?\s*)X0_HAVE__{cat}__{ev}\b", code)
            if (cat, ev) not in [(c, e) for c, e, _ in found]:
                found.append((cat, ev, guard is None))
        return found

    def raw_tracepoints(self) -> dict[str, list[tuple[str, str]]]:
        """``"cat:ev"`` -> the ``(type, name)`` arguments each ``X0_RAW_TP(cat, ev, (args))`` declares."""
        out: dict[str, list[tuple[str, str]]] = {}
        for cat, ev, sig in _RAW_TP_RE.findall(self._code()):
            params = []
            for decl in (d.strip() for d in sig.split(",")):
                if not decl or decl == "void":
                    continue
                m = re.match(r"^(.*?)\s*\b([A-Za-z_]\w*)$", decl)
                if not m or not m.group(1):
                    raise ValueError(f"{cat}:{ev}: cannot parse argument declaration {decl!r}")
                params.append((m.group(1), m.group(2)))
            out[f"{cat}:{ev}"] = params
        return out

    def kernel_fields(self) -> list[tuple[str, str, str, str]]:
        """``(alias, struct, member path, C type)`` of every ``X0_KFIELD(...)`` declaration."""
        return _KFIELD_RE.findall(self._code())


_RAW_TP_RE = re.compile(r"\bX0_RAW_TP\(\s*(\w+)\s*,\s*(\w+)\s*,\s*\(([^()]*)\)\s*\)")
_KFIELD_RE = re.compile(r"\bX0_KFIELD\(\s*(\w+)\s*,\s*(\w+)\s*,\s*([\w.]+)\s*,\s*(\w+)\s*\)")


def render_prelude(
    source: ProgramSource,
    formats: dict[str, TracepointFormat],
    raw_args: dict[str, list[BtfScalar]],
    header: Path,
) -> str:
    """Everything compiled before the program's own text: record structs of its classic tracepoints,
    argument declarations of its raw ones, readers of the kernel fields it names, then the shared header.

    Raises:
        CompileError: a declaration that does not match the running kernel.
    """
    raw = source.raw_tracepoints()
    parts = [render_struct(f) for tp, f in formats.items() if tp not in raw]
    try:
        for tp, args in raw_args.items():
            cat, ev = tp.split(":", 1)
            parts.append(render_raw_tracepoint(cat, ev, raw[tp], args))
        fields = source.kernel_fields()
        if fields:
            btf = running_btf()
            for alias, struct_name, path, ctype in fields:
                parts.append(render_kernel_field(alias, btf.member(struct_name, path), ctype))
        parts.append(header.read_text() + "\n")
    except (OSError, ValueError, LookupError) as exc:
        raise CompileError(source.name, f"cannot build the prelude: {exc}") from exc
    return "".join(parts)
