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

    def __init__(self) -> None:
        super().__init__(
            "the served model's features changed; re-check the snapshot", status=409, kind="model_changed"
        )
