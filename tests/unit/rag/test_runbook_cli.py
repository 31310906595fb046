"""`x0tta6bl4 runbook sign|verify`: an operator's signed ingest body verifies; a changed runbook does not."""

import json

import pytest

from x0tta6bl4.cli import main
from x0tta6bl4.corpus import packaged_runbooks_dir


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("X0TTA6BL4_CA_DIR", str(tmp_path / "ca"))
    monkeypatch.setenv("X0TTA6BL4_LEDGER_DIR", str(tmp_path / "ledger"))
    runbook = next(f for f in packaged_runbooks_dir().iterdir() if f.name.endswith(".md"))
    path = tmp_path / "rb.md"
    path.write_text(runbook.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def test_signed_body_verifies_and_a_changed_action_does_not(env, tmp_path, capsys):
    body = tmp_path / "body.json"
    assert main(["runbook", "sign", str(env), "--as", "operator/alice", "--out", str(body)]) == 0
    doc = json.loads(body.read_text())["documents"][0]
    assert doc["signature"]["signer"] == "spiffe://x0tta6bl4.local/operator/alice"
    assert main(["runbook", "verify", str(body)]) == 0
    assert capsys.readouterr().out.startswith("ok ")
    text = doc["text"]
    action = next(line for line in text.splitlines() if line.startswith("action:"))
    other = "action: reroute" if "reroute" not in action else "action: restart_node"
    doc["text"] = text.replace(action, other)
    body.write_text(json.dumps({"documents": [doc]}))
    assert main(["runbook", "verify", str(body)]) == 1
    assert "FAILED document 0: bad-signature" in capsys.readouterr().out


def test_a_runbook_signed_by_a_non_operator_fails_verification(env, tmp_path, capsys):
    body = tmp_path / "body.json"
    assert main(["runbook", "sign", str(env), "--as", "trainer", "--out", str(body)]) == 0
    assert main(["runbook", "verify", str(body)]) == 1
    assert "disallowed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runbook", "sign", "missing.md"], "cannot read"),
        (["runbook", "verify", "missing.json"], "cannot read"),
        (["runbook", "sign", "RB", "--as", "nobody/x"], "neither a SPIFFE ID nor"),
    ],
)
def test_bad_input_is_one_line_exit_2(env, capsys, args, message):
    code = main([str(env) if a == "RB" else a for a in args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
