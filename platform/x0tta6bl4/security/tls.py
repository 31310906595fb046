"""mTLS for SPIFFE peers: TLS 1.3 contexts from an SVID source, and the check of a peer's SVID.

Python's ``ssl`` checks the chain against every authority it was given, of every trust domain
at once, and knows nothing of SPIFFE IDs or CRLs. :class:`PeerVerifier` therefore re-checks each
peer after the handshake: exactly one SPIFFE ID, a chain to an authority of *that ID's own*
trust domain (cryptography's X.509 verifier), validity now, and not revoked. Contexts are
rebuilt whenever the source's SVID or bundles change; a server swaps them per handshake, so
rotation never interrupts a connection.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import functools
import os
import ssl
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from spiffe import SpiffeId

from x0tta6bl4.security.bundle import TrustBundle
from x0tta6bl4.security.errors import InvalidSpiffeIdError, PeerRejectedError
from x0tta6bl4.security.identity import parse_spiffe_id
from x0tta6bl4.security.svid import Svid

#: Upper bound on a CRL file read by an enforcement point.
MAX_CRL_BYTES = 8 << 20


@dataclass(frozen=True)
class Revocations:
    """Revoked SVID serials per signing authority (keyed by the authority's subject key identifier)."""

    serials: Mapping[bytes, frozenset[int]] = field(default_factory=dict)

    def is_revoked(self, cert: x509.Certificate) -> bool:
        """True when the CRL of ``cert``'s issuer lists its serial."""
        akid = _authority_key_id(cert)
        return akid is not None and cert.serial_number in self.serials.get(akid, frozenset())

    @classmethod
    def parse(cls, crls_pem: bytes, bundles: Mapping[str, TrustBundle]) -> Revocations:
        """Revocations from concatenated PEM CRLs; a CRL no bundle authority signed is ignored."""
        out: dict[bytes, frozenset[int]] = {}
        authorities = [a for b in bundles.values() for a in b.authorities]
        marker = b"-----BEGIN X509 CRL-----"
        for block in crls_pem.split(marker)[1:]:
            try:
                crl = x509.load_pem_x509_crl(marker + block)
            except ValueError:
                continue
            for auth in authorities:
                if auth.subject == crl.issuer and crl.is_signature_valid(auth.public_key()):  # type: ignore[arg-type]
                    skid = auth.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
                    out[skid] = frozenset(r.serial_number for r in crl) | out.get(skid, frozenset())
                    break
        return cls(out)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None, bundles: Mapping[str, TrustBundle]) -> Revocations:
        """Revocations from a CRL file; none when ``path`` is None or absent."""
        if path is None or not Path(path).exists():
            return cls()
        with open(path, "rb") as fh:
            return cls.parse(fh.read(MAX_CRL_BYTES), bundles)


def _authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The one SPIFFE ID in a certificate's URI SANs; PeerRejectedError when there is not exactly one."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PeerRejectedError("bad-svid", "certificate has no subject alternative name") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PeerRejectedError("bad-svid", f"an X509-SVID carries exactly one URI SAN, not {len(uris)}")
    try:
        return parse_spiffe_id(uris[0])
    except InvalidSpiffeIdError as exc:
        raise PeerRejectedError("bad-svid", str(exc)) from None


