"""Loads the tracepoint programs of bpf/ through BCC, one object each, and turns their maps into rates."""

from __future__ import annotations

import contextlib
import ctypes as ct
import dataclasses
import errno
import functools
import math
import os
import re
import struct
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.telemetry._histogram import counter_delta, percentile

#: The programs x0tta6bl4 ships, in load order; each is bpf/<name>.c.
PROGRAMS: tuple[str, ...] = ("tcp_retransmit", "tcp_state", "tcp_rtt", "skb_drops", "runqlat", "net_bytes")

#: Where the kernel's tracing file system may be mounted, preferred first.
TRACEFS_CANDIDATES: tuple[Path, ...] = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

#: Shared prelude every program is compiled with (see bpf/x0tta6bl4.h).
PRELUDE_NAME = "x0tta6bl4.h"

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

U64Array = npt.NDArray[np.uint64]


# ---------------------------------------------------------------------------------------------- errors


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


# --------------------------------------------------------------------------------- tracepoint formats


def tracefs_root() -> Path | None:
    """The mounted tracefs directory that lists events, or None when tracefs is not mounted."""
    for candidate in TRACEFS_CANDIDATES:
        if (candidate / "events").is_dir():
            return candidate
    return None


@dataclasses.dataclass(frozen=True)
class TracepointField:
    """One field of a tracepoint record as the running kernel lays it out."""

    name: str
    decl: str
    offset: int
    size: int
    signed: bool
    array_len: int | None = None


@dataclasses.dataclass(frozen=True)
class TracepointFormat:
    """A tracepoint's record layout and print format, from tracefs ``events/<cat>/<ev>/format``."""

    category: str
    event: str
    fields: tuple[TracepointField, ...]
    print_fmt: str

    @property
    def tracepoint(self) -> str:
        return f"{self.category}:{self.event}"

    @property
    def struct_name(self) -> str:
        return f"x0_tp__{self.category}__{self.event}"

    def has_field(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)


_FIELD_RE = re.compile(
    r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);"
)
_DECL_NAME_RE = re.compile(r"(?P<name>[A-Za-z_]\w*)\s*(?:\[(?P<n>\w*)\])?\s*$")


def parse_format(category: str, event: str, text: str) -> TracepointFormat:
    """Parse the text of a tracefs ``format`` file."""
    fields: list[TracepointField] = []
    print_fmt = ""
    for line in text.splitlines():
        if line.startswith("print fmt:"):
            print_fmt = line[len("print fmt:") :].strip()
            continue
        m = _FIELD_RE.match(line)
        if not m:
            continue
        decl = m.group("decl").strip()
        nm = _DECL_NAME_RE.search(decl)
        if not nm:
            raise ValueError(f"{category}:{event}: cannot parse field declaration {decl!r}")
        n = nm.group("n")
        array_len = int(n) if n and n.isdigit() else None
        fields.append(
            TracepointField(
                name=nm.group("name"),
                decl=decl,
                offset=int(m.group("off")),
                size=int(m.group("size")),
                signed=m.group("signed") == "1",
                array_len=array_len,
            )
        )
    if not fields:
        raise ValueError(f"{category}:{event}: format file lists no fields")
    return TracepointFormat(category, event, tuple(sorted(fields, key=lambda f: f.offset)), print_fmt)


def read_format(category: str, event: str, tracefs: Path | None = None) -> TracepointFormat:
    """Read and parse one tracepoint's format file; FileNotFoundError when the kernel lacks it."""
    root = tracefs or tracefs_root()
    if root is None:
        raise FileNotFoundError("tracefs is not mounted (no /sys/kernel/tracing/events)")
    path = root / "events" / category / event / "format"
    return parse_format(category, event, path.read_text())


