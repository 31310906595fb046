"""Live streams' baselines per owner, bounded so that no caller can evict another's streams."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from x0tta6bl4.serve.errors import RequestError

T = TypeVar("T")


class StreamTable(Generic[T]):
    """Stream state keyed by :func:`~x0tta6bl4.serve.snapshot.stream_key` (``<owner digest>.<name>``).

    Each owner holds at most ``max_per_owner`` streams; a new one beyond that evicts the owner's
    own least recently used stream, never another owner's. A new owner beyond ``max_owners``
    takes the place of an owner idle for ``idle_owner_s``; when none is, it is refused (429)
    instead of displacing anyone who still uses their streams.

    Args:
        max_per_owner: streams one identity may keep (default 8).
        max_owners: identities with streams on one replica (default 64).
        idle_owner_s: after this long unused, an owner's streams may make room (default 600).
        clock: monotonic time source (tests pass their own).
    """

    def __init__(
        self,
        max_per_owner: int = 8,
        max_owners: int = 64,
        idle_owner_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_per_owner = max_per_owner
        self.max_owners = max_owners
        self.idle_owner_s = idle_owner_s
        self._clock = clock
        self._owners: dict[str, OrderedDict[str, T]] = {}
        self._used: dict[str, float] = {}

    def get(self, key: str, factory: Callable[[], T]) -> T:
        """The state of stream ``key``, created by ``factory`` on first use.

        Raises:
            RequestError: 429 when ``key``'s owner is new and the table already has ``max_owners``.
        """
        owner, _, _name = key.partition(".")
        now = self._clock()
        streams = self._owners.get(owner)
        if streams is None:
            if len(self._owners) >= self.max_owners:
                self._drop_idle(now)
            if len(self._owners) >= self.max_owners:
                raise RequestError(
                    f"this replica keeps streams for {self.max_owners} identities; try again later",
                    status=429,
                    kind="too_many_streams",
                )
            streams = self._owners[owner] = OrderedDict()
        self._used[owner] = now
        state = streams.get(key)
        if state is None:
            if len(streams) >= self.max_per_owner:
                streams.popitem(last=False)
            state = streams[key] = factory()
        else:
            streams.move_to_end(key)
        return state

    def _drop_idle(self, now: float) -> None:
        idle = [o for o, t in self._used.items() if now - t >= self.idle_owner_s]
        for owner in idle:
            del self._owners[owner], self._used[owner]

    def __len__(self) -> int:
        return sum(len(s) for s in self._owners.values())
