"""The running kernel's BTF: raw tracepoint prototypes and struct member layouts."""

from __future__ import annotations

import dataclasses
import functools
import struct
from pathlib import Path

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
