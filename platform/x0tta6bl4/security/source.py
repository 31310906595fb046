"""Where a workload's SVID, bundles and revocations come from: the embedded CA, or SPIRE's Workload API.

Both sources keep their material fresh on a background thread and call subscribers after every
change, so TLS contexts are rebuilt without a restart:

- :class:`EmbeddedSource` issues from the embedded CA's directory, renews at half-life with
  jitter, and re-reads the published bundle and CRL every refresh interval;
- :class:`WorkloadApiSource` wraps py-spiffe's ``X509Source`` (SVIDs and bundles streamed by the
  Workload API at ``SPIFFE_ENDPOINT_SOCKET``); revocations come from a CRL file when configured.

:func:`open_source` picks the Workload API whenever ``SPIFFE_ENDPOINT_SOCKET`` is set.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from spiffe import SpiffeId, X509Source
from spiffe.errors import PySpiffeError

from x0tta6bl4.observability import tracing
from x0tta6bl4.observability.metrics import domain_metrics
from x0tta6bl4.security.bundle import TrustBundle, bundle_paths
from x0tta6bl4.security.ca import EmbeddedCA, default_ca_dir
from x0tta6bl4.security.errors import CaError, InvalidSvidError, SecurityError
from x0tta6bl4.security.ledger import AuditRecorder, authority_recorder
from x0tta6bl4.security.svid import Svid
from x0tta6bl4.security.tls import Revocations

log = logging.getLogger(__name__)

_SECURITY = domain_metrics("security")

#: Environment variable naming the Workload API socket (the SPIFFE Workload Endpoint spec's name).
ENDPOINT_SOCKET_ENV = "SPIFFE_ENDPOINT_SOCKET"


class SvidSource(Protocol):
    """What an enforcement point or client needs: its SVID, the bundles, revocations, change events."""

    def svid(self) -> Svid:
        """The current SVID of this workload."""

    def bundles(self) -> dict[str, TrustBundle]:
        """Trust domain name -> its current bundle."""

    def revocations(self) -> Revocations:
        """Currently revoked SVID serials."""

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the source's thread) after every change of the above."""

    def close(self) -> None:
        """Stop refreshing."""


