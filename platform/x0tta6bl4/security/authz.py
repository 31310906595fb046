"""Per-route authorisation of SPIFFE IDs from a policy file (``cluster/authz.yaml``); default deny.

A policy is an ordered list of rules. The first rule whose path pattern and method match a
request decides it: the caller's SPIFFE ID must match one of the rule's ``allow`` patterns.
A request no rule matches is refused. Patterns are literal except for ``*`` (one path segment)
and a trailing ``**`` (any rest), in both paths and IDs::

    rules:
      - path: /v1/rag/documents
        methods: [POST]
        allow: ["spiffe://x0tta6bl4.local/operator/*"]
      - path: /v1/**
        allow: ["spiffe://x0tta6bl4.local/operator/*", "spiffe://x0tta6bl4.local/controller"]
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.observability.metrics import metric
from x0tta6bl4.security.errors import AuthorizationError

#: The policy shipped with the platform (the default of ``x0tta6bl4 serve``).
DEFAULT_POLICY_PATH = Path(__file__).resolve().parents[3] / "cluster" / "authz.yaml"

#: Upper bound on a policy file.
MAX_POLICY_BYTES = 1 << 20

_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

#: Refusals by the rule that refused (its path pattern, or ``none``): bounded by the policy.
_DENIALS = metric("security_authz_denials")


@lru_cache(maxsize=4096)
def _pattern(text: str) -> re.Pattern[str]:
    parts = []
    rest = text
    tail = rest.endswith("/**")
    if tail:
        rest = rest[:-3]
    for i, segment in enumerate(rest.split("/")):
        if i:
            parts.append("/")
        parts.append("[^/]+" if segment == "*" else re.escape(segment))
    return re.compile("".join(parts) + ("(?:/.*)?" if tail else "") + r"\Z")


def matches(pattern: str, value: str) -> bool:
    """True when ``value`` matches ``pattern`` (``*`` is one segment, a trailing ``/**`` any rest)."""
    return _pattern(pattern).match(value) is not None


class Rule(BaseModel):
    """One route rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="path pattern, e.g. /v1/rag/documents or /v1/**")
    methods: tuple[str, ...] = Field(default=(), description="HTTP methods it covers (empty: all)")
    allow: tuple[str, ...] = Field(description="SPIFFE ID patterns allowed on it")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("a path pattern starts with '/'")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        upper = tuple(m.upper() for m in v)
        unknown = set(upper) - _METHODS
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}")
        return upper

    @field_validator("allow")
    @classmethod
    def _allow(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            if not p.startswith("spiffe://"):
                raise ValueError(f"an allow pattern is a SPIFFE ID pattern, got {p[:60]!r}")
        return v

    def covers(self, method: str, path: str) -> bool:
        """True when this rule decides a ``method`` request to ``path``."""
        return (not self.methods or method.upper() in self.methods) and matches(self.path, path)


class Policy(BaseModel):
    """An ordered rule list; the first rule that covers a request decides it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: tuple[Rule, ...] = Field(description="rules in the order they are tried")

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Policy:
        """The policy in a YAML file (default :data:`DEFAULT_POLICY_PATH`); ConfigError when invalid."""
        p = Path(path) if path is not None else DEFAULT_POLICY_PATH
        try:
            with open(p, "rb") as fh:
                text = fh.read(MAX_POLICY_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read the authorisation policy {p}: {exc.strerror or exc}") from None
        if len(text) > MAX_POLICY_BYTES:
            raise ConfigError(f"authorisation policy {p} is larger than {MAX_POLICY_BYTES} bytes")
        try:
            return cls.model_validate(yaml.safe_load(text) or {})
        except (yaml.YAMLError, ValidationError) as exc:
            first = str(exc).splitlines()[0:3]
            raise ConfigError(f"invalid authorisation policy {p}: {' '.join(first)}") from None


def authorise(policy: Policy, spiffe_id: str, method: str, path: str) -> None:
    """Allow or refuse one request; the plain-function authoriser every enforcement point calls.

    Raises:
        AuthorizationError: no rule covers the route, or the covering rule does not allow the ID.
    """
    for rule in policy.rules:
        if rule.covers(method, path):
            if any(matches(p, spiffe_id) for p in rule.allow):
                return
            _DENIALS.inc(tags={"rule": rule.path})
            raise AuthorizationError(f"{spiffe_id} may not {method} {path}")
    _DENIALS.inc(tags={"rule": "none"})
    raise AuthorizationError(f"no rule allows {method} {path}")
