"""Serve's scorer refuses model versions that are unsigned or signed by a disallowed identity; the old one serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from x0tta6bl4.models.bootstrap import BootstrapConfig, bootstrap_detector
from x0tta6bl4.models.lora import full_arrays
from x0tta6bl4.models.registry import ModelRegistry
from x0tta6bl4.models.signing import UntrustedVersionError, check_signature, sign_version
from x0tta6bl4.security.ca import EmbeddedCA
from x0tta6bl4.security.identity import WorkloadKind
from x0tta6bl4.security.ledger import Ledger
from x0tta6bl4.security.provenance import ProvenanceConfig, ProvenancePolicy
from x0tta6bl4.security.signing import SignatureVerifier
from x0tta6bl4.serve.anomaly import AnomalyScorer
from x0tta6bl4.serve.config import AnomalyConfig, AnomalyUserConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRegistry, ProvenanceConfig, str]:
    root = tmp_path_factory.mktemp("prov")
    provenance = ProvenanceConfig(ca_dir=str(root / "ca"), ledger_dir=str(root / "ledger"))
    registry = ModelRegistry(str(root / "registry"))
    signed = bootstrap_detector(
        registry, BootstrapConfig(nodes=120, ticks=40, epochs=1), provenance=ProvenancePolicy(provenance)
    )
    return registry, provenance, signed.version


def _copy_version(
    registry: ModelRegistry, version: str, signer_kind: WorkloadKind | None, cfg: ProvenanceConfig
) -> str:
    """The same weights written again, unsigned or signed by ``signer_kind``."""
    from x0tta6bl4.models.bootstrap import load_detector

    detector, loaded = load_detector(registry, version)
    written = registry.write_version(
        loaded.version.model, full_arrays(detector), loaded.spec, loaded.metrics, loaded.card
    )
    if signer_kind is not None:
        sign_version(registry, written.model, written.version, ProvenancePolicy(cfg).signer(signer_kind))
    return written.version


def test_bootstrap_signs_as_trainer_and_records_training_and_promotion(setup) -> None:
    registry, cfg, version = setup
    name = registry.models()[0]
    assert (
        check_signature(registry, name, version, ProvenancePolicy(cfg)) == "spiffe://x0tta6bl4.local/trainer"
    )
    ledger = Ledger(cfg.ledger_dir)
    kinds = [(e["kind"], e["subject"]) for _, e in ledger.lines() if isinstance(e, dict)]
    assert kinds[-2:] == [("model.train", f"{name}/{version}"), ("model.promote", f"{name}/{version}")]
    assert ledger.verify(SignatureVerifier(str(cfg.ca_dir))).ok


@pytest.mark.parametrize(("signer", "reason"), [(None, "unsigned"), (WorkloadKind.CONTROLLER, "disallowed")])
def test_refused_version_leaves_the_previous_one_serving_and_says_why(setup, signer, reason) -> None:
    registry, cfg, version = setup
    scorer = AnomalyScorer(AnomalyConfig(registry=registry.uri, provenance=cfg, bootstrap=False))
    scorer.apply(AnomalyUserConfig())
    assert scorer.model.get().version == version
    candidate = _copy_version(registry, version, signer, cfg)
    scorer.apply(AnomalyUserConfig(model_version=candidate))
    assert scorer.model.get().version == version
    described = scorer.describe()
    assert described["version"] == version
    assert candidate in described["last_load_error"] and f"({reason})" in described["last_load_error"]
    with pytest.raises(UntrustedVersionError) as err:
        check_signature(registry, registry.models()[0], candidate, ProvenancePolicy(cfg))
    assert err.value.reason == reason


def test_a_tampered_signature_file_is_refused(setup, tmp_path: Path) -> None:
    registry, cfg, version = setup
    candidate = _copy_version(registry, version, WorkloadKind.TRAINER, cfg)
    name = registry.models()[0]
    sig_path = Path(registry.uri.removeprefix("file://")) / name / candidate / "SIGNATURE.json"
    sig_path.write_text(sig_path.read_text().replace('"mldsa65": "', '"mldsa65": "AAAA'))
    with pytest.raises(UntrustedVersionError) as err:
        check_signature(registry, name, candidate, ProvenancePolicy(cfg))
    assert err.value.reason in {"bad-signature", "malformed"}


def test_require_signatures_off_accepts_and_returns_no_signer(setup) -> None:
    registry, cfg, version = setup
    candidate = _copy_version(registry, version, None, cfg)
    lax = ProvenancePolicy(cfg.model_copy(update={"require_signatures": False}))
    assert check_signature(registry, registry.models()[0], candidate, lax) is None
    EmbeddedCA.open(cfg.ca_dir)  # the CA is intact after all of the above