class PeerVerifier:
    """Checks a peer's leaf certificate against the bundle of its own trust domain and the CRLs.

    Args:
        bundles: trust domain name -> its bundle (one entry per federated trust domain).
        revocations: revoked serials (default none).
    """

    def __init__(self, bundles: Mapping[str, TrustBundle], revocations: Revocations | None = None) -> None:
        self.bundles = dict(bundles)
        self.revocations = revocations or Revocations()
        # A built verifier checks validity at the time it was built: keep the stores, build per check.
        self._stores = {
            td: verification.Store(list(b.authorities)) for td, b in self.bundles.items() if b.authorities
        }

    def verify(self, leaf_der: bytes | None, intermediates_der: Sequence[bytes] = ()) -> SpiffeId:
        """The peer's SPIFFE ID when its chain, validity and revocation state pass.

        Raises:
            PeerRejectedError: with ``reason`` one of ``no-certificate``, ``bad-svid``,
                ``wrong-trust-domain``, ``untrusted``, ``expired``, ``revoked``.
        """
        if not leaf_der:
            raise PeerRejectedError("no-certificate", "a client SVID is required")
        try:
            leaf = x509.load_der_x509_certificate(leaf_der)
            intermediates = [x509.load_der_x509_certificate(d) for d in intermediates_der]
        except ValueError as exc:
            raise PeerRejectedError("bad-svid", f"unparseable certificate: {exc}") from None
        spiffe_id = spiffe_id_of(leaf)
        store = self._stores.get(spiffe_id.trust_domain.name)
        if store is None:
            raise PeerRejectedError("wrong-trust-domain", f"no bundle for the trust domain of {spiffe_id}")
        now = dt.datetime.now(dt.UTC)
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            raise PeerRejectedError(
                "expired",
                f"{spiffe_id}: valid {leaf.not_valid_before_utc} to {leaf.not_valid_after_utc} only",
            )
        try:
            policy = verification.PolicyBuilder().store(store).time(now)
            policy.build_client_verifier().verify(leaf, intermediates)
        except verification.VerificationError as exc:
            raise PeerRejectedError("untrusted", f"{spiffe_id}: {exc}") from None
        if self.revocations.is_revoked(leaf):
            raise PeerRejectedError("revoked", f"{spiffe_id}: SVID serial {leaf.serial_number:x} is revoked")
        return spiffe_id


@contextlib.contextmanager
def _private_files(svid: Svid) -> Iterator[tuple[str, str]]:
    """The SVID as two files in a fresh 0700 directory (``ssl`` loads keys only by file name)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="x0svid-", dir=base) as d:
        os.chmod(d, 0o700)
        chain, key = os.path.join(d, "svid.pem"), os.path.join(d, "svid.key")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(svid.key_pem())
        with open(chain, "wb") as fh:
            fh.write(svid.chain_pem())
        yield chain, key


def _bundle_pem(bundles: Mapping[str, TrustBundle]) -> str:
    return "".join(
        a.public_bytes(serialization.Encoding.PEM).decode() for b in bundles.values() for a in b.authorities
    )


def _base(purpose: ssl.Purpose, svid: Svid, bundles: Mapping[str, TrustBundle]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False  # peers are authorised by SPIFFE ID, not host name
    pem = _bundle_pem(bundles)
    if pem:
        ctx.load_verify_locations(cadata=pem)
    with _private_files(svid) as (chain, key):
        ctx.load_cert_chain(chain, key)
    return ctx


def server_context(svid: Svid, bundles: Mapping[str, TrustBundle]) -> ssl.SSLContext:
    """A TLS 1.3-only server context that requires a client certificate chaining to ``bundles``."""
    return _base(ssl.Purpose.CLIENT_AUTH, svid, bundles)


def client_context(svid: Svid, bundles: Mapping[str, TrustBundle]) -> ssl.SSLContext:
    """A TLS 1.3-only client context presenting ``svid``; check the server's ID with :func:`peer_id`."""
    return _base(ssl.Purpose.SERVER_AUTH, svid, bundles)


def peer_id(ssl_object: ssl.SSLObject | ssl.SSLSocket, verifier: PeerVerifier) -> SpiffeId:
    """The verified SPIFFE ID of the other end of an established TLS connection."""
    return verifier.verify(ssl_object.getpeercert(binary_form=True))


#: Key-exchange groups :func:`key_exchange_groups` tries, the post-quantum hybrid first.
CANDIDATE_GROUPS = ("X25519MLKEM768", "X25519", "prime256v1", "X448", "secp384r1", "secp521r1")


