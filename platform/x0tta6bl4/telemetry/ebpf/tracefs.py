"""Tracepoint record layouts from tracefs format files, and the C structs that read them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

#: Where the kernel's tracing file system may be mounted, preferred first.
TRACEFS_CANDIDATES: tuple[Path, ...] = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


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


#: Bit width of the C integer types (u8 ... u64, s8 ... s64) by size in bytes.
C_SCALAR = {1: "8", 2: "16", 4: "32", 8: "64"}


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
            if elem in C_SCALAR and f.offset % elem == 0:
                lines.append(f"    {prefix}{C_SCALAR[elem]} {f.name}[{f.array_len}];")
            else:
                lines.append(f"    u8 {f.name}[{f.size}];")
        elif f.size in C_SCALAR and f.offset % f.size == 0:
            lines.append(f"    {prefix}{C_SCALAR[f.size]} {f.name};")
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
