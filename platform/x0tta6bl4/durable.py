"""Crash-safe local file writes: replace atomically or append, fsynced, with the directory entry synced too.

Every writer of durable state (shard checkpoints, the vector index, the retriever's store,
the model registry on local disk) goes through these, so "written" always means the same:
after the call returns, a power loss leaves either the old or the new content, never a torn
or empty file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync a file some other code wrote (a library that writes by file name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename or a new file in it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on a clean exit it is fsynced and renamed over ``path``.

    For writers that take a file name (``np.save``, hnswlib). On an exception the temporary
    file is removed and ``path`` is left as it was.

    Raises:
        OSError: the file cannot be synced or renamed.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically and durably.

    ``mode`` is the new file's permission bits, set when the temporary file is created (before
    any byte is written), so a private key written with ``0o600`` is never readable by others.

    Raises:
        OSError: the file cannot be written.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with replacing(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # exactly `mode`, whatever the umask
            fh.write(payload)


def append_synced(path: str | os.PathLike[str], lines: Sequence[str]) -> None:
    """Append text lines (a newline is added to each) and fsync; a new file's directory is synced too.

    If the file ends in a torn line (a crash mid-append left no final newline), the new lines
    start on a line of their own, so they never merge into the torn one.

    Raises:
        OSError: the file cannot be written.
    """
    target = Path(path)
    existed = target.exists()
    with target.open("a+b") as fh:
        torn = False
        if fh.seek(0, os.SEEK_END) > 0:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
        fh.write((("\n" if torn else "") + "".join(line + "\n" for line in lines)).encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    if not existed:
        fsync_dir(target.parent)
