"""Every metric the platform exports, defined in one place (Ray metrics, scraped by Prometheus)."""

from __future__ import annotations

import functools
from typing import Any

#: Tag keys shared by the mesh metrics.
MESH_TAGS = ("region",)


@functools.cache
def mesh_metrics() -> dict[str, Any]:
    """The MeshShard metrics, created once per process (needs a connected Ray worker or driver).

    Exported through Ray's metrics agent as ``ray_x0tta6bl4_mesh_*`` on each node's
    Prometheus endpoint, alongside Ray's own metrics and its Grafana dashboards.
    """
    from ray.util.metrics import Counter, Gauge, Histogram

    return {
        "ticks": Counter("x0tta6bl4_mesh_ticks", "Ticks simulated by a MeshShard.", tag_keys=MESH_TAGS),
        "step_s": Histogram(
            "x0tta6bl4_mesh_step_seconds",
            "Wall time of one MeshShard step.",
            boundaries=[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0],
            tag_keys=MESH_TAGS,
        ),
        "faulty_nodes": Gauge(
            "x0tta6bl4_mesh_faulty_nodes",
            "Nodes with an active fault (simulation ground truth).",
            tag_keys=MESH_TAGS,
        ),
        "serviceable_nodes": Gauge(
            "x0tta6bl4_mesh_serviceable_nodes", "Nodes with a route and < 20 % loss.", tag_keys=MESH_TAGS
        ),
        "restores": Counter(
            "x0tta6bl4_mesh_restores",
            "MeshShard restarts that resumed from a checkpoint.",
            tag_keys=MESH_TAGS,
        ),
        "actions": Counter(
            "x0tta6bl4_mesh_actions", "Remediation actions applied.", tag_keys=(*MESH_TAGS, "action")
        ),
    }
