"""The scheduling priority (nice value) of the thread that runs a replica's model."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)


class ComputePriority:
    """Gives the thread that calls :meth:`apply` the nice value ``nice`` (Linux sets it per thread).

    Why: Ray runs a worker's Python threads at nice 15 (``worker_niceness``) while the RPC threads
    of every worker (the HTTP proxy's included), the raylet and the GCS keep nice 0. On a node
    whose cores the proxy and the gateway share with a replica, their wake-ups then preempt the
    model thread, which waits for a core while runnable (``/proc/<pid>/task/<tid>/schedstat``;
    docs/performance.md has the figures at nice 15 and at nice 0).

    Lowering a nice value needs ``CAP_SYS_NICE`` (root has it). Without it the thread keeps Ray's
    value, one warning is logged, and :meth:`describe` says why.

    Args:
        nice: the nice value to set, from -20 (most CPU) to 19; ``None`` leaves Ray's value.
    """

    def __init__(self, nice: int | None) -> None:
        if nice is not None and not -20 <= nice <= 19:
            raise ValueError(f"a nice value is between -20 and 19, got {nice}")
        self.nice = nice
        self.error: str | None = None
        self._thread: int | None = None

    def apply(self) -> None:
        """Set the calling thread's nice value, once per thread (a no-op after a refusal)."""
        thread = threading.get_native_id()
        if self.nice is None or self.error is not None or thread == self._thread:
            return
        self._thread = thread
        try:
            os.setpriority(os.PRIO_PROCESS, thread, self.nice)
        except OSError as exc:
            self.error = f"cannot set nice {self.nice} on the compute thread: {exc.strerror}"
            log.warning("%s; it keeps nice %d (grant CAP_SYS_NICE to change it)", self.error, _nice(thread))

    def describe(self) -> dict[str, Any]:
        """The nice value asked for, the one the compute thread has, and why they differ (if they do)."""
        return {
            "requested_nice": self.nice,
            "nice": _nice(self._thread) if self._thread is not None else None,
            "error": self.error,
        }


def _nice(thread: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, thread)
    except OSError:  # the thread has ended
        return None
