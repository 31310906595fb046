"""Typed errors shared across the platform; the CLI turns them into one line and exit 2."""

from __future__ import annotations

from typing import Any


def _rebuild(cls: type[X0tta6bl4Error], args: tuple[Any, ...], state: dict[str, Any]) -> X0tta6bl4Error:
    """An unpickled error: its message and attributes, without calling ``cls.__init__`` again."""
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class X0tta6bl4Error(Exception):
    """Base class of every error the platform raises on purpose.

    Errors cross Ray (an actor or a replica raises, the caller gets it), so every subclass
    pickles as its message and attributes whatever its constructor takes: the default pickling
    calls ``cls(*args)``, which fails for a constructor with other parameters than the message.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class ConfigError(X0tta6bl4Error, ValueError):
    """Invalid user input: configuration, options, identifiers. Refused before anything starts."""
