"""Hybrid signatures (Ed25519 + ML-DSA-65) by a workload's signing identity, certified by the embedded CA.

A signing identity is two key pairs the workload made itself and one certificate from the
trust domain's CA: an X.509 certificate over the Ed25519 key whose URI SAN is the workload's
SPIFFE ID and whose extension :data:`MLDSA_KEY_OID` carries the ML-DSA-65 public key. A
:class:`HybridSignature` is valid only when *both* signatures verify, so forging one needs
breaking Ed25519 and ML-DSA-65 at once. The certificate chain itself rests on the CA's ECDSA
P-256 authority (X.509 path validation with ML-DSA is not in ``cryptography`` yet).

Layout of a saved identity (directory 0700)::

    signer.pem       the certificate
    ed25519.key      PKCS#8 private key (0600)
    mldsa65.seed     the ML-DSA-65 private seed (0600)

Verification (:class:`SignatureVerifier`) needs only public material of the CA directory:
every authority certificate ever created (an authority that expired still vouches for what
its signers signed while it was valid), minus authorities removed on purpose, and the
revocation list.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from spiffe import SpiffeId

from x0tta6bl4.durable import write_atomic
from x0tta6bl4.security.errors import SecurityError
from x0tta6bl4.security.identity import parse_spiffe_id

#: Extension of a signing certificate holding the raw ML-DSA-65 public key (a UUID-based OID, X.667).
MLDSA_KEY_OID = x509.ObjectIdentifier("2.25.296333482492046915949105099359003503278")
#: Prefix of every signed message: signatures made for one purpose never verify for another.
DOMAIN = b"x0tta6bl4-hybrid-signature-v1"
#: Default lifetime of a signing certificate (capped by the authority's own lifetime).
DEFAULT_SIGNER_TTL_S = 3 * 24 * 3600

CERT_FILE = "signer.pem"
ED25519_FILE = "ed25519.key"
MLDSA_FILE = "mldsa65.seed"


class SignatureError(SecurityError):
    """A signature that is missing, malformed, made by an untrusted or disallowed signer, or wrong.

    ``reason`` is a short stable word for logs and metrics: ``malformed``, ``untrusted``,
    ``expired``, ``revoked``, ``disallowed``, ``bad-signature``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise SignatureError("malformed", f"{what} must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise SignatureError("malformed", f"{what} is not valid base64") from None


def _message(context: str, signed_at: dt.datetime, payload: bytes) -> bytes:
    """What both algorithms sign: domain, purpose, time and the payload's SHA-256 (fixed size)."""
    stamp = signed_at.isoformat().encode()
    return DOMAIN + b"\0" + context.encode() + b"\0" + stamp + b"\0" + hashlib.sha256(payload).digest()


@dataclasses.dataclass(frozen=True)
class HybridSignature:
    """An Ed25519 and an ML-DSA-65 signature over the same message, with the signer's certificate.

    Attributes:
        signer: the SPIFFE ID the certificate names (informative; verification reads the certificate).
        certificate: the signer's certificate.
        ed25519: the 64-byte Ed25519 signature.
        mldsa65: the ML-DSA-65 signature (3,309 bytes).
        signed_at: when it was made (the certificate must be valid then).
    """

    signer: str
    certificate: x509.Certificate
    ed25519: bytes
    mldsa65: bytes
    signed_at: dt.datetime

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the signer's certificate (hex)."""
        return self.certificate.fingerprint(hashes.SHA256()).hex()

    def to_dict(self, include_certificate: bool = True) -> dict[str, Any]:
        """JSON-ready form; without the certificate, :meth:`parse` needs it from elsewhere."""
        out: dict[str, Any] = {
            "signer": self.signer,
            "signer_fingerprint": self.fingerprint,
            "signed_at": self.signed_at.isoformat(),
            "ed25519": _b64(self.ed25519),
            "mldsa65": _b64(self.mldsa65),
        }
        if include_certificate:
            out["certificate"] = self.certificate.public_bytes(serialization.Encoding.PEM).decode()
        return out

    @classmethod
    def parse(cls, data: Any, certificates: Mapping[str, x509.Certificate] | None = None) -> HybridSignature:
        """Read :meth:`to_dict`'s form; ``certificates`` by fingerprint fill in a missing certificate.

        Raises:
            SignatureError: ``malformed`` for anything that is not a well-formed signature record.
        """
        if not isinstance(data, Mapping):
            raise SignatureError("malformed", "a signature must be a JSON object")
        cert_pem = data.get("certificate")
        try:
            if isinstance(cert_pem, str):
                cert = x509.load_pem_x509_certificate(cert_pem.encode())
            else:
                fp = data.get("signer_fingerprint")
                if not isinstance(fp, str) or certificates is None or fp not in certificates:
                    raise SignatureError("malformed", "the signature names no known signer certificate")
                cert = certificates[fp]
            signed_at = dt.datetime.fromisoformat(str(data.get("signed_at")))
        except ValueError as exc:
            raise SignatureError("malformed", f"unreadable signature record: {exc}") from None
        if signed_at.tzinfo is None:
            raise SignatureError("malformed", "signed_at must carry a time zone")
        return cls(
            signer=str(data.get("signer", "")),
            certificate=cert,
            ed25519=_unb64(data.get("ed25519"), "ed25519"),
            mldsa65=_unb64(data.get("mldsa65"), "mldsa65"),
            signed_at=signed_at,
        )


def signer_keys(cert: x509.Certificate) -> tuple[SpiffeId, ed25519.Ed25519PublicKey, mldsa.MLDSA65PublicKey]:
    """The SPIFFE ID and both public keys a signing certificate binds.

    Raises:
        SignatureError: ``malformed`` when the certificate is not a signing certificate.
    """
    try:
        ed_key = cert.public_key()
        ext = cert.extensions.get_extension_for_oid(MLDSA_KEY_OID).value
        ml_key = mldsa.MLDSA65PublicKey.from_public_bytes(ext.value)  # type: ignore[attr-defined]
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ids = uris.get_values_for_type(x509.UniformResourceIdentifier)
    except (x509.ExtensionNotFound, ValueError) as exc:
        raise SignatureError("malformed", f"not a signing certificate: {exc}") from None
    if not isinstance(ed_key, ed25519.Ed25519PublicKey) or len(ids) != 1:
        raise SignatureError("malformed", "a signing certificate has an Ed25519 key and one SPIFFE ID")
    return parse_spiffe_id(ids[0]), ed_key, ml_key


@dataclasses.dataclass(frozen=True)
class Signer:
    """A workload's signing identity: both private keys and the CA's certificate over them.

    Get one with :meth:`obtain` (load, or make keys and have the CA certify them) or :meth:`load`.
    """

    spiffe_id: SpiffeId
    certificate: x509.Certificate
    ed25519_key: ed25519.Ed25519PrivateKey
    mldsa65_key: mldsa.MLDSA65PrivateKey

    def sign(self, payload: bytes, context: str) -> HybridSignature:
        """Sign ``payload`` for ``context`` (e.g. ``"model-version"``) with both keys."""
        now = dt.datetime.now(dt.UTC)
        message = _message(context, now, payload)
        return HybridSignature(
            signer=str(self.spiffe_id),
            certificate=self.certificate,
            ed25519=self.ed25519_key.sign(message),
            mldsa65=self.mldsa65_key.sign(message),
            signed_at=now,
        )

    def valid_for_s(self) -> float:
        """Seconds until the certificate expires (negative once it has)."""
        return (self.certificate.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()

    @classmethod
    def generate(cls, ca: Any, spiffe_id: SpiffeId | str, ttl_s: int | None = None) -> Signer:
        """Fresh key pairs certified by ``ca`` (an :class:`~x0tta6bl4.security.ca.EmbeddedCA`)."""
        ed_key = ed25519.Ed25519PrivateKey.generate()
        ml_key = mldsa.MLDSA65PrivateKey.generate()
        cert = ca.issue_signer(spiffe_id, ed_key.public_key(), ml_key.public_key(), ttl_s)
        return cls(signer_keys(cert)[0], cert, ed_key, ml_key)

    @classmethod
    def obtain(
        cls,
        ca: Any,
        spiffe_id: SpiffeId | str,
        directory: str | os.PathLike[str] | None = None,
        min_valid_s: float = 3600.0,
    ) -> Signer:
        """The identity saved in ``directory`` (default: ``<ca dir>/signers/<path>``), renewed when needed.

        A missing, unreadable or nearly expired identity (less than ``min_valid_s`` left), or one
        saved for another SPIFFE ID, is replaced by a new one, saved before it is returned.
        """
        sid = parse_spiffe_id(str(spiffe_id))
        d = Path(directory) if directory is not None else signer_dir(ca.directory, sid)
        try:
            current = cls.load(d)
            if current.spiffe_id == sid and current.valid_for_s() >= min_valid_s:
                return current
        except (OSError, SignatureError, ValueError):
            pass
        fresh = cls.generate(ca, sid)
        fresh.save(d)
        return fresh

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Signer:
        """Read a saved identity; raises OSError when absent, SignatureError when inconsistent."""
        d = Path(directory)
        cert = x509.load_pem_x509_certificate((d / CERT_FILE).read_bytes())
        ed_key = serialization.load_pem_private_key((d / ED25519_FILE).read_bytes(), password=None)
        ml_key = mldsa.MLDSA65PrivateKey.from_seed_bytes((d / MLDSA_FILE).read_bytes())
        sid, ed_pub, ml_pub = signer_keys(cert)
        if not isinstance(ed_key, ed25519.Ed25519PrivateKey) or ed_key.public_key() != ed_pub:
            raise SignatureError("malformed", f"{d / ED25519_FILE} does not belong to {d / CERT_FILE}")
        if ml_key.public_key().public_bytes_raw() != ml_pub.public_bytes_raw():
            raise SignatureError("malformed", f"{d / MLDSA_FILE} does not belong to {d / CERT_FILE}")
        return cls(sid, cert, ed_key, ml_key)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the identity (keys 0600, directory 0700); returns the directory."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
        key_pem = self.ed25519_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_atomic(d / ED25519_FILE, key_pem, mode=0o600)
        write_atomic(d / MLDSA_FILE, self.mldsa65_key.private_bytes_raw(), mode=0o600)
        write_atomic(d / CERT_FILE, self.certificate.public_bytes(serialization.Encoding.PEM))
        return d


def signer_dir(ca_dir: str | os.PathLike[str], spiffe_id: SpiffeId) -> Path:
    """Where a workload's signing identity is kept by default: ``<ca dir>/signers/<ID path>``."""
    return Path(ca_dir) / "signers" / spiffe_id.path.strip("/")


class SignatureVerifier:
    """Verifies hybrid signatures against a CA directory's public material.

    Args:
        ca_dir: the embedded CA's directory (read only: authority certificates, ``state.json``'s
            removed authorities, ``revoked.json``).
        trust_domain: signers must belong to it (default: the CA's).
    """

    def __init__(self, ca_dir: str | os.PathLike[str], trust_domain: str | None = None) -> None:
        self.ca_dir = Path(ca_dir)
        self._anchors: dict[bytes, x509.Certificate] = {}
        self._revoked: set[tuple[bytes, int]] = set()
        self.trust_domain = trust_domain
        self.reload()

    def reload(self) -> None:
        """Re-read the CA directory (after a rotation, removal or revocation)."""
        try:
            state = json.loads((self.ca_dir / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SignatureError("untrusted", f"no readable CA in {self.ca_dir}: {exc}") from None
        removed = set(state.get("removed", []))
        self.trust_domain = self.trust_domain or str(state.get("trust_domain"))
        anchors: dict[bytes, x509.Certificate] = {}
        ident_by_skid: dict[str, bytes] = {}
        for cert_path in sorted((self.ca_dir / "authorities").glob("*/cert.pem")):
            ident = cert_path.parent.name
            if ident in removed:
                continue
            try:
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                skid = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except (OSError, ValueError, x509.ExtensionNotFound):
                continue
            anchors[skid] = cert
            ident_by_skid[ident] = skid
        revoked: set[tuple[bytes, int]] = set()
        try:
            entries = json.loads((self.ca_dir / "revoked.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            entries = {}
        except (OSError, ValueError) as exc:
            raise SignatureError("untrusted", f"unreadable revocation list in {self.ca_dir}: {exc}") from None
        for ident, serials in entries.items():
            if ident in ident_by_skid:
                revoked.update((ident_by_skid[ident], int(s, 16)) for s in serials)
        self._anchors, self._revoked = anchors, revoked
        self._chained: dict[
            bytes, tuple[SpiffeId, ed25519.Ed25519PublicKey, mldsa.MLDSA65PublicKey, bytes]
        ] = {}

    def _certified(
        self, cert: x509.Certificate
    ) -> tuple[SpiffeId, ed25519.Ed25519PublicKey, mldsa.MLDSA65PublicKey, bytes]:
        """The certificate's ID, keys and issuer, once its chain to an anchor is checked (memoised)."""
        fp = cert.fingerprint(hashes.SHA256())
        known = self._chained.get(fp)
        if known is not None:
            return known
        sid, ed_pub, ml_pub = signer_keys(cert)
        if sid.trust_domain.name != self.trust_domain:
            raise SignatureError("untrusted", f"signer {sid} is outside the trust domain {self.trust_domain}")
        try:
            akid = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        except x509.ExtensionNotFound:
            akid = None
        anchor = self._anchors.get(akid or b"")
        if anchor is None:
            raise SignatureError("untrusted", f"the certificate of {sid} was not issued by this CA")
        try:
            cert.verify_directly_issued_by(anchor)
        except (ValueError, TypeError, InvalidSignature):
            raise SignatureError("untrusted", f"the certificate of {sid} does not verify") from None
        known = (sid, ed_pub, ml_pub, akid or b"")
        self._chained[fp] = known
        return known

    def verify(
        self,
        signature: HybridSignature,
        payload: bytes,
        context: str,
        allowed: Iterable[str] | None = None,
    ) -> SpiffeId:
        """Check ``signature`` over ``payload`` for ``context``; returns the signer's SPIFFE ID.

        Args:
            signature: the signature record.
            payload: the bytes that were signed.
            context: the purpose they were signed for.
            allowed: SPIFFE IDs allowed to have signed (None: any signer of the trust domain).

        Raises:
            SignatureError: with ``reason`` ``untrusted`` (no authority of this CA issued the
                certificate), ``expired`` (signed outside its validity), ``revoked``,
                ``disallowed`` (signer not in ``allowed``), ``bad-signature`` or ``malformed``.
        """
        cert = signature.certificate
        sid, ed_pub, ml_pub, akid = self._certified(cert)
        if (akid, cert.serial_number) in self._revoked:
            raise SignatureError("revoked", f"the signing certificate of {sid} is revoked")
        when = signature.signed_at
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            raise SignatureError("expired", f"{sid} signed at {when.isoformat()}, outside its certificate")
        if allowed is not None and str(sid) not in set(allowed):
            raise SignatureError("disallowed", f"{sid} is not allowed to sign {context}")
        message = _message(context, when, payload)
        try:
            ed_pub.verify(signature.ed25519, message)
            ml_pub.verify(signature.mldsa65, message)
        except InvalidSignature:
            raise SignatureError(
                "bad-signature", f"the signature of {sid} over this {context} is wrong"
            ) from None
        return sid