class _Subscribers:
    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def add(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def notify(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for cb in callbacks:
            try:
                cb()
            except Exception:  # a subscriber's bug must not stop renewals
                log.exception("SVID source subscriber failed")


class EmbeddedSource:
    """SVIDs for one identity from the embedded CA, renewed at half-life with jitter.

    Args:
        spiffe_id: the identity to hold.
        ca_dir: the CA's directory (default :func:`~x0tta6bl4.security.ca.default_ca_dir`).
        ttl_s: SVID lifetime (default: the CA's).
        dns_names: DNS SANs for servers that clients reach by host name.
        ip_addresses: IP SANs likewise.
        refresh_s: how often to re-read the bundle and CRL (default: the bundle's refresh hint).
        jitter_fraction: renewal jitter as a fraction of the TTL (default 0.1).
    """

    def __init__(
        self,
        spiffe_id: SpiffeId | str,
        ca_dir: str | os.PathLike[str] | None = None,
        ttl_s: int | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        refresh_s: float | None = None,
        jitter_fraction: float = 0.1,
    ) -> None:
        self._ca = EmbeddedCA.open(ca_dir if ca_dir is not None else default_ca_dir())
        self._spiffe_id = str(spiffe_id)
        self._ttl_s = ttl_s
        self._sans = (tuple(dns_names), tuple(ip_addresses))
        self._jitter = jitter_fraction
        self._refresh_s = float(refresh_s if refresh_s is not None else self._ca.refresh_hint_s)
        self._subscribers = _Subscribers()
        self._lock = threading.Lock()
        self._recorder: AuditRecorder | None = None
        self._svid = self._issue()
        self._renew_at = self._svid.renew_at(self._jitter)
        self._bundle_key: tuple[int, int] = (-1, -1)
        self._bundles: dict[str, TrustBundle] = {}
        self._revocations = Revocations()
        self._reload_trust()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="svid-source", daemon=True)
        self._thread.start()

    @property
    def ca(self) -> EmbeddedCA:
        """The CA this source issues from."""
        return self._ca

    def svid(self) -> Svid:
        with self._lock:
            return self._svid

    def bundles(self) -> dict[str, TrustBundle]:
        with self._lock:
            return dict(self._bundles)

    def revocations(self) -> Revocations:
        with self._lock:
            return self._revocations

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.add(callback)

    def close(self) -> None:
        self._stop.set()

    def renew_now(self) -> Svid:
        """Fetch a successor SVID at once (the CLI's ``rotate``; tests)."""
        svid = self._issue()
        with self._lock:
            self._svid = svid
            self._renew_at = svid.renew_at(self._jitter)
        self._subscribers.notify()
        return svid

    def _issue(self) -> Svid:
        kind = "svid.rotate" if getattr(self, "_svid", None) is not None else "svid.issue"
        with tracing.span(kind, {"spiffe.id": self._spiffe_id}) as span:
            svid = self._ca.issue_svid(self._spiffe_id, self._ttl_s, *self._sans)
            span.set_attribute("serial", f"{svid.serial:x}")
        if kind == "svid.rotate":
            _SECURITY["svid_rotations"].inc()
        try:  # the audit record never stands between a workload and its identity
            if self._recorder is None:
                self._recorder = authority_recorder(self._ca)
            self._recorder.record(kind, self._spiffe_id, {"serial": f"{svid.serial:x}", "ttl_s": self._ttl_s})
        except (SecurityError, OSError) as exc:
            log.warning("audit ledger: %s of %s not recorded: %s", kind, self._spiffe_id, exc)
        return svid

    def _reload_trust(self) -> bool:
        jwks, _ = bundle_paths(self._ca.directory)
        try:
            key = (jwks.stat().st_mtime_ns, self._ca.crl_path.stat().st_mtime_ns)
        except OSError:
            return False
        if key == self._bundle_key:
            return False
        bundle = self._ca.bundle()
        bundles = {bundle.trust_domain: bundle}
        revocations = Revocations.load(self._ca.crl_path, bundles)
        with self._lock:
            self._bundles, self._revocations, self._bundle_key = bundles, revocations, key
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                renew_at = self._renew_at
            now = dt.datetime.now(dt.UTC)
            wait_s = max(0.0, min(self._refresh_s, (renew_at - now).total_seconds()))
            if self._stop.wait(wait_s):
                return
            changed = False
            try:
                if dt.datetime.now(dt.UTC) >= renew_at:
                    svid = self._issue()
                    with self._lock:
                        self._svid, self._renew_at = svid, svid.renew_at(self._jitter)
                    changed = True
                changed = self._reload_trust() or changed
            except (SecurityError, OSError) as exc:  # keep the old SVID; retry next interval
                log.warning("SVID refresh for %s failed: %s", self._spiffe_id, exc)
            if changed:
                self._subscribers.notify()


class WorkloadApiSource:
    """SVIDs and bundles streamed by a SPIFFE Workload API (SPIRE agent) through py-spiffe.

    Args:
        socket_path: ``unix:///path`` of the Workload API (default ``$SPIFFE_ENDPOINT_SOCKET``).
        timeout_s: how long to wait for the first update.
        crl_path: a CRL file to check peers against (SPIRE has no CRLs; revocation there is by
            bundle). Re-read on every update and every ``refresh_s``.
        refresh_s: how often to re-read ``crl_path``.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        timeout_s: float = 10.0,
        crl_path: str | os.PathLike[str] | None = None,
        refresh_s: float = 5.0,
    ) -> None:
        try:
            self._source = X509Source(socket_path=socket_path, timeout_in_seconds=timeout_s)
        except PySpiffeError as exc:
            raise CaError(
                f"the Workload API at {socket_path or os.environ.get(ENDPOINT_SOCKET_ENV)} failed: {exc}"
            ) from None
        self._crl_path = Path(crl_path) if crl_path is not None else None
        self._subscribers = _Subscribers()
        self._lock = threading.Lock()
        self._revocations = Revocations()
        self._update()
        self._source.subscribe_for_updates(self._on_update)
        self._stop = threading.Event()
        self._refresh_s = refresh_s
        threading.Thread(target=self._poll_crl, name="svid-source-crl", daemon=True).start()

    def svid(self) -> Svid:
        x = self._source.get_x509_context().default_svid
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in x.cert_chain)
        key = x.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return Svid.parse(chain, key)

    def bundles(self) -> dict[str, TrustBundle]:
        out: dict[str, TrustBundle] = {}
        for b in self._source.get_x509_context().x509_bundle_set.bundles:
            out[b.trust_domain.name] = TrustBundle(b.trust_domain.name, tuple(b.x509_authorities), 0, 0)
        return out

    def revocations(self) -> Revocations:
        with self._lock:
            return self._revocations

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.add(callback)

    def close(self) -> None:
        self._stop.set()
        self._source.close()

    def _update(self) -> None:
        revocations = Revocations.load(self._crl_path, self.bundles()) if self._crl_path else Revocations()
        with self._lock:
            self._revocations = revocations

    def _on_update(self) -> None:
        try:
            with tracing.span("svid.update", {"source": "workload-api"}):
                self._update()
        except (InvalidSvidError, OSError) as exc:
            log.warning("Workload API update: %s", exc)
        self._subscribers.notify()

    def _poll_crl(self) -> None:
        while not self._stop.wait(self._refresh_s):
            if self._crl_path is not None:
                self._on_update()


def open_source(
    spiffe_id: SpiffeId | str,
    ca_dir: str | os.PathLike[str] | None = None,
    ttl_s: int | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> SvidSource:
    """The Workload API when ``SPIFFE_ENDPOINT_SOCKET`` is set (SPIRE names the ID), else the embedded CA."""
    socket = os.environ.get(ENDPOINT_SOCKET_ENV)
    if socket:
        crl = os.environ.get("X0TTA6BL4_CRL")
        return WorkloadApiSource(socket, crl_path=crl)
    return EmbeddedSource(spiffe_id, ca_dir, ttl_s, dns_names, ip_addresses)