def symbolic_values(print_fmt: str, field: str) -> dict[int, str]:
    """The ``__print_symbolic(REC-><field>, {value, "NAME"}, ...)`` table of a print format.

    Entries whose value is a kernel macro rather than a number are skipped: user space
    cannot resolve them. Returns an empty dict when the field has no symbolic table.
    """
    start = print_fmt.find(f"__print_symbolic(REC->{field},")
    if start < 0:
        return {}
    depth = 0
    end = len(print_fmt)
    for i in range(start + len("__print_symbolic"), len(print_fmt)):
        ch = print_fmt[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                end = i
                break
    table: dict[int, str] = {}
    for value, name in re.findall(r"\{\s*([-\w]+)\s*,\s*\"([^\"]*)\"\s*\}", print_fmt[start:end]):
        try:
            table[int(value, 0)] = name
        except ValueError:
            continue
    return table


_C_SCALAR = {1: "8", 2: "16", 4: "32", 8: "64"}


def render_struct(fmt: TracepointFormat) -> str:
    """C declarations for one tracepoint: its record struct at the kernel's offsets, and feature macros.

    Fields are declared by size and signedness (never by the kernel's type names,
    which older headers may lack, e.g. ``enum sk_rst_reason``); gaps become explicit
    padding, and a static assertion pins every offset.
    """
    lines = [f"struct {fmt.struct_name} {{"]
    asserts: list[str] = []
    cursor = 0
    for i, f in enumerate(fmt.fields):
        if f.offset < cursor:
            raise ValueError(f"{fmt.tracepoint}: field {f.name} overlaps the previous one")
        if f.offset > cursor:
            lines.append(f"    u8 __x0_pad{i}[{f.offset - cursor}];")
        prefix = "s" if f.signed else "u"
        if f.decl.startswith("__data_loc") or f.decl.startswith("__rel_loc"):
            lines.append(f"    u32 {f.name};")
        elif f.array_len:
            elem = f.size // f.array_len if f.size % f.array_len == 0 else 0
            if elem in _C_SCALAR and f.offset % elem == 0:
                lines.append(f"    {prefix}{_C_SCALAR[elem]} {f.name}[{f.array_len}];")
            else:
                lines.append(f"    u8 {f.name}[{f.size}];")
        elif f.size in _C_SCALAR and f.offset % f.size == 0:
            lines.append(f"    {prefix}{_C_SCALAR[f.size]} {f.name};")
        else:
            lines.append(f"    u8 {f.name}[{f.size}];")
        asserts.append(
            f"_Static_assert(__builtin_offsetof(struct {fmt.struct_name}, {f.name}) == {f.offset}, "
            f'"{fmt.tracepoint} {f.name} offset");'
        )
        cursor = f.offset + f.size
    lines.append("};")
    lines.extend(asserts)
    tag = f"{fmt.category}__{fmt.event}"
    lines.append(f"#define X0_HAVE__{tag} 1")
    lines.extend(f"#define X0_FIELD__{tag}__{f.name} 1" for f in fmt.fields)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ kernel BTF

#: The running kernel's type information; raw tracepoint prototypes and struct layouts come from it.
BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")

# BTF kinds (include/uapi/linux/btf.h) and the bytes each one's record carries after its 12-byte header.
_BTF_INT, _BTF_PTR, _BTF_ARRAY, _BTF_STRUCT, _BTF_UNION, _BTF_ENUM, _BTF_FWD, _BTF_TYPEDEF = range(1, 9)
_BTF_VOLATILE, _BTF_CONST, _BTF_RESTRICT, _BTF_FUNC, _BTF_FUNC_PROTO = range(9, 14)
_BTF_TYPE_TAG, _BTF_ENUM64 = 18, 19
_BTF_EXTRA_FIXED = {_BTF_INT: 4, _BTF_ARRAY: 12, 14: 4, 17: 4}  # INT, ARRAY, VAR, DECL_TAG
_BTF_EXTRA_PER_ITEM = {  # per member, enumerator, parameter, DATASEC variable
    _BTF_STRUCT: 12,
    _BTF_UNION: 12,
    _BTF_ENUM: 8,
    _BTF_FUNC_PROTO: 8,
    15: 12,
    _BTF_ENUM64: 12,
}
#: Qualifiers and tags a type resolves through to reach the type it qualifies.
_BTF_QUALIFIERS = (_BTF_VOLATILE, _BTF_CONST, _BTF_RESTRICT, _BTF_TYPE_TAG)


@dataclasses.dataclass(frozen=True)
class BtfScalar:
    """A value as the kernel stores it: C type name (qualifiers dropped), size in bytes, signedness."""

    type_name: str
    size: int
    signed: bool
    pointer: bool = False


@dataclasses.dataclass(frozen=True)
class BtfMember:
    """A scalar member of a kernel struct: byte offset from the start of the struct, and its value."""

    struct_name: str
    path: str
    offset: int
    struct_size: int
    value: BtfScalar


class KernelBtf:
    """Just enough of a BTF blob (/sys/kernel/btf/vmlinux) to resolve raw tracepoint prototypes and
    scalar struct members at the running kernel's offsets (kernel headers may be of another version)."""

    def __init__(self, data: bytes) -> None:
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            "<HBBIIIII", data, 0
        )
        if magic != 0xEB9F:
            raise ValueError(f"not BTF (magic {magic:#x})")
        self._data = data
        self._strs = data[hdr_len + str_off : hdr_len + str_off + str_len]
        #: type id -> (record offset in data, name offset, info, size-or-type); id 0 is void
        self._types: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)]
        self._by_name: dict[tuple[int, int], int] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            kind, vlen = info >> 24 & 0x1F, info & 0xFFFF
            if name_off:
                self._by_name.setdefault((name_off, kind), len(self._types))
            self._types.append((pos, name_off, info, size_or_type))
            pos += 12 + _BTF_EXTRA_FIXED.get(kind, 0) + _BTF_EXTRA_PER_ITEM.get(kind, 0) * vlen

    def _str(self, off: int) -> str:
        return self._strs[off : self._strs.index(b"\0", off)].decode()

    def find(self, name: str, kind: int) -> int | None:
        """The id of the type ``name`` of ``kind``; None when there is none."""
        needle = b"\0" + name.encode() + b"\0"
        off = self._strs.find(needle)
        while off >= 0:  # vmlinux strings are deduplicated, so this normally runs once
            tid = self._by_name.get((off + 1, kind))
            if tid is not None:
                return tid
            off = self._strs.find(needle, off + 1)
        return None

    def _kind(self, tid: int) -> int:
        return self._types[tid][2] >> 24 & 0x1F

    def _items(self, tid: int, width: int) -> list[tuple[int, ...]]:
        pos, _, info, _ = self._types[tid]
        fmt = "<III" if width == 12 else "<II"
        return [struct.unpack_from(fmt, self._data, pos + 12 + width * i) for i in range(info & 0xFFFF)]

    def _strip(self, tid: int) -> int:
        while self._kind(tid) in _BTF_QUALIFIERS:
            tid = self._types[tid][3]
        return tid

    def type_name(self, tid: int) -> str:
        """C spelling of a type without qualifiers, pointers as ``T*`` (``struct sock*``, ``void*``)."""
        tid = self._strip(tid)
        if tid == 0:
            return "void"
        kind, name = self._kind(tid), self._str(self._types[tid][1])
        if kind == _BTF_PTR:
            return self.type_name(self._types[tid][3]) + "*"
        prefix = {_BTF_STRUCT: "struct ", _BTF_UNION: "union ", _BTF_ENUM: "enum ", _BTF_ENUM64: "enum "}
        return prefix.get(kind, "") + name

    def scalar(self, tid: int) -> BtfScalar | None:
        """How a value of type ``tid`` is stored; None for aggregates, bitfield-only ints and void."""
        name = self.type_name(tid)
        tid = self._strip_typedefs(tid)
        pos, _, info, size = self._types[tid]
        kind = self._kind(tid)
        if kind == _BTF_PTR:
            return BtfScalar(name, 8, False, pointer=True)
        if kind in (_BTF_ENUM, _BTF_ENUM64):
            return BtfScalar(name, size, bool(info >> 31))
        if kind == _BTF_INT:
            (enc,) = struct.unpack_from("<I", self._data, pos + 12)
            if enc & 0xFF != size * 8 or enc >> 16 & 0xFF:
                return None
            return BtfScalar(name, size, bool(enc >> 24 & 1))
        return None

    def tracepoint_args(self, event: str) -> list[BtfScalar] | None:
        """The arguments a raw tracepoint passes (its TP_PROTO), from the kernel's ``btf_trace_<event>``
        typedef; None when the kernel has no such tracepoint."""
        tid = self.find(f"btf_trace_{event}", _BTF_TYPEDEF)
        if tid is None:
            return None
        ptr = self._strip(self._types[tid][3])
        proto = self._strip(self._types[ptr][3]) if self._kind(ptr) == _BTF_PTR else 0
        if self._kind(proto) != _BTF_FUNC_PROTO:
            raise ValueError(f"btf_trace_{event} is not a pointer to a function prototype")
        args: list[BtfScalar] = []
        for _, arg_type in self._items(proto, 8)[1:]:  # the first argument is the tracepoint's __data
            value = self.scalar(arg_type)
            if value is None:
                raise ValueError(f"raw tracepoint {event} passes {self.type_name(arg_type)} by value")
            args.append(value)
        return args

    def member(self, struct_name: str, path: str) -> BtfMember:
        """The scalar at ``struct_name.path`` (C member syntax; anonymous structs/unions are transparent).

        Raises:
            LookupError: no such struct or member, or the member is a bitfield or not a scalar.
        """
        tid = self.find(struct_name, _BTF_STRUCT) or self.find(struct_name, _BTF_UNION)
        if tid is None:
            raise LookupError(f"the kernel has no struct {struct_name}")
        where, offset_bits, cur = f"struct {struct_name}", 0, tid
        for part in path.split("."):
            found = self._find_member(cur, part)
            if found is None:
                raise LookupError(f"{where} has no member {part!r}")
            bits, cur, bitfield = found
            if bitfield:
                raise LookupError(f"{where}.{part} is a bitfield")
            offset_bits += bits
            where = f"{where}.{part}"
        value = self.scalar(cur)
        if value is None or offset_bits % 8:
            raise LookupError(f"{where} is not a scalar at a byte offset ({self.type_name(cur)})")
        return BtfMember(struct_name, path, offset_bits // 8, self._types[tid][3], value)

    def _find_member(self, tid: int, name: str) -> tuple[int, int, bool] | None:
        """``(bit offset, type id, is a bitfield)`` of member ``name`` of the struct/union ``tid``,
        looking into anonymous members as C does; None when there is none (or ``tid`` is no aggregate)."""
        tid = self._strip_typedefs(tid)
        if self._kind(tid) not in (_BTF_STRUCT, _BTF_UNION):
            return None
        kind_flag = bool(self._types[tid][2] >> 31)  # member offsets carry a bitfield size
        for name_off, mtype, moff in self._items(tid, 12):
            bits, bitfield = (moff & 0xFFFFFF, moff >> 24 != 0) if kind_flag else (moff, False)
            if name_off == 0:
                inner = self._find_member(mtype, name)
                if inner is not None:
                    return bits + inner[0], inner[1], inner[2]
            elif self._str(name_off) == name:
                return bits, mtype, bitfield
        return None

    def _strip_typedefs(self, tid: int) -> int:
        tid = self._strip(tid)
        while self._kind(tid) == _BTF_TYPEDEF:
            tid = self._strip(self._types[tid][3])
        return tid


@functools.cache
def running_btf() -> KernelBtf:
    """The running kernel's BTF, parsed once per process; OSError/ValueError when it has none."""
    return KernelBtf(BTF_VMLINUX.read_bytes())


def _c_scalar(value: BtfScalar) -> str:
    """The C type a program sees a kernel value as: pointers as ``const void *`` (never dereferenced
    directly: the kernel headers' layouts may not be the running kernel's), integers by size and sign."""
    if value.pointer:
        return "const void *"
    return ("s" if value.signed else "u") + _C_SCALAR[value.size]


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


# ----------------------------------------------------------------------------------- program sources


def bpf_dir() -> Path:
    """Directory of the .c programs: $X0TTA6BL4_BPF_DIR, else the repository's bpf/."""
    env = os.environ.get("X0TTA6BL4_BPF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "bpf"


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


# ---------------------------------------------------------------------------------------------- loading


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


def _prelude(
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

    prelude = _prelude(source, formats, raw_args, (directory or bpf_dir()) / PRELUDE_NAME)
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


# -------------------------------------------------------------------------------------- reading maps


def _is_percpu(table: Any) -> bool:
    from bcc.table import PerCpuArray, PerCpuHash

    return isinstance(table, (PerCpuArray, PerCpuHash))


def _batch(table: Any, delete: bool) -> tuple[Any, Any, int]:
    """All (keys, values) of a map via the kernel's batch ops; drains it when ``delete``.

    BCC 0.26's own batch iterator aliases its count and batch-token variables, so
    the syscall is driven here with separate ones.
    """
    from bcc.libbcc import lib

    cap = int(table.max_entries)
    keys = (table.Key * cap)()
    values = (table.Leaf * cap)()
    fn = lib.bpf_lookup_and_delete_batch if delete else lib.bpf_lookup_batch
    token_in, token_out, count = ct.c_uint32(0), ct.c_uint32(0), ct.c_uint32(0)
    total, first = 0, True
    ksz, vsz = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
    while total < cap:
        count.value = cap - total
        res = fn(
            table.map_fd,
            None if first else ct.byref(token_in),
            ct.byref(token_out),
            ct.byref(keys, ksz * total),
            ct.byref(values, vsz * total),
            ct.byref(count),
        )
        err = ct.get_errno()
        total += count.value
        if res != 0:
            if err == errno.ENOENT:
                break
            raise OSError(err, os.strerror(err))
        if count.value == 0:
            break
        token_in.value = token_out.value
        first = False
    return keys, values, total


def read_u64_map(table: Any, *, drain: bool = False) -> tuple[npt.NDArray[np.int64], U64Array]:
    """Keys and u64-field values of a map whose values are made of u64s; per-CPU values are summed.

    Returns ``keys [n]`` and ``values [n, fields]``. With ``drain`` the entries are
    deleted atomically as they are read (kernel lookup-and-delete batch), so nothing
    counted between the read and the delete is lost.
    """
    leaf = table.sLeaf if _is_percpu(table) else table.Leaf
    fields = ct.sizeof(leaf) // 8
    ncpu = int(table.total_cpu) if _is_percpu(table) else 1
    try:
        keys, values, n = _batch(table, drain)
        raw = np.frombuffer(values, dtype=np.uint64, count=n * ncpu * fields)
        key_arr = np.frombuffer(keys, dtype=np.dtype(f"u{ct.sizeof(table.Key)}"), count=n).astype(np.int64)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, 524):
            raise
        # Kernels without batch ops: walk the keys (a drain may lose what lands in between).
        items = list(table.items())
        n = len(items)
        key_arr = np.array([k.value if hasattr(k, "value") else 0 for k, _ in items], dtype=np.int64)
        buf = (table.Leaf * max(n, 1))()
        for i, (_, v) in enumerate(items):
            buf[i] = v
        raw = np.frombuffer(buf, dtype=np.uint64, count=n * ncpu * fields)
        if drain:
            for k, _ in items:
                with contextlib.suppress(KeyError):
                    del table[k]
    return key_arr, raw.reshape(n, ncpu, fields).sum(axis=1, dtype=np.uint64)


def read_u64_array(table: Any) -> U64Array:
    """Cumulative values of an array map of u64s (or u64 structs), indexed like the map: ``[n, fields]``."""
    keys, values = read_u64_map(table)
    out = np.zeros((int(table.max_entries), values.shape[1]), dtype=np.uint64)
    out[keys] = values
    return out


# ---------------------------------------------------------------------------------------- collectors


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
    """

    program: ClassVar[str] = ""

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


COLLECTORS: dict[str, type[ProgramCollector]] = {
    c.program: c
    for c in (
        TcpRetransmitCollector,
        TcpStateCollector,
        TcpRttCollector,
        SkbDropsCollector,
        RunqlatCollector,
        NetBytesCollector,
    )
}


# --------------------------------------------------------------------------------------- program sets


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
            try:
                samples[name] = collector.read(dt)
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
