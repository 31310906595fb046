"""X509-SVIDs as a value type: parse (checked by py-spiffe), load and save (key 0600), renewal time."""

from __future__ import annotations

import datetime as dt
import os
import random
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import SpiffeId, X509Svid
from spiffe.errors import PySpiffeError

from x0tta6bl4.durable import write_atomic
from x0tta6bl4.security.errors import InvalidSvidError

#: File names of an SVID saved in a directory (the layout curl and the CLI use).
CHAIN_FILE = "svid.pem"
KEY_FILE = "svid.key"

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Svid:
    """An X509-SVID: the leaf (first) and intermediates, its private key and its SPIFFE ID.

    Build one with :meth:`parse` or :meth:`load`: both check it against the X509-SVID spec with
    py-spiffe's ``X509Svid.parse`` and check that the key belongs to the leaf.
    """

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey

    @property
    def leaf(self) -> x509.Certificate:
        """The certificate that carries the SPIFFE ID."""
        return self.chain[0]

    @property
    def serial(self) -> int:
        """The leaf's serial number (what a CRL names)."""
        return int(self.leaf.serial_number)

    @property
    def not_before(self) -> dt.datetime:
        """Start of validity (UTC)."""
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        """End of validity (UTC)."""
        return self.leaf.not_valid_after_utc

    def renew_at(self, jitter_fraction: float = 0.1, rng: random.Random | None = None) -> dt.datetime:
        """When to fetch a successor: at half-life, moved by up to ``jitter_fraction`` of the TTL either way.

        Jitter spreads the renewals of many workloads issued at once; half-life leaves the other
        half of the TTL to retry if the issuer is briefly away.
        """
        ttl = self.not_after - self.not_before
        jitter = (rng or random).uniform(-jitter_fraction, jitter_fraction) * ttl
        return self.not_before + ttl / 2 + jitter

    def chain_pem(self) -> bytes:
        """The chain as concatenated PEM certificates, leaf first."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def key_pem(self) -> bytes:
        """The private key as an unencrypted PKCS#8 PEM block (keep it 0600)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @classmethod
    def parse(cls, chain_pem: bytes, key_pem: bytes) -> Svid:
        """An SVID from PEM chain and PKCS#8 key; InvalidSvidError when it breaks the X509-SVID spec."""
        try:
            parsed = X509Svid.parse(chain_pem, key_pem)
        except PySpiffeError as exc:
            raise InvalidSvidError(f"not a valid X509-SVID: {exc}") from None
        key = parsed.private_key
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidSvidError("SVID keys must be EC keys")
        chain = tuple(parsed.cert_chain)
        if key.public_key().public_numbers() != chain[0].public_key().public_numbers():  # type: ignore[union-attr]
            raise InvalidSvidError("the private key does not belong to the leaf certificate")
        return cls(parsed.spiffe_id, chain, key)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Svid:
        """The SVID saved in ``directory`` (``svid.pem`` and ``svid.key``)."""
        d = Path(directory)
        try:
            chain, key = (d / CHAIN_FILE).read_bytes(), (d / KEY_FILE).read_bytes()
        except OSError as exc:
            raise InvalidSvidError(f"cannot read an SVID from {d}: {exc.strerror or exc}") from None
        return cls.parse(chain, key)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``svid.pem`` and ``svid.key`` (0600) atomically into ``directory`` (made 0700)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(d / KEY_FILE, self.key_pem(), mode=0o600)
        write_atomic(d / CHAIN_FILE, self.chain_pem(), mode=0o644)
        return d
