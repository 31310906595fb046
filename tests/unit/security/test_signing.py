"""Hybrid signatures: both halves checked, bound to the signer's CA-certified SPIFFE ID, policy by ID."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from x0tta6bl4.security.ca import EmbeddedCA
from x0tta6bl4.security.provenance import ProvenanceConfig, ProvenancePolicy, signer_allowed
from x0tta6bl4.security.signing import HybridSignature, SignatureError, SignatureVerifier, Signer

TRAINER = "spiffe://x0tta6bl4.local/trainer"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedCA:
    return EmbeddedCA.open(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def trainer(ca: EmbeddedCA) -> Signer:
    return Signer.obtain(ca, TRAINER)


def test_a_signature_round_trips_through_json_and_names_its_signer(ca: EmbeddedCA, trainer: Signer) -> None:
    record = trainer.sign(b"manifest", "model-version").to_dict()
    sid = SignatureVerifier(ca.directory).verify(HybridSignature.parse(record), b"manifest", "model-version")
    assert str(sid) == TRAINER


def test_saved_identity_has_private_keys_0600_and_is_reused(ca: EmbeddedCA, trainer: Signer) -> None:
    d = ca.directory / "signers" / "trainer"
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in d.iterdir() if p.suffix != ".pem"} == {
        "ed25519.key": "0o600",
        "mldsa65.seed": "0o600",
    }
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    assert Signer.obtain(ca, TRAINER).certificate == trainer.certificate


@pytest.mark.parametrize("half", ["ed25519", "mldsa65"])
def test_either_half_wrong_fails_the_whole_signature(ca: EmbeddedCA, trainer: Signer, half: str) -> None:
    good = trainer.sign(b"payload", "ctx")
    other = trainer.sign(b"other payload", "ctx")
    forged = dataclasses.replace(good, **{half: getattr(other, half)})
    with pytest.raises(SignatureError) as err:
        SignatureVerifier(ca.directory).verify(forged, b"payload", "ctx")
    assert err.value.reason == "bad-signature"


def test_signatures_do_not_cross_contexts_or_payloads(ca: EmbeddedCA, trainer: Signer) -> None:
    sig = trainer.sign(b"runbook text", "runbook")
    verifier = SignatureVerifier(ca.directory)
    for payload, context in ((b"runbook text", "model-version"), (b"runbook text!", "runbook")):
        with pytest.raises(SignatureError, match="wrong"):
            verifier.verify(sig, payload, context)


def test_a_changed_signing_time_breaks_the_signature(ca: EmbeddedCA, trainer: Signer) -> None:
    sig = trainer.sign(b"x", "ctx")
    moved = dataclasses.replace(
        sig, signed_at=sig.signed_at.replace(microsecond=(sig.signed_at.microsecond + 1) % 10**6)
    )
    with pytest.raises(SignatureError) as err:
        SignatureVerifier(ca.directory).verify(moved, b"x", "ctx")
    assert err.value.reason == "bad-signature"


def test_a_signer_certified_by_another_ca_is_untrusted(ca: EmbeddedCA, tmp_path: Path) -> None:
    rogue = Signer.generate(EmbeddedCA.open(tmp_path / "rogue"), TRAINER)
    with pytest.raises(SignatureError) as err:
        SignatureVerifier(ca.directory).verify(rogue.sign(b"x", "ctx"), b"x", "ctx")
    assert err.value.reason == "untrusted"


def test_revoked_and_removed_authorities_stop_verifying(tmp_path: Path) -> None:
    ca = EmbeddedCA.open(tmp_path / "ca")
    signer = Signer.generate(ca, TRAINER)
    sig = signer.sign(b"x", "ctx")
    verifier = SignatureVerifier(ca.directory)
    assert str(verifier.verify(sig, b"x", "ctx")) == TRAINER
    ca.revoke_svid(signer.certificate)
    verifier.reload()
    with pytest.raises(SignatureError) as err:
        verifier.verify(sig, b"x", "ctx")
    assert err.value.reason == "revoked"
    second = Signer.generate(ca, TRAINER)
    sig2 = second.sign(b"x", "ctx")
    ca.remove_authority(ca.authorities()[0]["fingerprint"])
    verifier.reload()
    with pytest.raises(SignatureError) as err:
        verifier.verify(sig2, b"x", "ctx")
    assert err.value.reason == "untrusted"


def test_malformed_records_are_refused_with_a_reason() -> None:
    for record in (None, [], {"certificate": "not pem"}, {"signer_fingerprint": "ab"}):
        with pytest.raises(SignatureError) as err:
            HybridSignature.parse(record)
        assert err.value.reason == "malformed"


def test_policy_patterns_match_ids_kinds_and_prefixes() -> None:
    assert signer_allowed(TRAINER, ["trainer"])
    assert signer_allowed("spiffe://x0tta6bl4.local/operator/alice", ["operator/*"])
    assert not signer_allowed("spiffe://x0tta6bl4.local/controller", ["trainer", "operator/*"])
    assert signer_allowed("spiffe://x0tta6bl4.local/operator/bob", ["spiffe://x0tta6bl4.local/operator/bob"])


def test_policy_refuses_unsigned_and_disallowed_signers(ca: EmbeddedCA, trainer: Signer) -> None:
    policy = ProvenancePolicy(ProvenanceConfig(ca_dir=str(ca.directory), ledger_dir=os.devnull))
    assert policy.check_model(trainer.sign(b"m", "model-version").to_dict(), b"m") == TRAINER
    with pytest.raises(SignatureError) as err:
        policy.check_model(None, b"m")
    assert err.value.reason == "unsigned"
    with pytest.raises(SignatureError) as err:
        policy.check_runbook(trainer.sign(b"m", "runbook").to_dict(), b"m")
    assert err.value.reason == "disallowed"
