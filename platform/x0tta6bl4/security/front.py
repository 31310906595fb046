"""The mTLS front: the only way into the Serve apps, which listen on loopback behind it.

Serve's proxy can serve HTTPS but cannot require client certificates, so this asyncio
(aiohttp) server terminates TLS 1.3 with a required client SVID, verifies the peer against the
bundle of its own trust domain and the CRLs (:class:`~x0tta6bl4.security.tls.PeerVerifier`),
authorises its SPIFFE ID for the route (:func:`~x0tta6bl4.security.authz.authorise`), and
forwards the request over keep-alive loopback connections with two headers the gateway
trusts only together: the verified ID and the front's secret token.

Refusals are JSON: 401 when the peer cannot be verified (revoked, expired, untrusted after a
bundle change), 403 when the policy does not allow its ID on that route. Handshakes themselves
fail for TLS < 1.3, a missing client certificate or one no bundle authority signed.

Certificates rotate without interrupting anything: each new handshake takes the context built
from the source's latest SVID and bundles (swapped in ``sni_callback``), and connections that
are already open keep theirs. Each connection's chain is verified once per bundle generation;
revocation and expiry are re-checked on every request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import ssl
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from yarl import URL

from x0tta6bl4.observability.metrics import domain_metrics
from x0tta6bl4.security.authz import Policy, authorise
from x0tta6bl4.security.errors import AuthorizationError, PeerRejectedError
from x0tta6bl4.security.front_token import FRONT_TOKEN_HEADER, PEER_ID_HEADER
from x0tta6bl4.security.source import SvidSource
from x0tta6bl4.security.tls import PeerVerifier, key_exchange_groups, negotiated_group, server_context

log = logging.getLogger(__name__)

#: Default upper bound on a forwarded request body.
DEFAULT_MAX_BODY_BYTES = 64 << 20

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
_OWN_HEADERS = {PEER_ID_HEADER.lower(), FRONT_TOKEN_HEADER.lower()}

_SECURITY = domain_metrics("security")
#: TLS alert descriptions (RFC 8446 §6) the front sends when it refuses a handshake, as the reasons
#: of ``x0tta6bl4_security_handshake_failures`` (the words PeerRejectedError uses where they agree).
_ALERT_REASONS = {
    40: "handshake",
    42: "bad-certificate",
    43: "bad-certificate",
    44: "revoked",
    45: "expired",
    46: "bad-certificate",
    48: "untrusted",
    70: "protocol-version",
    116: "no-certificate",
}
_TLS_ALERT = 21
_FATAL = 2


def watch_alerts(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Count the fatal TLS alerts a server context sends: refused handshakes never reach a handler.

    Uses CPython's ``SSLContext._msg_callback`` (private, present since 3.8): the only hook that
    sees a handshake OpenSSL ends by itself (no client certificate, an unknown CA, TLS < 1.3).
    """

    def seen(_conn: Any, direction: str, _version: Any, content_type: int, _msg: Any, data: bytes) -> None:
        if direction == "write" and content_type == _TLS_ALERT and len(data) == 2 and data[0] == _FATAL:
            _SECURITY["handshake_failures"].inc(tags={"reason": _ALERT_REASONS.get(data[1], "tls-other")})

    ctx._msg_callback = seen  # type: ignore[attr-defined]
    return ctx


@dataclass
class _Verified:
    generation: int
    spiffe_id: str
    leaf: x509.Certificate


@dataclass
class FrontStats:
    """Counters for logs, tests and the benchmark."""

    requests: int = 0
    forwarded: int = 0
    refused_unauthenticated: int = 0
    refused_forbidden: int = 0
    upstream_errors: int = 0
    context_rebuilds: int = 0
    #: Verified connections per negotiated key-exchange group (``unknown`` where unreadable).
    groups: dict[str, int] = field(default_factory=dict)


