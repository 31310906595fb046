"""The embedded CA: issues X509-SVIDs from one trust domain's signing key, rotates it, revokes by CRL.

On by default so that a fresh machine needs no set-up: ``EmbeddedCA.open(dir)`` creates the
trust domain's first authority on first use. Layout of ``dir`` (0700)::

    state.json                 trust domain, active authority, bundle sequence, TTLs
    authorities/<id>/cert.pem  each authority's self-signed certificate
    authorities/<id>/key.pem   its private key (0600; never leaves this directory)
    revoked.json               revoked SVID serials per authority
    bundle.jwks.json           the published bundle (SPIFFE JWKS, rising ``spiffe_sequence``)
    bundle.pem                 the same authorities as PEM (for curl and ssl)
    crl.pem                    one CRL per authority in the bundle, each signed by it

Every change takes ``.lock`` (``filelock``) and rewrites the published files atomically, so
processes that only read them (enforcement points, the CLI) always see a consistent set.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from filelock import FileLock
from spiffe import SpiffeId

from x0tta6bl4.durable import write_atomic
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.observability.metrics import domain_metrics
from x0tta6bl4.security.bundle import TrustBundle, bundle_paths
from x0tta6bl4.security.errors import CaError
from x0tta6bl4.security.identity import DEFAULT_TRUST_DOMAIN, parse_spiffe_id, parse_trust_domain
from x0tta6bl4.security.svid import Svid

#: Default lifetime of an X509-SVID.
DEFAULT_SVID_TTL_S = 3600
#: Default lifetime of a signing authority: 7 days, 168 times the SVID TTL (the issue asks for >= 6x).
DEFAULT_CA_TTL_S = 7 * 24 * 3600
#: How often consumers should re-read the bundle and CRL (also the revocation delay bound).
DEFAULT_REFRESH_HINT_S = 5
#: Clock skew tolerated at the start of a certificate's validity (at most a tenth of an SVID's TTL).
BACKDATE_S = 60
#: Where the CA lives when nothing else is configured (relative to the working directory).
DEFAULT_CA_DIR = Path(".x0tta6bl4") / "security" / "ca"

#: Identity metrics: SVIDs issued, authority rotations, revocations.
_SECURITY = domain_metrics("security")


def default_ca_dir() -> Path:
    """``$X0TTA6BL4_CA_DIR`` when set, otherwise ``.x0tta6bl4/security/ca``."""
    return Path(os.environ.get("X0TTA6BL4_CA_DIR") or DEFAULT_CA_DIR)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _serial() -> int:
    return secrets.randbits(159) | 1  # positive, at most 20 octets, never zero


@dataclass(frozen=True)
class _Authority:
    ident: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


class EmbeddedCA:
    """One trust domain's signing authorities, kept in a private directory.

    Use :meth:`open`; the constructor only binds a loaded state. Not thread-safe across
    instances in one process without the file lock, which every mutating method takes.
    """

    def __init__(self, directory: Path, state: dict[str, Any]) -> None:
        self.directory = directory
        self._state = state
        self._lock = FileLock(str(directory / ".lock"))

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str] | None = None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        ca_ttl_s: int = DEFAULT_CA_TTL_S,
        svid_ttl_s: int = DEFAULT_SVID_TTL_S,
        refresh_hint_s: int = DEFAULT_REFRESH_HINT_S,
    ) -> EmbeddedCA:
        """The CA stored in ``directory`` (default :func:`default_ca_dir`), created on first use.

        Args:
            directory: where the CA's state lives (created 0700).
            trust_domain: the trust domain of a new CA (an existing one keeps its own; a different
                name is refused).
            ca_ttl_s: lifetime of each signing authority (at least 6x ``svid_ttl_s``).
            svid_ttl_s: default SVID lifetime.
            refresh_hint_s: the bundle's ``spiffe_refresh_hint``.

        Raises:
            ConfigError: TTLs out of range, or a trust domain other than the stored one.
            CaError: the stored state cannot be read.
        """
        if svid_ttl_s < 1 or ca_ttl_s < 6 * svid_ttl_s:
            raise ConfigError(f"CA TTL ({ca_ttl_s} s) must be at least 6x the SVID TTL ({svid_ttl_s} s)")
        if refresh_hint_s < 1:
            raise ConfigError("refresh_hint_s must be at least 1")
        domain = parse_trust_domain(trust_domain).name
        d = Path(directory) if directory is not None else default_ca_dir()
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
        with FileLock(str(d / ".lock")):
            state_path = d / "state.json"
            if state_path.exists():
                state = cls._read_state(state_path)
                if state["trust_domain"] != domain and trust_domain != DEFAULT_TRUST_DOMAIN:
                    raise ConfigError(f"the CA in {d} serves {state['trust_domain']!r}, not {domain!r}")
                ca = cls(d, state)
            else:
                state = {
                    "trust_domain": domain,
                    "active": None,
                    "authorities": [],
                    "sequence": 0,
                    "ca_ttl_s": ca_ttl_s,
                    "svid_ttl_s": svid_ttl_s,
                    "refresh_hint_s": refresh_hint_s,
                }
                ca = cls(d, state)
            ca._maintain()
        return ca

    @staticmethod
    def _read_state(path: Path) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            for key in ("trust_domain", "active", "authorities", "sequence", "ca_ttl_s", "svid_ttl_s"):
                state[key]
        except (OSError, ValueError, KeyError) as exc:
            raise CaError(f"unreadable CA state {path}: {exc}") from None
        return state

    # ---------------------------------------------------------------- accessors

    @property
    def trust_domain(self) -> str:
        """The trust domain this CA issues for."""
        return str(self._state["trust_domain"])

    @property
    def svid_ttl_s(self) -> int:
        """Default lifetime of the SVIDs it issues."""
        return int(self._state["svid_ttl_s"])

    @property
    def refresh_hint_s(self) -> int:
        """How often consumers re-read the bundle and CRL."""
        return int(self._state.get("refresh_hint_s", DEFAULT_REFRESH_HINT_S))

    def bundle(self) -> TrustBundle:
        """The published bundle (re-read from disk, so it reflects other processes' changes)."""
        return TrustBundle.load(self.trust_domain, bundle_paths(self.directory)[0])

    @property
    def bundle_pem_path(self) -> Path:
        """The PEM bundle file (what ``curl --cacert`` takes)."""
        return bundle_paths(self.directory)[1]

    @property
    def crl_path(self) -> Path:
        """The published CRLs (one PEM block per authority)."""
        return self.directory / "crl.pem"

    # ------------------------------------------------------------------ issuing

    def issue(
        self,
        spiffe_id: SpiffeId | str,
        public_key: ec.EllipticCurvePublicKey,
        ttl_s: int | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> tuple[x509.Certificate, ...]:
        """Sign an X509-SVID for ``spiffe_id`` over a public key the workload generated itself.

        The key pair stays with the workload; only the public half reaches the CA. The chain
        returned is the leaf alone (the authority is in the bundle). ``dns_names`` and
        ``ip_addresses`` add SANs for clients that check host names (curl against the front).

        Raises:
            InvalidSpiffeIdError: the ID is invalid or belongs to another trust domain.
            ConfigError: a TTL that is not positive or outlives the authority.
        """
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        try:
            sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        builder, auth = self._leaf(spiffe_id, public_key, ttl_s, sans, signing=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        chain = (builder.sign(auth.key, hashes.SHA256()),)
        _SECURITY["svids_issued"].inc()
        return chain

    def issue_signer(
        self,
        spiffe_id: SpiffeId | str,
        ed25519_public: ed25519.Ed25519PublicKey,
        mldsa65_public: mldsa.MLDSA65PublicKey,
        ttl_s: int | None = None,
    ) -> x509.Certificate:
        """Certify a workload's signing keys (see :mod:`x0tta6bl4.security.signing`).

        The certificate is over the Ed25519 key, names ``spiffe_id`` and carries the ML-DSA-65
        public key in an extension; it allows signing, not TLS. Its lifetime defaults to
        :data:`~x0tta6bl4.security.signing.DEFAULT_SIGNER_TTL_S`, capped by the authority's.

        Raises:
            InvalidSpiffeIdError, ConfigError: as :meth:`issue`.
        """
        from x0tta6bl4.security.signing import DEFAULT_SIGNER_TTL_S, MLDSA_KEY_OID

        ttl = DEFAULT_SIGNER_TTL_S if ttl_s is None else ttl_s
        builder, auth = self._leaf(spiffe_id, ed25519_public, ttl, [], signing=True)
        builder = builder.add_extension(
            x509.UnrecognizedExtension(MLDSA_KEY_OID, mldsa65_public.public_bytes_raw()), critical=False
        )
        return builder.sign(auth.key, hashes.SHA256())

    def _leaf(
        self,
        spiffe_id: SpiffeId | str,
        public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
        ttl_s: int | None,
        extra_sans: list[x509.GeneralName],
        signing: bool,
    ) -> tuple[x509.CertificateBuilder, _Authority]:
        """The parts every leaf shares: subject, SPIFFE URI SAN, validity, key usage, key ids."""
        sid = parse_spiffe_id(str(spiffe_id))
        if sid.trust_domain.name != self.trust_domain:
            raise ConfigError(f"{sid} is outside the trust domain {self.trust_domain!r}")
        ttl = self.svid_ttl_s if ttl_s is None else int(ttl_s)
        if ttl < 1:
            raise ConfigError("an SVID's TTL must be at least 1 s")
        with self._lock:
            self._maintain()
            auth = self._authority(self._state["active"])
        now = _now()
        not_after = min(now + dt.timedelta(seconds=ttl), auth.cert.not_valid_after_utc)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(sid)), *extra_sans]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.trust_domain)]))
            .issuer_name(auth.cert.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(now - dt.timedelta(seconds=min(BACKDATE_S, ttl // 10)))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)  # subject is not empty
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=signing,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(auth.key.public_key()), critical=False
            )
        )
        return builder, auth

    def issue_svid(
        self,
        spiffe_id: SpiffeId | str,
        ttl_s: int | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> Svid:
        """A fresh key pair and its SVID (for workloads in this process and the CLI)."""
        key = ec.generate_private_key(ec.SECP256R1())
        chain = self.issue(spiffe_id, key.public_key(), ttl_s, dns_names, ip_addresses)
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return Svid.parse(pem, key_pem)  # checks conformance with py-spiffe on every issue

    # --------------------------------------------------------------- lifecycle

    def rotate(self) -> str:
        """Make a new signing authority active; the old one stays in the bundle until it expires.

        Returns the new authority's fingerprint. SVIDs signed by the old one keep verifying, so
        rotation interrupts nothing.
        """
        with self._lock:
            self._reload()
            ident = self._new_authority()
            self._publish()
        _SECURITY["ca_rotations"].inc()
        return ident

    def remove_authority(self, ident: str) -> None:
        """Revoke a whole authority the SPIFFE way: drop it from the bundle (sequence rises).

        Every SVID it signed stops verifying at each enforcement point's next bundle refresh.
        The active authority is replaced by a new one first.

        Raises:
            ConfigError: no authority with that fingerprint (a unique prefix is enough).
        """
        with self._lock:
            self._reload()
            match = [a for a in self._state["authorities"] if a["id"].startswith(ident.lower())]
            if len(match) != 1:
                raise ConfigError(f"no single authority matches {ident[:64]!r}")
            victim = match[0]["id"]
            if victim == self._state["active"]:
                self._new_authority()
            self._state["authorities"] = [a for a in self._state["authorities"] if a["id"] != victim]
            # Remembered so that signatures its signers made stop verifying (an authority that
            # merely expired still vouches for what was signed while it was valid).
            self._state.setdefault("removed", []).append(victim)
            self._publish()
        _SECURITY["revocations"].inc()

    def revoke(self, serial: int) -> None:
        """Revoke one SVID by serial: it enters its authority's CRL, which every enforcement point re-reads.

        Raises:
            ConfigError: no authority of this CA has a record of issuing it (serials are
                random, so the CRL of the active authority takes it when unknown).
        """
        if serial <= 0:
            raise ConfigError("serial numbers are positive")
        with self._lock:
            self._reload()
            revoked = self._revoked()
            revoked.setdefault(self._state["active"], {})[format(serial, "x")] = _now().isoformat()
            write_atomic(self.directory / "revoked.json", json.dumps(revoked, indent=1) + "\n", mode=0o600)
            self._publish()
        _SECURITY["revocations"].inc()

    def revoke_svid(self, cert: x509.Certificate) -> None:
        """Revoke the SVID whose leaf is ``cert`` in the CRL of the authority that signed it."""
        akid = _akid(cert)
        with self._lock:
            self._reload()
            owner = next(
                (a["id"] for a in self._state["authorities"] if _skid(self._authority(a["id"]).cert) == akid),
                self._state["active"],
            )
            revoked = self._revoked()
            revoked.setdefault(owner, {})[format(cert.serial_number, "x")] = _now().isoformat()
            write_atomic(self.directory / "revoked.json", json.dumps(revoked, indent=1) + "\n", mode=0o600)
            self._publish()
        _SECURITY["revocations"].inc()

    def authorities(self) -> list[dict[str, Any]]:
        """Each authority in the bundle: fingerprint, validity, whether it signs new SVIDs."""
        self._reload()
        out = []
        for entry in self._state["authorities"]:
            cert = self._authority(entry["id"]).cert
            out.append(
                {
                    "fingerprint": entry["id"],
                    "active": entry["id"] == self._state["active"],
                    "not_before": cert.not_valid_before_utc.isoformat(),
                    "not_after": cert.not_valid_after_utc.isoformat(),
                }
            )
        return out

    # ---------------------------------------------------------------- internals

    def _reload(self) -> None:
        self._state = self._read_state(self.directory / "state.json")

    def _authority(self, ident: str) -> _Authority:
        d = self.directory / "authorities" / ident
        try:
            cert = x509.load_pem_x509_certificate((d / "cert.pem").read_bytes())
            key = serialization.load_pem_private_key((d / "key.pem").read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise CaError(f"authority {ident[:16]} in {self.directory} is unreadable: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"authority {ident[:16]} has a non-EC key")
        return _Authority(ident, cert, key)

    def _revoked(self) -> dict[str, dict[str, str]]:
        path = self.directory / "revoked.json"
        if not path.exists():
            return {}
        try:
            data: dict[str, dict[str, str]] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CaError(f"unreadable revocation list {path}: {exc}") from None
        return data

    def _new_authority(self) -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        index = len(self._state["authorities"]) + int(self._state["sequence"])
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, f"x0tta6bl4 authority {index}"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - dt.timedelta(seconds=BACKDATE_S))
            .not_valid_after(now + dt.timedelta(seconds=int(self._state["ca_ttl_s"])))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{self.trust_domain}")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        ident = cert.fingerprint(hashes.SHA256()).hex()
        d = self.directory / "authorities" / ident
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(
            d / "key.pem",
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            mode=0o600,
        )
        write_atomic(d / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
        self._state["authorities"].append({"id": ident})
        self._state["active"] = ident
        return ident

    def _maintain(self) -> None:
        """Create the first authority, rotate one near expiry, prune expired ones; then publish."""
        changed = False
        if self._state["active"] is None:
            self._new_authority()
            changed = True
        now = _now()
        active = self._authority(self._state["active"])
        # Rotate while the active authority can still sign a full-TTL SVID three times over.
        if active.cert.not_valid_after_utc - now < dt.timedelta(seconds=3 * self.svid_ttl_s):
            self._new_authority()
            changed = True
        kept = []
        for entry in self._state["authorities"]:
            if (
                entry["id"] == self._state["active"]
                or self._authority(entry["id"]).cert.not_valid_after_utc > now
            ):
                kept.append(entry)
            else:
                changed = True
        self._state["authorities"] = kept
        if changed or not bundle_paths(self.directory)[0].exists():
            self._publish()

    def _publish(self) -> None:
        """Bump the sequence and rewrite bundle, CRLs and state (in that order: state last)."""
        self._state["sequence"] = int(self._state["sequence"]) + 1
        authorities = [self._authority(a["id"]) for a in self._state["authorities"]]
        bundle = TrustBundle(
            self.trust_domain,
            tuple(a.cert for a in authorities),
            int(self._state["sequence"]),
            self.refresh_hint_s,
        )
        jwks_path, pem_path = bundle_paths(self.directory)
        bundle.save(jwks_path, pem_path)
        revoked = self._revoked()
        now = _now()
        crls = []
        for auth in authorities:
            builder = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(auth.cert.subject)
                .last_update(now - dt.timedelta(seconds=BACKDATE_S))
                .next_update(now + dt.timedelta(seconds=max(60, 10 * self.refresh_hint_s)))
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(auth.key.public_key()), critical=False
                )
                .add_extension(x509.CRLNumber(int(self._state["sequence"])), critical=False)
            )
            for serial_hex, when in sorted(revoked.get(auth.ident, {}).items()):
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(serial_hex, 16))
                    .revocation_date(dt.datetime.fromisoformat(when))
                    .build()
                )
            crls.append(builder.sign(auth.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        write_atomic(self.crl_path, b"".join(crls))
        write_atomic(self.directory / "state.json", json.dumps(self._state, indent=1) + "\n", mode=0o600)


def _skid(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def _akid(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None
