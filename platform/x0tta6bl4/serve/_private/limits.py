"""ASGI middlewares: bodies over a per-route byte limit or over the in-flight budget are refused
before they are read, and an unexpected exception is still a JSON answer."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLargeError(Exception):
    """Raised inside the app when a streamed body passes its limit."""


class BodyBudgetError(Exception):
    """Raised inside the app when a streamed body would take the bodies in flight over their budget."""


def app_path(scope: Scope) -> str:
    """The request's path inside the app (without the ``root_path`` a route prefix adds)."""
    root = scope.get("root_path", "")
    path: str = scope["path"]
    return path[len(root) :] if root and path.startswith(root) else path


def error_body(kind: str, message: str) -> bytes:
    """A JSON error body, as every answer of the gateway has it (see ``serve.schemas.ErrorBody``)."""
    return json.dumps({"error": kind, "message": message, "details": []}).encode()


def _too_large(limit: int) -> bytes:
    return error_body("payload_too_large", f"request body is larger than this route accepts ({limit} bytes)")


def _over_budget(budget: int) -> bytes:
    return error_body(
        "overloaded", f"request bodies in flight would pass this replica's budget ({budget} bytes); try again"
    )


class BodyLimitMiddleware:
    """Answers 413 with a JSON error when a body exceeds its route's limit.

    A ``Content-Length`` over the limit is refused at once; a chunked body is counted as it
    streams and cut off at the limit. Routes are matched by exact path (after the root path).
    A Starlette app may override the limits at run time with ``app.state.body_limits_bytes``.

    The bodies of all requests in flight together are bounded too (each route's limit alone
    still lets hundreds of concurrent requests buffer gigabytes): a request whose body would
    take them over ``inflight_bytes`` is answered 503 with ``Retry-After`` instead (override:
    ``app.state.inflight_body_bytes``).

    Args:
        app: the wrapped ASGI app.
        limits_bytes: path -> largest body in bytes; ``default_bytes`` for paths not listed.
        default_bytes: limit for every other path.
        inflight_bytes: most body bytes of all requests in flight at once.
    """

    def __init__(
        self,
        app: ASGIApp,
        limits_bytes: dict[str, int] | None = None,
        default_bytes: int = 1 << 20,
        inflight_bytes: int = 256 << 20,
    ) -> None:
        self.app = app
        self.limits_bytes = dict(limits_bytes or {})
        self.default_bytes = default_bytes
        self.inflight_bytes = inflight_bytes
        self.inflight = 0  # body bytes of the requests in flight (declared or received so far)

    def limit_for(self, path: str, scope: Scope | None = None) -> int:
        state = getattr(scope.get("app"), "state", None) if scope is not None else None
        limits = getattr(state, "body_limits_bytes", None) or self.limits_bytes
        return int(limits.get(path.rstrip("/") or "/", self.default_bytes))

    def budget(self, scope: Scope) -> int:
        state = getattr(scope.get("app"), "state", None)
        return int(getattr(state, "inflight_body_bytes", None) or self.inflight_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = app_path(scope)
        limit = self.limit_for(path, scope)
        budget = self.budget(scope)
        declared = 0
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await self._reply(send, 413, _too_large(limit))
                    return
        declared = max(declared, 0)
        if declared and self.inflight + declared > budget:
            await self._reply(send, 503, _over_budget(budget), retry_after=b"1")
            return
        reserved = declared  # what this request counts in self.inflight
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen, reserved
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError
                if seen > reserved:  # a chunked body (or one longer than declared) counts as it comes
                    if self.inflight + seen - reserved > budget:
                        raise BodyBudgetError
                    self.inflight += seen - reserved
                    reserved = seen
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        self.inflight += reserved
        try:
            await self.app(scope, counted_receive, tracking_send)
        except BodyTooLargeError:
            if not started:
                await self._reply(send, 413, _too_large(limit))
        except BodyBudgetError:
            if not started:
                await self._reply(send, 503, _over_budget(budget), retry_after=b"1")
        finally:
            self.inflight -= reserved

    @staticmethod
    async def _reply(send: Send, status: int, body: bytes, retry_after: bytes | None = None) -> None:
        await reply(send, status, body, retry_after)


async def reply(send: Send, status: int, body: bytes, retry_after: bytes | None = None) -> None:
    """Send a whole JSON answer (``Retry-After`` when given)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", retry_after))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class JsonErrorsMiddleware:
    """The outermost safety net: an exception nothing else handled is logged and answered as a JSON 500.

    Without it Starlette answers plain text; handlers registered for ``Exception`` run in
    Starlette's outermost middleware, which re-raises after answering. An exception after the
    answer started cannot be answered any more and is raised on.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error answering %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            body = error_body("internal", "the service failed to answer this request (logged)")
            await reply(send, 500, body)
