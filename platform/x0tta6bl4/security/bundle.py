"""Trust bundles: a trust domain's X.509 authorities, as PEM and as SPIFFE JWKS with a sequence number."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from x0tta6bl4.durable import write_atomic
from x0tta6bl4.security.errors import InvalidSvidError
from x0tta6bl4.security.identity import parse_trust_domain

#: Upper bound on a bundle document read from disk or the wire.
MAX_BUNDLE_BYTES = 1 << 20

_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex: how the CLI and logs name an authority."""
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class TrustBundle:
    """The authorities a trust domain's SVIDs chain to.

    ``sequence`` rises by one whenever the set changes (an authority added by rotation or removed
    by revocation); ``refresh_hint_s`` tells consumers how often to re-read it.
    """

    trust_domain: str
    authorities: tuple[x509.Certificate, ...]
    sequence: int
    refresh_hint_s: int

    def to_pem(self) -> bytes:
        """The authorities as concatenated PEM certificates (what ``curl --cacert`` reads)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.authorities)

    def to_jwks(self) -> dict[str, Any]:
        """The bundle in the SPIFFE Trust Domain and Bundle format (a JWK Set with ``spiffe_*`` members)."""
        keys = []
        for cert in self.authorities:
            pub = cert.public_key()
            if not isinstance(pub, ec.EllipticCurvePublicKey):
                raise InvalidSvidError("only EC authorities can be written as JWKS")
            nums = pub.public_numbers()
            size = (pub.curve.key_size + 7) // 8
            keys.append(
                {
                    "use": "x509-svid",
                    "kty": "EC",
                    "crv": _CURVES[pub.curve.name],
                    "x": _b64url(nums.x.to_bytes(size, "big")),
                    "y": _b64url(nums.y.to_bytes(size, "big")),
                    "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()],
                }
            )
        return {"keys": keys, "spiffe_sequence": self.sequence, "spiffe_refresh_hint": self.refresh_hint_s}

    @classmethod
    def parse_jwks(cls, trust_domain: str, document: bytes | str) -> TrustBundle:
        """A bundle from its JWKS document; InvalidSvidError on a malformed one."""
        if len(document) > MAX_BUNDLE_BYTES:
            raise InvalidSvidError(f"bundle document larger than {MAX_BUNDLE_BYTES} bytes")
        try:
            data = json.loads(document)
            authorities = []
            for key in data["keys"]:
                if key.get("use") != "x509-svid":
                    continue  # JWT authorities and unknown uses are not ours to check here
                x5c = key["x5c"]
                if not isinstance(x5c, list) or len(x5c) != 1:
                    raise ValueError("an x509-svid key carries exactly one certificate in x5c")
                authorities.append(x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True)))
            sequence = int(data.get("spiffe_sequence", 0))
            hint = int(data.get("spiffe_refresh_hint", 0))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidSvidError(f"malformed SPIFFE bundle: {exc}") from None
        return cls(parse_trust_domain(trust_domain).name, tuple(authorities), sequence, hint)

    @classmethod
    def load(cls, trust_domain: str, path: str | os.PathLike[str]) -> TrustBundle:
        """The JWKS bundle stored at ``path``."""
        try:
            with open(path, "rb") as fh:
                document = fh.read(MAX_BUNDLE_BYTES + 1)
        except OSError as exc:
            raise InvalidSvidError(f"cannot read the bundle {path}: {exc.strerror or exc}") from None
        return cls.parse_jwks(trust_domain, document)

    def save(self, jwks_path: str | os.PathLike[str], pem_path: str | os.PathLike[str] | None = None) -> None:
        """Write the JWKS document (and, optionally, the PEM form) atomically."""
        write_atomic(jwks_path, json.dumps(self.to_jwks(), indent=1) + "\n")
        if pem_path is not None:
            write_atomic(pem_path, self.to_pem())

    def contains(self, cert: x509.Certificate) -> bool:
        """True when ``cert`` is one of this bundle's authorities."""
        return any(cert == a for a in self.authorities)


def bundle_paths(directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Where a trust domain's published bundle lives: (JWKS, PEM)."""
    d = Path(directory)
    return d / "bundle.jwks.json", d / "bundle.pem"
