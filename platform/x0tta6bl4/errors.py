"""Typed errors shared across the platform; the CLI turns them into one line and exit 2."""


class X0tta6bl4Error(Exception):
    """Base class of every error the platform raises on purpose."""


class ConfigError(X0tta6bl4Error, ValueError):
    """Invalid user input: configuration, options, identifiers. Refused before anything starts."""
