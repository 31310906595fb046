"""Durable writes: atomic replacement that never leaves a torn file, and synced appends."""

import pytest

from x0tta6bl4.durable import append_synced, replacing, write_atomic


def test_write_atomic_replaces_the_content_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, "old")
    write_atomic(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def _crash_while_writing(target):
    with replacing(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("writer crashed")


def test_a_failed_write_keeps_the_previous_content(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, "kept")
    with pytest.raises(RuntimeError, match="writer crashed"):
        _crash_while_writing(target)
    assert target.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_replacing_hands_a_path_to_writers_that_take_file_names(tmp_path):
    target = tmp_path / "matrix.bin"
    with replacing(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


def test_append_synced_adds_lines_to_new_and_existing_files(tmp_path):
    log = tmp_path / "journal.jsonl"
    append_synced(log, ["a", "b"])
    append_synced(log, ["c"])
    assert log.read_text().splitlines() == ["a", "b", "c"]


def test_write_atomic_creates_a_private_file_with_the_mode_asked(tmp_path):
    target = tmp_path / "key.pem"
    write_atomic(target, b"secret", mode=0o600)
    assert target.stat().st_mode & 0o777 == 0o600
    write_atomic(target, b"rotated", mode=0o600)
    assert target.stat().st_mode & 0o777 == 0o600
    assert target.read_bytes() == b"rotated"


_KILLED_WRITER = """
import os, signal, sys
import x0tta6bl4.durable as durable

real = durable.fsync_file
def die_before_rename(path):
    real(path)
    os.kill(os.getpid(), signal.SIGKILL)  # the new content is on disk, not yet renamed
durable.fsync_file = die_before_rename
durable.write_atomic(sys.argv[1], "new content " * 1000)
"""


def test_a_writer_killed_mid_write_leaves_the_previous_content_whole(tmp_path):
    import signal
    import subprocess
    import sys

    target = tmp_path / "PROMOTED.json"
    write_atomic(target, '{"version": "old"}')
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(target)], capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert target.read_text() == '{"version": "old"}'
    write_atomic(target, '{"version": "new"}')  # the next write is unaffected by the leftover
    assert target.read_text() == '{"version": "new"}'


def test_lines_appended_after_a_torn_line_start_on_a_line_of_their_own(tmp_path):
    log = tmp_path / "journal.jsonl"
    log.write_bytes(b'{"tick": 1}\n{"tick": 2, "act')  # a crash mid-append
    append_synced(log, ['{"tick": 3}'])
    assert log.read_text().splitlines() == ['{"tick": 1}', '{"tick": 2, "act', '{"tick": 3}']
