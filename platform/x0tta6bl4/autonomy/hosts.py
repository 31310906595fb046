"""The run's real hosts: one EbpfSource per Ray node, polled by the run and reported at its end."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from x0tta6bl4.autonomy.config import RunConfig
from x0tta6bl4.mesh.topology import Topology
from x0tta6bl4.observability.metrics import domain_metrics

log = logging.getLogger(__name__)

#: Host telemetry sources lost (counted with the run's other recoveries).
_RECOVERY = domain_metrics("recovery")


def start_hosts(config: RunConfig, topology: Topology) -> dict[int, Any]:
    """One EbpfSource per Ray node (procfs fallback reported by each), keyed by its mesh node id.

    Real hosts join the mesh after the simulated nodes: host ``i`` is node ``N + i``.
    """
    if not config.ebpf:
        return {}
    from x0tta6bl4.telemetry.source import start_sources

    ids = {ray_node: topology.num_nodes + i for i, ray_node in enumerate(ray_node_ids())}
    handles = start_sources(ids)
    return {ids[ray_node]: handle for ray_node, handle in handles.items()}


def ray_node_ids() -> list[str]:
    import ray

    return sorted(str(n["NodeID"]) for n in ray.nodes() if n.get("Alive"))


def poll_hosts(hosts: list[Any]) -> list[Any]:
    import ray

    try:
        return list(ray.get([h.poll.remote() for h in hosts], timeout=30))
    except Exception as exc:
        _RECOVERY["host_failures"].inc()
        log.warning("polling host telemetry failed: %s", exc)
        return []


def stop_hosts(hosts: list[Any]) -> None:
    import ray

    for handle in hosts:
        ray.kill(handle)


def host_status(ray: Any, handle: Any, tries: int = 3) -> dict[str, Any]:
    """A host source's status; a source that is restarting is asked again, one that stays away is said so."""
    error: Exception | None = None
    for _ in range(tries):
        try:
            status: dict[str, Any] = ray.get(handle.status.remote(), timeout=30)
            return status
        except Exception as exc:  # RayActorError, GetTimeoutError: it may be restarting
            error = exc
            time.sleep(1.0)
    _RECOVERY["host_failures"].inc()
    return {"source": "unavailable", "error": f"{type(error).__name__}: {error}"[:300]}


def host_report(hosts: dict[int, Any], frames: list[Any], topology: Topology) -> list[dict[str, Any]]:
    """Each host's telemetry source, why eBPF is off (if it is), and where it joins the mesh."""
    import ray

    statuses = [host_status(ray, h) for h in hosts.values()]
    gateways = np.flatnonzero(topology.gateways)
    out = []
    for i, (mesh_id, status) in enumerate(zip(hosts, statuses, strict=True)):
        entry = dict(status)
        entry["mesh_node_id"] = mesh_id
        entry["linked_to_gateway"] = int(gateways[i % gateways.size])
        if i < len(frames):
            entry["last_frame"] = frames[i].to_dict()
        out.append(entry)
    return out
