"""The audit ledger finds every edited, removed, reordered, forged or truncated entry, naming it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from x0tta6bl4.observability.metrics import REGISTRY
from x0tta6bl4.security.ca import EmbeddedCA
from x0tta6bl4.security.ledger import GENESIS, Ledger, LedgerHead, entry_body
from x0tta6bl4.security.signing import SignatureVerifier, Signer

CONTROLLER = "spiffe://x0tta6bl4.local/controller"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedCA:
    return EmbeddedCA.open(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def controller(ca: EmbeddedCA) -> Signer:
    return Signer.obtain(ca, CONTROLLER)


@pytest.fixture
def ledger(tmp_path: Path, controller: Signer) -> Ledger:
    ledger = Ledger(tmp_path / "ledger")
    for i in range(8):
        ledger.append(
            controller, "remediation.action", f"node-{i}", {"action": "reroute", "verdict": "healed"}
        )
    return ledger


def _failures(kind: str) -> float:
    """Problems ledger verification exported (prometheus-client here: no Ray in unit tests)."""
    return REGISTRY.get_sample_value("x0tta6bl4_ledger_verify_failures_total", {"kind": kind}) or 0.0


def _lines(ledger: Ledger) -> list[str]:
    return ledger.entries_path.read_text().splitlines()


def _write(ledger: Ledger, lines: list[str]) -> None:
    ledger.entries_path.write_text("".join(line + "\n" for line in lines))


def test_an_untouched_ledger_verifies_and_chains_from_genesis(ledger: Ledger, ca: EmbeddedCA) -> None:
    report = ledger.verify(SignatureVerifier(ca.directory))
    assert report.ok and report.entries == 8
    assert report.signers == {CONTROLLER: 8}
    first = json.loads(_lines(ledger)[0])
    assert first["prev"] == GENESIS and first["seq"] == 0
    assert report.head == ledger.current() == report.against


def test_edited_entry_is_named(ledger: Ledger, ca: EmbeddedCA) -> None:
    lines = _lines(ledger)
    entry = json.loads(lines[3])
    entry["data"]["verdict"] = "failed"
    _write(ledger, [*lines[:3], json.dumps(entry), *lines[4:]])
    before = _failures("entry")
    report = ledger.verify(SignatureVerifier(ca.directory))
    assert not report.ok and report.bad_seq == 3 and "edited" in str(report.problem)
    assert _failures("entry") == before + 1


def test_removed_and_reordered_entries_are_named(ledger: Ledger, ca: EmbeddedCA) -> None:
    lines = _lines(ledger)
    for tampered in (lines[:5] + lines[6:], [*lines[:5], lines[6], lines[5], *lines[7:]]):
        _write(ledger, tampered)
        report = ledger.verify(SignatureVerifier(ca.directory))
        assert not report.ok and report.bad_seq == 5 and "removed or reordered" in str(report.problem)


def test_a_rehashed_entry_signed_by_another_identity_is_forged(ledger: Ledger, ca: EmbeddedCA) -> None:
    intruder = Signer.obtain(ca, "spiffe://x0tta6bl4.local/trainer")
    lines = _lines(ledger)
    last = json.loads(lines[-1])
    last["data"]["verdict"] = "failed"
    last["signer_fingerprint"] = intruder.certificate.fingerprint(hashes.SHA256()).hex()
    body = entry_body(last)
    last["hash"] = hashlib.sha256(body).hexdigest()
    last["signature"] = intruder.sign(body, "ledger-entry").to_dict()
    _write(ledger, [*lines[:-1], json.dumps(last)])
    report = ledger.verify(SignatureVerifier(ca.directory), against=LedgerHead(7, last["hash"]))
    assert not report.ok and report.bad_seq == 7 and "forged" in str(report.problem)


def test_a_self_signed_forgery_is_untrusted(ledger: Ledger, ca: EmbeddedCA, tmp_path: Path) -> None:
    rogue = Signer.generate(EmbeddedCA.open(tmp_path / "rogue"), CONTROLLER)
    lines = _lines(ledger)
    last = json.loads(lines[-1])
    last["data"]["verdict"] = "failed"
    body = entry_body(last)
    last["hash"] = hashlib.sha256(body).hexdigest()
    last["signature"] = rogue.sign(body, "ledger-entry").to_dict()  # with its certificate inline
    _write(ledger, [*lines[:-1], json.dumps(last)])
    report = ledger.verify(SignatureVerifier(ca.directory), against=LedgerHead(7, last["hash"]))
    assert not report.ok and report.bad_seq == 7 and "untrusted" in str(report.problem)


def test_a_truncated_tail_fails_against_the_published_head(ledger: Ledger, ca: EmbeddedCA) -> None:
    published = ledger.current()
    _write(ledger, _lines(ledger)[:5])
    before = _failures("truncated")
    report = ledger.verify(SignatureVerifier(ca.directory))
    assert not report.ok and "truncated" in str(report.problem) and report.bad_seq == 5
    assert _failures("truncated") == before + 1
    report = ledger.verify(SignatureVerifier(ca.directory), against=published)
    assert not report.ok and "truncated" in str(report.problem)


def test_a_torn_last_line_is_cut_before_the_next_append(
    ledger: Ledger, ca: EmbeddedCA, controller: Signer
) -> None:
    text = ledger.entries_path.read_text()
    ledger.entries_path.write_text(text + text.splitlines()[-1][:200])
    entry = ledger.append(controller, "run.end", "run-1")
    assert entry["seq"] == 8
    assert ledger.verify(SignatureVerifier(ca.directory)).ok


def test_bad_kind_and_oversized_data_are_refused(tmp_path: Path, controller: Signer) -> None:
    from x0tta6bl4.errors import ConfigError

    ledger = Ledger(tmp_path / "l")
    with pytest.raises(ConfigError, match="unknown ledger entry kind"):
        ledger.append(controller, "remediaton.action", "x")
    with pytest.raises(ConfigError, match="over"):
        ledger.append(controller, "run.end", "x", {"blob": "a" * 20000})
    assert not ledger.entries_path.exists()


def test_head_parses_and_rejects_junk() -> None:
    from x0tta6bl4.errors import ConfigError

    head = LedgerHead.parse(f"12:{'ab' * 32}")
    assert head.seq == 12 and str(head) == f"12:{'ab' * 32}"
    for junk in ("", "12", "x:" + "ab" * 32, "3:" + "zz" * 32):
        with pytest.raises(ConfigError):
            LedgerHead.parse(junk)


def test_a_workloads_svid_issue_and_rotation_land_in_the_ledger_beside_its_ca(
    tmp_path: Path, monkeypatch
) -> None:
    from x0tta6bl4.security.source import EmbeddedSource

    monkeypatch.delenv("X0TTA6BL4_LEDGER_DIR", raising=False)
    source = EmbeddedSource("spiffe://x0tta6bl4.local/front", ca_dir=tmp_path / "ca")
    try:
        source.renew_now()
    finally:
        source.close()
    ledger = Ledger(tmp_path / "ledger")
    entries = [e for _, e in ledger.lines() if isinstance(e, dict)]
    assert [(e["kind"], e["actor"]) for e in entries] == [
        ("svid.issue", "spiffe://x0tta6bl4.local/ca"),
        ("svid.rotate", "spiffe://x0tta6bl4.local/ca"),
    ]
    assert entries[1]["data"]["serial"] == format(source.svid().serial, "x")
    assert ledger.verify(SignatureVerifier(tmp_path / "ca")).ok