class MtlsFront:
    """An mTLS reverse proxy that authorises SPIFFE IDs per route.

    Args:
        source: where the front's own SVID, the bundles and the CRLs come from.
        policy: the route policy.
        upstream: base URL of the app behind it (Serve on loopback), e.g. ``http://127.0.0.1:8000``.
        token: the secret the gateway expects in :data:`FRONT_TOKEN_HEADER`.
        max_body_bytes: larger request bodies are refused with 413 before they are read.
        upstream_timeout_s: total time allowed for one forwarded request.
    """

    def __init__(
        self,
        source: SvidSource,
        policy: Policy,
        upstream: str,
        token: str,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        upstream_timeout_s: float = 120.0,
    ) -> None:
        self.source = source
        self.policy = policy
        self.upstream = URL(upstream)
        self._token = token
        self.max_body_bytes = max_body_bytes
        self._timeout = aiohttp.ClientTimeout(total=upstream_timeout_s)
        self.stats = FrontStats()
        self._lock = threading.Lock()
        self._generation = 0
        self._verifier = PeerVerifier(source.bundles(), source.revocations())
        self._current = watch_alerts(server_context(source.svid(), source.bundles()))
        self._cache: weakref.WeakKeyDictionary[Any, _Verified] = weakref.WeakKeyDictionary()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        #: Which key-exchange groups a handshake here can use (probed at start).
        self.key_exchange: dict[str, bool] = {}
        source.subscribe(self._rebuild)

    # ------------------------------------------------------------ TLS contexts

    def _rebuild(self) -> None:
        """Called by the source after a rotation, bundle or CRL change (on its thread)."""
        svid, bundles = self.source.svid(), self.source.bundles()
        ctx = watch_alerts(server_context(svid, bundles))
        verifier = PeerVerifier(bundles, self.source.revocations())
        with self._lock:
            self._current, self._verifier = ctx, verifier
            self._generation += 1
            self.stats.context_rebuilds += 1
        log.info(
            "mTLS front: new context (SVID serial %x, bundle generation %d)", svid.serial, self._generation
        )

    def _pick_context(self, ssl_obj: Any, server_name: str | None, base: ssl.SSLContext) -> None:
        ssl_obj.context = self._current  # the latest SVID and trust for every new handshake

    def _base_context(self) -> ssl.SSLContext:
        ctx = watch_alerts(server_context(self.source.svid(), self.source.bundles()))
        ctx.sni_callback = self._pick_context
        return ctx

    # ------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 8443) -> int:
        """Listen on ``host:port`` (0 picks a free port); returns the port."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
            timeout=self._timeout,
            auto_decompress=False,
        )
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self._base_context(), backlog=1024)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        log.info("mTLS front on https://%s:%d -> %s", host, self.port, self.upstream)
        self.key_exchange = key_exchange_groups(self.source.svid(), self.source.bundles())
        preferred = next((g for g, ok in self.key_exchange.items() if ok), "none")
        log.info(
            "mTLS front key exchange: %s preferred (%s); X25519MLKEM768 %s",
            preferred,
            ssl.OPENSSL_VERSION,
            "offered" if self.key_exchange.get("X25519MLKEM768") else "not offered by this OpenSSL",
        )
        return self.port

    async def stop(self) -> None:
        """Stop listening and close upstream connections."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -------------------------------------------------------------- requests

    def _peer(self, request: web.Request) -> str:
        ssl_obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        if ssl_obj is None:
            raise PeerRejectedError("no-certificate", "TLS is required")
        with self._lock:
            verifier, generation = self._verifier, self._generation
        cached = self._cache.get(ssl_obj)
        if cached is None or cached.generation != generation:
            der = ssl_obj.getpeercert(binary_form=True)
            spiffe_id = str(verifier.verify(der))
            if cached is None:  # a new connection: say how it was secured
                group = negotiated_group(ssl_obj) or "unknown"
                self.stats.groups[group] = self.stats.groups.get(group, 0) + 1
                log.info("mTLS connection from %s: %s, key exchange %s", spiffe_id, ssl_obj.version(), group)
            cached = _Verified(generation, spiffe_id, x509.load_der_x509_certificate(der))
            self._cache[ssl_obj] = cached
        if cached.leaf.not_valid_after_utc <= dt.datetime.now(dt.UTC):
            raise PeerRejectedError("expired", f"{cached.spiffe_id}: SVID expired")
        if verifier.revocations.is_revoked(cached.leaf):
            raise PeerRejectedError("revoked", f"{cached.spiffe_id}: SVID is revoked")
        return cached.spiffe_id

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._answer(request)
        _SECURITY["front_requests"].inc(tags={"code": str(response.status)})
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        try:
            spiffe_id = self._peer(request)
        except PeerRejectedError as exc:
            self.stats.refused_unauthenticated += 1
            _SECURITY["handshake_failures"].inc(tags={"reason": exc.reason})
            return _error(401, "unauthenticated", str(exc), [{"reason": exc.reason}])
        path = request.path
        if "//" in path or any(seg in (".", "..") for seg in path.split("/")) or "\\" in path:
            return _error(400, "bad_request", "the path must be normalised")
        try:
            authorise(self.policy, spiffe_id, request.method, path)
        except AuthorizationError as exc:
            self.stats.refused_forbidden += 1
            return _error(403, "forbidden", str(exc))
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return _error(413, "too_large", f"request body over {self.max_body_bytes} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "too_large", f"request body over {self.max_body_bytes} bytes")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP | _OWN_HEADERS}
        headers[PEER_ID_HEADER] = spiffe_id
        headers[FRONT_TOKEN_HEADER] = self._token
        url = (
            self.upstream.with_path(path).with_query(request.query_string)
            if request.query_string
            else (self.upstream.with_path(path))
        )
        assert self._session is not None
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as upstream:
                payload = await upstream.read()
                if upstream.status >= 500 and upstream.content_type != "application/json":
                    # Serve's proxy answers for a gateway replica that died mid-request, in plain
                    # text; the app's own errors are JSON and pass through as they are.
                    self.stats.upstream_errors += 1
                    said = payload[:200].decode("utf-8", "replace").strip()
                    return _error(
                        503,
                        "unavailable",
                        f"the app behind the front failed ({upstream.status}: {said})",
                        headers={"Retry-After": "1"},
                    )
                out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
                self.stats.forwarded += 1
                return web.Response(status=upstream.status, body=payload, headers=out_headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.stats.upstream_errors += 1
            return _error(
                503,
                "unavailable",
                f"the app behind the front did not answer: {type(exc).__name__}",
                headers={"Retry-After": "1"},
            )


def _error(
    status: int,
    kind: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The gateway's error body shape (``error``, ``message``, ``details``)."""
    body = {"error": kind, "message": message, "details": details or []}
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers
    )


class BackgroundFront:
    """An :class:`MtlsFront` on an event loop of its own thread (for the blocking ``x0tta6bl4 serve``).

    Args:
        front: the front to run.
        host: address to bind.
        port: port to bind (0 picks a free one).
        start_timeout_s: how long :meth:`start` waits for the listener.
    """

    def __init__(self, front: MtlsFront, host: str, port: int, start_timeout_s: float = 30.0) -> None:
        self.front = front
        self._host, self._port = host, port
        self._timeout = start_timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mtls-front", daemon=True)

    def start(self) -> int:
        """Start listening; the bound port. Raises OSError when the address is taken."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self.front.start(self._host, self._port), self._loop)
        return int(future.result(self._timeout))

    def stop(self) -> None:
        """Stop the listener, close upstream connections and end the thread."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.front.stop(), self._loop).result(self._timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._timeout)
