"""An ASGI middleware that names each request's caller: the SPIFFE ID the mTLS front verified.

The front adds the verified ID and its secret token; the gateway believes the ID only with the
token (constant-time compare), so a process that reaches Serve's loopback port directly cannot
claim an identity. With a token configured (``app.state.front_token``) every request without
it is refused 401; without one (plain HTTP, development) every caller is :data:`ANONYMOUS`.
"""

from __future__ import annotations

import json
from typing import Any

from x0tta6bl4.security.front_token import FRONT_TOKEN_HEADER, PEER_ID_HEADER, token_matches
from x0tta6bl4.serve._private.limits import ASGIApp, Receive, Scope, Send

#: The caller of a request when the app runs without the front (development only).
ANONYMOUS = "anonymous"

_TOKEN = FRONT_TOKEN_HEADER.lower().encode()
_PEER = PEER_ID_HEADER.lower().encode()


class CallerMiddleware:
    """Sets ``scope["state"]["caller"]``, or answers 401 JSON for requests that bypassed the front."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = getattr(scope.get("app"), "state", None)
        expected: str | None = getattr(state, "front_token", None)
        caller = ANONYMOUS
        if expected is not None:
            headers = dict(scope.get("headers", []))
            token = headers.get(_TOKEN)
            peer = headers.get(_PEER)
            if peer is None or not token_matches(expected, token.decode("latin-1") if token else None):
                await _unauthenticated(send)
                return
            caller = peer.decode("latin-1")
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def caller_of(request: Any) -> str:
    """The caller the middleware recorded for a Starlette request."""
    return str(getattr(request.state, "caller", ANONYMOUS))


async def _unauthenticated(send: Send) -> None:
    body = json.dumps(
        {
            "error": "unauthenticated",
            "message": "this app is reached through the mTLS front (x0tta6bl4 serve prints its address)",
            "details": [],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
