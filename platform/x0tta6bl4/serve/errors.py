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


class ServiceUnavailableError(X0tta6bl4Error):
    """A deployment cannot answer now: its replica died, is restarting or is overloaded (503).

    The caller may try again after ``retry_after_s`` seconds (the ``Retry-After`` header).
    """

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _unavailable_types() -> tuple[type[BaseException], ...]:
    """Errors that say a replica or its node is gone or overloaded, not that the request was wrong."""
    from ray import exceptions as rex
    from ray.serve import exceptions as sex

    return (
        rex.RayActorError,  # ActorDiedError, ActorUnavailableError
        rex.WorkerCrashedError,
        rex.NodeDiedError,
        rex.LocalRayletDiedError,
        rex.RaySystemError,
        rex.ObjectLostError,
        rex.OwnerDiedError,
        rex.OutOfMemoryError,
        rex.TaskCancelledError,
        sex.BackPressureError,
        sex.DeploymentUnavailableError,
        sex.RequestCancelledError,
    )


def deployment_error(exc: BaseException) -> BaseException:
    """The typed error a deployment raised, else ``exc`` itself.

    Ray delivers an exception raised in a replica as a ``RayTaskError`` subclass of its type, whose
    text is the remote traceback; the replica's own exception, message included, is its ``cause``.
    Exceptions a deployment returns as per-item results arrive as themselves. A replica that died,
    restarts or sheds load (Ray's and Serve's system errors, also when they arrive wrapped) is a
    :class:`ServiceUnavailableError`, so the caller gets a 503 with ``Retry-After``, not a 500.
    """
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError) and isinstance(exc.cause, X0tta6bl4Error):
        return exc.cause
    unavailable = _unavailable_types()
    cause = exc.cause if isinstance(exc, RayTaskError) else exc
    if isinstance(cause, unavailable) or isinstance(exc, unavailable):
        name = type(cause).__name__
        first = (str(cause).strip().splitlines() or [""])[0][:300]
        return ServiceUnavailableError(f"a backend replica cannot answer now ({name}: {first})")
    return exc
