"""ComputePriority sets the nice value of exactly the thread that applies it, or says why not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from x0tta6bl4.serve._private.priority import ComputePriority

needs_cap_sys_nice = pytest.mark.skipif(os.geteuid() != 0, reason="lowering a nice value needs root")


def _in_thread(fn: Any) -> Any:
    """Run ``fn`` in a fresh thread (so the test's own thread keeps its nice value) and return its result."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


@needs_cap_sys_nice
def test_the_applying_thread_gets_the_nice_value_and_its_siblings_keep_theirs() -> None:
    def work() -> tuple[int, dict[str, Any]]:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, 15)  # as Ray leaves a worker's Python threads
        priority = ComputePriority(0)
        priority.apply()
        return os.getpriority(os.PRIO_PROCESS, me), priority.describe()

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    nice, described = _in_thread(work)
    assert nice == 0
    assert described == {"requested_nice": 0, "nice": 0, "error": None}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


@needs_cap_sys_nice
def test_a_thread_that_takes_over_the_work_is_set_too() -> None:
    priority = ComputePriority(3)
    seen = [_in_thread(lambda: (priority.apply(), os.getpriority(os.PRIO_PROCESS, 0))[1]) for _ in range(2)]
    assert seen == [3, 3]


def test_none_leaves_the_thread_alone() -> None:
    def work() -> tuple[int, int, dict[str, Any]]:
        os.setpriority(os.PRIO_PROCESS, 0, 12)
        priority = ComputePriority(None)
        priority.apply()
        return 12, os.getpriority(os.PRIO_PROCESS, 0), priority.describe()

    asked, nice, described = _in_thread(work)
    assert nice == asked
    assert described["requested_nice"] is None and described["error"] is None


def test_without_the_privilege_the_thread_keeps_its_value_and_the_refusal_is_reported() -> None:
    # A real refusal: a child process without CAP_SYS_NICE (root drops it with util-linux's setpriv)
    # tries to lower its nice value.
    code = """
import json, os
from x0tta6bl4.serve._private.priority import ComputePriority
os.setpriority(os.PRIO_PROCESS, 0, 15)
priority = ComputePriority(0)
priority.apply()
priority.apply()  # a second try does not raise or log again
print(json.dumps({**priority.describe(), "now": os.getpriority(os.PRIO_PROCESS, 0)}))
"""
    drop = ["setpriv", "--bounding-set", "-sys_nice"] if os.geteuid() == 0 else []
    done = subprocess.run(
        [*drop, sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    described = json.loads(done.stdout.strip().splitlines()[-1])
    assert described["now"] == 15
    assert described["nice"] == 15
    assert "cannot set nice 0" in described["error"]
    assert done.stderr.count("grant CAP_SYS_NICE") == 1


def test_an_impossible_nice_value_is_refused() -> None:
    with pytest.raises(ValueError, match="between -20 and 19"):
        ComputePriority(25)
