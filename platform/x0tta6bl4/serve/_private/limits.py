"""An ASGI middleware that refuses request bodies over a per-route byte limit, before they are read."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLargeError(Exception):
    """Raised inside the app when a streamed body passes its limit."""


def _too_large(limit: int) -> bytes:
    return json.dumps(
        {
            "error": "payload_too_large",
            "message": f"request body is larger than this route accepts ({limit} bytes)",
            "details": [],
        }
    ).encode()


class BodyLimitMiddleware:
    """Answers 413 with a JSON error when a body exceeds its route's limit.

    A ``Content-Length`` over the limit is refused at once; a chunked body is counted as it
    streams and cut off at the limit. Routes are matched by exact path (after the root path).
    A Starlette app may override the limits at run time with ``app.state.body_limits_bytes``.

    Args:
        app: the wrapped ASGI app.
        limits_bytes: path -> largest body in bytes; ``default_bytes`` for paths not listed.
        default_bytes: limit for every other path.
    """

    def __init__(
        self, app: ASGIApp, limits_bytes: dict[str, int] | None = None, default_bytes: int = 1 << 20
    ) -> None:
        self.app = app
        self.limits_bytes = dict(limits_bytes or {})
        self.default_bytes = default_bytes

    def limit_for(self, path: str, scope: Scope | None = None) -> int:
        state = getattr(scope.get("app"), "state", None) if scope is not None else None
        limits = getattr(state, "body_limits_bytes", None) or self.limits_bytes
        return int(limits.get(path.rstrip("/") or "/", self.default_bytes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "")
        path = scope["path"][len(root) :] if root and scope["path"].startswith(root) else scope["path"]
        limit = self.limit_for(path, scope)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await self._reply(send, 413, _too_large(limit))
                    return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except BodyTooLargeError:
            if not started:
                await self._reply(send, 413, _too_large(limit))

    @staticmethod
    async def _reply(send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
