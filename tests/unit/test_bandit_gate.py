"""scripts/bandit_gate.py: high findings fail unless an allow-list entry names them; stale entries fail."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bandit_gate", REPO / "scripts" / "bandit_gate.py")
assert _spec is not None and _spec.loader is not None
gate_module = importlib.util.module_from_spec(_spec)
sys.modules["bandit_gate"] = gate_module
_spec.loader.exec_module(gate_module)


def _finding(test="B602", file="platform/x0tta6bl4/x.py", severity="HIGH", code="run(cmd, shell=True)"):
    return gate_module.Finding(test, file, 3, severity, "HIGH", "shell", code)


def _entry(**overrides):
    entry = {"test": "B602", "file": "platform/x0tta6bl4/x.py", "reason": "constant", "reviewed": "me"}
    return {**entry, **overrides}


def test_an_unlisted_high_finding_fails_and_medium_or_low_never_do():
    findings = [_finding(), _finding(severity="MEDIUM"), _finding(severity="LOW")]
    unexplained, stale = gate_module.gate(findings, [])
    assert unexplained == [findings[0]] and stale == []


def test_an_entry_covers_its_test_in_its_file_and_only_on_its_code_when_given():
    assert gate_module.gate([_finding()], [_entry()]) == ([], [])
    assert gate_module.gate([_finding()], [_entry(code="shell=True")]) == ([], [])
    for other in (_entry(test="B605"), _entry(file="jobs/x.py"), _entry(code="os.system")):
        unexplained, stale = gate_module.gate([_finding()], [other])
        assert unexplained == [_finding()] and stale == [other]


def test_an_entry_without_a_reason_or_reviewer_is_refused(tmp_path):
    path = tmp_path / "allow.toml"
    path.write_text('[[allow]]\ntest = "B602"\nfile = "x.py"\nreason = " "\n')
    with pytest.raises(SystemExit, match="reason, reviewed"):
        gate_module.load_allowlist(path)


def test_the_repositorys_allowlist_is_well_formed():
    for entry in gate_module.load_allowlist(gate_module.ALLOWLIST):
        assert (REPO / entry["file"]).is_file(), entry
