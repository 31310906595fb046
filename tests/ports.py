"""Port ranges for the `ray start` nodes the tests run beside each other on this one machine."""

from __future__ import annotations

import os

# Every raylet hands its workers (and drivers) ports from the front of its own queue, starting at
# --min-worker-port (10002 by default), so two raylets on one machine with the default range give
# the same ports to workers starting at the same time, and one of them dies on bind (ci: a driver's
# CoreWorker failed in GrpcServer::Run). Each node here gets a slice of its own, above where the
# default range's queues reach, disjoint across xdist workers.
_WORKER_PORTS_BASE, _WORKER_PORTS_SLICE, _WORKER_PORTS_SLICES = 16_000, 200, 20
_slices_taken = 0


def worker_port_range() -> tuple[int, int]:
    """A worker port range of this process's own for the next node (see above)."""
    global _slices_taken
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % workers
    per_worker = _WORKER_PORTS_SLICES // workers
    index = worker * per_worker + _slices_taken % per_worker
    _slices_taken += 1
    low = _WORKER_PORTS_BASE + index * _WORKER_PORTS_SLICE
    return low, low + _WORKER_PORTS_SLICE - 1


def worker_port_flags() -> list[str]:
    """`ray start` flags giving the node a worker port range of its own (:func:`worker_port_range`)."""
    low, high = worker_port_range()
    return [f"--min-worker-port={low}", f"--max-worker-port={high}"]
