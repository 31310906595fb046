"""The one place the platform connects to Ray (and, later, where mTLS contexts are made)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from x0tta6bl4 import RAY_NAMESPACE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayConnection:
    """How this process reached Ray."""

    address: str
    started_here: bool
    dashboard_url: str | None


def platform_actor_options(name: str, **extra: Any) -> dict[str, Any]:
    """Ray options of a named platform actor: detached in the platform's namespace, restarted forever.

    ``num_cpus=0``: these actors mostly wait, and must not hold cores that tasks need.
    ``extra`` adds or overrides options (e.g. ``scheduling_strategy``).
    """
    return {
        "name": name,
        "namespace": RAY_NAMESPACE,
        "lifetime": "detached",
        "num_cpus": 0,
        "max_restarts": -1,
        **extra,
    }


def connect_ray(
    address: str | None = None, num_cpus: int | None = None, dashboard: bool = True
) -> RayConnection:
    """Join a Ray cluster, or start a local one.

    Order: the explicit ``address``; ``RAY_ADDRESS`` (set by ``ray job submit``); a
    cluster started with ``ray start`` on this machine; otherwise a new local Ray.
    Everything runs in the platform's namespace so named actors find each other.
    """
    # Keep Ray from rewriting accelerator variables for zero-GPU workers (and from warning about it).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return RayConnection(ctx.gcs_address, False, None)
    target = address or os.environ.get("RAY_ADDRESS")
    if target is None and _local_cluster_alive():
        target = "auto"
    if target is not None:
        info = ray.init(address=target, namespace=RAY_NAMESPACE, log_to_driver=False)
        return RayConnection(info.address_info["gcs_address"], False, info.dashboard_url or None)
    info = ray.init(
        namespace=RAY_NAMESPACE,
        num_cpus=num_cpus,
        include_dashboard=dashboard,
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    return RayConnection(info.address_info["gcs_address"], True, info.dashboard_url or None)


def _local_cluster_alive() -> bool:
    """True when `ray start` left a cluster address file whose GCS answers."""
    import socket

    path = "/tmp/ray/ray_current_cluster"
    try:
        with open(path, encoding="utf-8") as fh:
            host, _, port = fh.read().strip().rpartition(":")
    except OSError:
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


def disconnect_ray(conn: RayConnection) -> None:
    """Shut down Ray if this process started it; otherwise just detach."""
    # Keep Ray from rewriting accelerator variables for zero-GPU workers (and from warning about it).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    if ray.is_initialized():
        ray.shutdown()
    del conn


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for test and benchmark servers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
