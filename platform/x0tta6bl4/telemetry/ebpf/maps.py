"""Reads BPF maps of u64 counters into numpy arrays: per-CPU values summed, hash maps drained in batches."""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import os
from typing import Any

import numpy as np
import numpy.typing as npt

U64Array = npt.NDArray[np.uint64]


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