def key_exchange_groups(svid: Svid, bundles: Mapping[str, TrustBundle]) -> dict[str, bool]:
    """Which key-exchange groups a handshake through Python's ``ssl`` can really use here.

    Each candidate gets one in-memory TLS 1.3 handshake with the server restricted to it.
    Python's ``ssl`` (3.11) cannot set a group list, so this probe is how ``x0tta6bl4 doctor`` and
    the front's start-up log know which exist: a context left at the defaults prefers
    X25519MLKEM768 wherever the linked OpenSSL (3.5+) offers it.
    """
    out: dict[str, bool] = {}
    for group in CANDIDATE_GROUPS:
        server = server_context(svid, bundles)
        try:
            server.set_ecdh_curve(group)
        except ValueError:
            out[group] = False
            continue
        out[group] = handshake_in_memory(server, client_context(svid, bundles)) is not None
    return out


#: ``SSL_ctrl`` command behind OpenSSL's ``SSL_get_negotiated_group`` macro (``ssl.h``, 3.0+).
_SSL_CTRL_GET_NEGOTIATED_GROUP = 134
_PTR = ctypes.sizeof(ctypes.c_void_p)


def negotiated_group(conn: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The key-exchange group an established TLS connection negotiated (``None`` where unreadable).

    Python 3.11's ``ssl`` has no accessor for it (one named ``group()`` is used when present), so
    this asks the OpenSSL the ``ssl`` module links, through ``SSL_get_negotiated_group`` on the
    connection's ``SSL*``. CPython's ``_ssl`` object holds ``Socket``, ``ssl`` and ``ctx`` right after
    its header; the pointer is used only when the ``ctx`` slot is seen to hold this connection's
    own context object and OpenSSL then reports the same protocol version as ``conn.version()``,
    so another layout or library gives ``None`` rather than a wrong answer.
    """
    accessor = getattr(conn, "group", None)
    if callable(accessor):
        named = accessor()
        return str(named) if named else None
    lib = _libssl()
    inner = getattr(conn, "_sslobj", None)
    if lib is None or inner is None or type(inner).__basicsize__ < 5 * _PTR:
        return None
    if ctypes.c_void_p.from_address(id(inner) + 4 * _PTR).value != id(inner.context):
        return None
    ssl_ptr = ctypes.c_void_p.from_address(id(inner) + 3 * _PTR).value
    version = conn.version()
    if not ssl_ptr or version is None or lib.SSL_get_version(ssl_ptr) != version.encode():
        return None
    nid = int(lib.SSL_ctrl(ssl_ptr, _SSL_CTRL_GET_NEGOTIATED_GROUP, 0, None))
    name = lib.SSL_group_to_name(ssl_ptr, nid) if nid > 0 else None
    return name.decode() if name else None


@functools.cache
def _libssl() -> ctypes.CDLL | None:
    """The one libssl mapped into this process (the ``ssl`` module's), or ``None``."""
    if sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):  # other object layouts
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "/libssl.so" in line}
    except OSError:
        return None
    if len(paths) != 1:
        return None
    try:
        lib = ctypes.CDLL(paths.pop())
        lib.SSL_ctrl.restype = ctypes.c_long
        lib.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_group_to_name.restype = ctypes.c_char_p
        lib.SSL_group_to_name.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.SSL_get_version.restype = ctypes.c_char_p
        lib.SSL_get_version.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return lib


def handshake_in_memory(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> tuple[ssl.SSLObject, ssl.SSLObject] | None:
    """Both ends (server, client) of a TLS handshake over memory buffers, or ``None`` if it failed."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    done = {"server": False, "client": False}
    for _ in range(20):
        for name, obj, out_bio, peer_in in (("client", client, c_out, s_in), ("server", server, s_out, c_in)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    return None
            data = out_bio.read()
            if data:
                peer_in.write(data)
        if all(done.values()):
            return server, client
    return None
