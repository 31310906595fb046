"""The embedded CA: conforming X509-SVIDs, private keys 0600, rotation and revocation in the bundle and CRL."""

import datetime as dt
import json
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import X509Svid

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.security.bundle import TrustBundle
from x0tta6bl4.security.ca import EmbeddedCA
from x0tta6bl4.security.errors import InvalidSpiffeIdError, InvalidSvidError
from x0tta6bl4.security.svid import Svid


@pytest.fixture
def ca(tmp_path):
    return EmbeddedCA.open(tmp_path / "ca")


def test_issued_svids_parse_as_x509_svids_with_py_spiffe(ca):
    svid = ca.issue_svid(
        "spiffe://x0tta6bl4.local/operator/alice", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    parsed = X509Svid.parse(svid.chain_pem(), svid.key_pem())  # the spec's leaf rules
    assert str(parsed.spiffe_id) == "spiffe://x0tta6bl4.local/operator/alice"
    leaf = svid.leaf
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == ["spiffe://x0tta6bl4.local/operator/alice"]


def test_default_svid_ttl_is_one_hour_and_the_authority_outlives_it_sixfold(ca):
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/controller")
    ttl = svid.not_after - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=59) < ttl <= dt.timedelta(hours=1)
    authority = ca.bundle().authorities[0]
    assert authority.not_valid_after_utc - authority.not_valid_before_utc >= 6 * dt.timedelta(hours=1)
    with pytest.raises(ConfigError):
        EmbeddedCA.open(ca.directory.parent / "other", ca_ttl_s=3600, svid_ttl_s=3600)


def test_renewal_falls_at_half_life_within_the_jitter(ca):
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/controller", ttl_s=1000)
    ttl = svid.not_after - svid.not_before
    times = [svid.renew_at(0.1) for _ in range(200)]
    assert all(svid.not_before + 0.4 * ttl <= t <= svid.not_before + 0.6 * ttl for t in times)
    assert len(set(times)) > 100  # jittered, not one instant for every workload


def test_keys_are_private_and_the_ca_key_stays_in_its_directory(ca, tmp_path):
    for key in ca.directory.glob("authorities/*/key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ca.directory.stat().st_mode) == 0o700
    svid = ca.issue_svid("spiffe://x0tta6bl4.local/operator/bob")
    out = svid.save(tmp_path / "bob")
    assert stat.S_IMODE((out / "svid.key").stat().st_mode) == 0o600
    published = b"".join(p.read_bytes() for p in ca.directory.glob("*.pem")) + b"".join(
        p.read_bytes() for p in ca.directory.glob("*.json")
    )
    assert b"PRIVATE KEY" not in published
    assert Svid.load(out).serial == svid.serial


def test_the_ca_signs_a_public_key_the_workload_generated(ca):
    key = ec.generate_private_key(ec.SECP256R1())
    (leaf,) = ca.issue("spiffe://x0tta6bl4.local/shard/r0", key.public_key(), ttl_s=60)
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()


def test_ids_of_another_trust_domain_or_malformed_are_refused(ca):
    with pytest.raises(ConfigError):
        ca.issue_svid("spiffe://elsewhere.org/operator/alice")
    with pytest.raises(InvalidSpiffeIdError):
        ca.issue_svid("spiffe://x0tta6bl4.local")


def test_rotation_adds_an_authority_and_raises_the_bundle_sequence(ca):
    before = ca.bundle()
    old = ca.issue_svid("spiffe://x0tta6bl4.local/controller")
    ca.rotate()
    after = ca.bundle()
    assert after.sequence > before.sequence
    assert len(after.authorities) == 2 and after.contains(before.authorities[0])
    new = ca.issue_svid("spiffe://x0tta6bl4.local/controller")

    def akid(svid):
        return svid.leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier

    assert akid(new) != akid(old)  # signed by the new authority; the old SVID still chains to the bundle


def test_removing_an_authority_drops_it_from_the_bundle(ca):
    first = ca.authorities()[0]["fingerprint"]
    seq = ca.bundle().sequence
    ca.remove_authority(first[:12])
    bundle = ca.bundle()
    assert bundle.sequence > seq
    assert all(a["fingerprint"] != first for a in ca.authorities())
    assert len(bundle.authorities) == 1  # a fresh authority took over
    with pytest.raises(ConfigError):
        ca.remove_authority("ffffffffffff")


def test_the_jwks_bundle_follows_the_spiffe_format_and_round_trips(ca):
    jwks = json.loads((ca.directory / "bundle.jwks.json").read_text())
    assert jwks["spiffe_sequence"] >= 1 and jwks["spiffe_refresh_hint"] >= 1
    (key,) = jwks["keys"]
    assert key["use"] == "x509-svid" and key["kty"] == "EC" and key["crv"] == "P-256"
    assert len(key["x5c"]) == 1 and {"x", "y"} <= key.keys()
    again = TrustBundle.parse_jwks(ca.trust_domain, json.dumps(jwks))
    assert again.authorities == ca.bundle().authorities and again.sequence == jwks["spiffe_sequence"]


@pytest.mark.parametrize(
    "doc", ["{", "[]", '{"keys": [{"use": "x509-svid", "x5c": ["!!"]}]}', "x" * (2 << 20)]
)
def test_malformed_bundles_are_refused(doc):
    with pytest.raises(InvalidSvidError):
        TrustBundle.parse_jwks("x0tta6bl4.local", doc)


def test_an_svid_whose_key_is_not_its_own_is_refused(ca):
    a = ca.issue_svid("spiffe://x0tta6bl4.local/operator/a")
    b = ca.issue_svid("spiffe://x0tta6bl4.local/operator/b")
    with pytest.raises(InvalidSvidError):
        Svid.parse(a.chain_pem(), b.key_pem())


def test_a_ca_certificate_is_not_an_svid(ca):
    authority_pem = ca.bundle().to_pem()
    some_key = ca.issue_svid("spiffe://x0tta6bl4.local/operator/a").key_pem()
    with pytest.raises(InvalidSvidError):
        Svid.parse(authority_pem, some_key)


def test_reopening_keeps_the_trust_domain_and_refuses_another(ca):
    again = EmbeddedCA.open(ca.directory)
    assert again.bundle().authorities == ca.bundle().authorities
    with pytest.raises(ConfigError):
        EmbeddedCA.open(ca.directory, trust_domain="other.example")
