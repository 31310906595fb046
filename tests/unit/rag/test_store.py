"""Store: its lock excludes other processes until they release it or die, and refuses an unusable directory."""

import os
import signal
import subprocess
import sys
import time

import pytest

from x0tta6bl4.rag.errors import RetrievalStoreError
from x0tta6bl4.rag.store import Store

HOLD = """
import sys, time
from pathlib import Path
from x0tta6bl4.rag.store import Store
with Store(Path(sys.argv[1]), "fp").lock():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(root, seconds):
    """A process that holds the store lock for ``seconds`` once it has printed ``held``."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_the_lock_waits_for_another_process_until_it_releases_or_dies(tmp_path):
    store = Store(tmp_path / "rag", "fp")
    child = _holder(store.root, 1.5)
    started = time.monotonic()
    with store.lock():
        assert time.monotonic() - started > 1.0  # entered only once the holder let go
    assert child.wait(timeout=30) == 0
    child = _holder(store.root, 600)
    os.kill(child.pid, signal.SIGKILL)  # a crashed holder: the kernel drops its lock
    child.wait(timeout=30)
    started = time.monotonic()
    with store.lock():
        assert time.monotonic() - started < 5


def test_an_unusable_directory_is_a_store_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with (
        pytest.raises(RetrievalStoreError, match="cannot use the store directory"),
        Store(tmp_path / "file" / "rag", "fp").lock(),
    ):
        pass
