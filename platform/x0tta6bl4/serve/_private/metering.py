"""ASGI middleware that counts the gateway's answers by route and status code, and times them."""

from __future__ import annotations

import time
from collections.abc import Collection

from x0tta6bl4.observability.metrics import domain_metrics
from x0tta6bl4.serve._private.limits import ASGIApp, Message, Receive, Scope, Send, app_path

_METRICS = domain_metrics("gateway")


class MeteringMiddleware:
    """Records ``x0tta6bl4_gateway_requests{route,code}`` and ``..._request_seconds{route}`` per request.

    ``route`` is the request's path when it is one of ``routes`` (the app's fixed paths) and
    ``other`` otherwise, so a scanner's made-up paths never add series.
    """

    def __init__(self, app: ASGIApp, routes: Collection[str]) -> None:
        self.app = app
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = app_path(scope)
        route = path if path in self.routes else "other"
        started = time.perf_counter()
        code = 500  # an exception that escapes every handler is answered 500 by the server

        async def send_status(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            _METRICS["requests"].inc(tags={"route": route, "code": str(code)})
            _METRICS["request_seconds"].observe(time.perf_counter() - started, tags={"route": route})
