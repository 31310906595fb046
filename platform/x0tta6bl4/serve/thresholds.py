"""Thresholds the controller publishes to every detector replica, without redeploying the app.

A threshold push used to redeploy the anomaly app with the controller's copy of the whole
ServeConfig, undoing whatever an operator had changed since (a pinned model version, replica
counts) and turning a declaratively deployed app imperative. Now the controller writes its
thresholds to a small named actor per app (the board) and every replica follows the board:
only the thresholds change, on every replica, within about a poll interval.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from x0tta6bl4 import RAY_NAMESPACE

#: How often a replica asks the board for newer thresholds.
BOARD_POLL_S = 0.5


def board_name(app_name: str) -> str:
    """Ray actor name of an app's threshold board."""
    return f"anomaly-thresholds-{app_name}"


class ThresholdBoard:
    """Ray actor body: the newest thresholds and their revision.

    Revisions are nanosecond time stamps, so a board that Ray restarted (empty) still hands out
    revisions above those the replicas already applied.
    """

    def __init__(self) -> None:
        self._revision = 0
        self._default = 0.0
        self._per_node: dict[str, float] = {}

    def publish(self, default: float, per_node: dict[str, float]) -> int:
        """Store new thresholds; their revision."""
        self._revision = max(self._revision + 1, time.time_ns())
        self._default = float(default)
        self._per_node = {str(k): float(v) for k, v in per_node.items()}
        return self._revision

    def since(self, revision: int) -> tuple[int, float, dict[str, float]] | None:
        """The thresholds when they are newer than ``revision``, else None."""
        if self._revision <= revision:
            return None
        return self._revision, self._default, self._per_node


def open_board(app_name: str) -> Any:
    """The app's board, created (detached, in the platform's namespace) when it does not exist."""
    import ray

    from x0tta6bl4.connect import platform_actor_options

    options = platform_actor_options(board_name(app_name))
    return ray.remote(ThresholdBoard).options(**options, get_if_exists=True).remote()


def find_board(app_name: str) -> Any | None:
    """The app's board if someone published thresholds for it, else None."""
    import ray

    try:
        return ray.get_actor(board_name(app_name), namespace=RAY_NAMESPACE)
    except ValueError:
        return None


def remove_board(app_name: str) -> None:
    """Forget an app's published thresholds (a new run starts from the model's own)."""
    import ray

    board = find_board(app_name)
    if board is not None:
        with contextlib.suppress(Exception):
            ray.kill(board)
