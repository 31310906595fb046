"""HotSwap: the object a replica serves (a loaded model), swapped only when its successor loads cleanly."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from x0tta6bl4.models.registry import RegistryError

log = logging.getLogger(__name__)

T = TypeVar("T")


class HotSwap(Generic[T]):
    """Holds the object in use (e.g. a loaded model) and swaps it only when the new one loads cleanly.

    Serve calls :meth:`try_swap` when a new version is promoted; if loading raises a RegistryError
    (corrupt, mismatched, missing) the previous object stays in use and the error is kept for health
    reporting.
    """

    def __init__(self, initial: T | None = None, *, name: str = "model") -> None:
        """Start with ``initial`` (or nothing) in use; ``name`` labels log lines."""
        self._current = initial
        self._name = name
        self._lock = threading.Lock()
        self.last_error: str | None = None

    @property
    def current(self) -> T | None:
        """The object in use, or None before the first successful load."""
        return self._current

    def get(self) -> T:
        """The object in use; raises RegistryError if nothing has loaded yet."""
        current = self._current
        if current is None:
            detail = f": {self.last_error}" if self.last_error else ""
            raise RegistryError(f"no {self._name} loaded yet{detail}")
        return current

    def try_swap(self, loader: Callable[[], T]) -> bool:
        """Run ``loader`` and put its result in use; on RegistryError keep the previous object.

        Returns:
            True if swapped, False if the loader failed (the error is logged and kept in ``last_error``).
        """
        try:
            candidate = loader()
        except RegistryError as exc:
            self.last_error = str(exc)
            log.error("%s: keeping the previous version in use: %s", self._name, exc)
            return False
        with self._lock:
            self._current = candidate
            self.last_error = None
        return True
