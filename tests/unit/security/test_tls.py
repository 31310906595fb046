"""Peer verification: one SPIFFE ID, a chain to its own trust domain's bundle, valid now, not revoked."""

import datetime as dt
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from x0tta6bl4.security.ca import EmbeddedCA
from x0tta6bl4.security.errors import PeerRejectedError
from x0tta6bl4.security.tls import (
    PeerVerifier,
    Revocations,
    client_context,
    handshake_in_memory,
    key_exchange_groups,
    negotiated_group,
    server_context,
)


def der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def ca(tmp_path):
    return EmbeddedCA.open(tmp_path / "ca")


def verifier_of(*cas):
    bundles = {c.trust_domain: c.bundle() for c in cas}
    revocations = Revocations()
    for c in cas:
        found = Revocations.load(c.crl_path, bundles)
        revocations = Revocations({**revocations.serials, **found.serials})
    return PeerVerifier(bundles, revocations)


def reason(verifier, cert):
    with pytest.raises(PeerRejectedError) as info:
        verifier.verify(der(cert) if cert is not None else None)
    return info.value.reason


def test_a_valid_svid_yields_its_spiffe_id(ca):
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/operator/alice")
    assert str(verifier_of(ca).verify(der(svid.leaf))) == "spiffe://x0tta6bl4.local/operator/alice"


def test_no_certificate_is_refused(ca):
    assert reason(verifier_of(ca), None) == "no-certificate"


def test_an_svid_of_another_trust_domain_is_refused_even_if_its_ca_is_trusted_for_that_domain(tmp_path, ca):
    other = EmbeddedCA.open(tmp_path / "other", trust_domain="partner.example")
    foreign = other.issue_svid("spiffe://partner.example/operator/mallory")
    assert reason(verifier_of(ca), foreign.leaf) == "wrong-trust-domain"
    # Federated: both bundles known, and the partner's CA cannot vouch for our trust domain.
    both = verifier_of(ca, other)
    assert str(both.verify(der(foreign.leaf))) == "spiffe://partner.example/operator/mallory"
    key = ec.generate_private_key(ec.SECP256R1())
    (forged,) = other.issue("spiffe://partner.example/x", key.public_key())
    assert both.verify(der(forged))
    impostor = _sign_with(other, "spiffe://x0tta6bl4.local/operator/alice")
    assert reason(both, impostor) == "untrusted"


def _sign_with(ca, uri, not_before=None, not_after=None):
    """A leaf for ``uri`` signed by ``ca``'s active key whatever its trust domain (an attacker's CA)."""
    auth = ca._authority(ca._state["active"])  # test-only: reach the key to forge
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))
        .issuer_name(auth.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=1))
        .not_valid_after(not_after or now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(auth.key.public_key()), critical=False
        )
        .sign(auth.key, hashes.SHA256())
    )


def test_an_expired_svid_is_refused(ca):
    now = dt.datetime.now(dt.UTC)
    old = _sign_with(
        ca,
        "spiffe://x0tta6bl4.local/operator/alice",
        now - dt.timedelta(hours=2),
        now - dt.timedelta(hours=1),
    )
    assert reason(verifier_of(ca), old) == "expired"


def test_a_revoked_svid_is_refused_once_the_crl_is_read(ca):
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/operator/alice")
    assert verifier_of(ca).verify(der(svid.leaf))
    ca.revoke_svid(svid.leaf)
    assert reason(verifier_of(ca), svid.leaf) == "revoked"


def test_svids_of_a_removed_authority_are_refused_and_others_still_pass(ca):
    old = ca.issue_svid("spiffe://x0tta6bl4.local/controller")
    first = ca.authorities()[0]["fingerprint"]
    ca.rotate()
    survivor = ca.issue_svid("spiffe://x0tta6bl4.local/controller")
    assert verifier_of(ca).verify(der(old.leaf))  # rotation alone keeps old SVIDs valid
    ca.remove_authority(first)
    assert reason(verifier_of(ca), old.leaf) == "untrusted"
    assert verifier_of(ca).verify(der(survivor.leaf))


def test_a_crl_signed_by_no_bundle_authority_is_ignored(tmp_path, ca):
    other = EmbeddedCA.open(tmp_path / "other")
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/operator/alice")
    other.revoke(svid.serial)  # an unrelated CA "revokes" our SVID: not its to revoke
    bundles = {ca.trust_domain: ca.bundle()}
    revocations = Revocations.parse(other.crl_path.read_bytes(), bundles)
    assert not revocations.is_revoked(svid.leaf)


def test_two_uri_sans_are_not_an_svid(ca):
    auth = ca._authority(ca._state["active"])
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))
        .issuer_name(auth.cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("spiffe://x0tta6bl4.local/a"),
                    x509.UniformResourceIdentifier("spiffe://x0tta6bl4.local/operator/b"),
                ]
            ),
            critical=False,
        )
        .sign(auth.key, hashes.SHA256())
    )
    assert reason(verifier_of(ca), cert) == "bad-svid"


def test_the_group_probe_handshakes_for_real(ca):
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/front")
    groups = key_exchange_groups(svid, {ca.trust_domain: ca.bundle()})
    assert groups["X25519"] is True  # every OpenSSL 3 has it
    assert set(groups) >= {"X25519MLKEM768", "prime256v1"}


@pytest.mark.parametrize(
    ("forced", "reported"), [("prime256v1", "secp256r1"), ("secp384r1", "secp384r1"), ("X25519", "x25519")]
)
def test_the_negotiated_group_is_read_from_the_connection(ca, forced, reported):
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/front")
    bundles = {ca.trust_domain: ca.bundle()}
    server_ctx = server_context(svid, bundles)
    server_ctx.set_ecdh_curve(forced)  # the server allows this group only, so it is what both ends agree
    established = handshake_in_memory(server_ctx, client_context(svid, bundles))
    assert established is not None
    server, client = established
    assert negotiated_group(server) == reported
    assert negotiated_group(client) == reported


def test_a_connection_without_a_handshake_has_no_group(ca):
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/front")
    bundles = {ca.trust_domain: ca.bundle()}
    unstarted = server_context(svid, bundles).wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert negotiated_group(unstarted) is None
