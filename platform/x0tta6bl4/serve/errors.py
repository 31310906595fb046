"""Errors the serve package raises on purpose; only the gateway turns them into HTTP answers."""

from __future__ import annotations

from typing import Any

from x0tta6bl4.errors import X0tta6bl4Error


class RequestError(X0tta6bl4Error):
    """A request the service refuses; ``status`` is the HTTP status it maps to (always 4xx)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 422,
        kind: str = "invalid_request",
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind
        self.details = details or []

    def body(self) -> dict[str, Any]:
        """The JSON error body (see :class:`~x0tta6bl4.serve.schemas.ErrorBody`)."""
        return {"error": self.kind, "message": self.message, "details": self.details}


class ModelChangedError(RequestError):
    """The served model's features are no longer the ones a snapshot was checked against (409).

    The gateway fetches the new feature order, re-checks the snapshot and asks again.
    """

    def __init__(self, message: str = "the served model's features changed; re-check the snapshot") -> None:
        super().__init__(message, status=409, kind="model_changed")


class GatewayTimeoutError(X0tta6bl4Error):
    """A deployment gave no answer within the gateway's request timeout (504)."""


def deployment_error(exc: BaseException) -> BaseException:
    """The typed error a deployment raised, else ``exc`` itself.

    Ray delivers an exception raised in a replica as a ``RayTaskError`` subclass of its type, whose
    text is the remote traceback; the replica's own exception, message included, is its ``cause``.
    Exceptions a deployment returns as per-item results arrive as themselves.
    """
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError) and isinstance(exc.cause, X0tta6bl4Error):
        return exc.cause
    return exc
