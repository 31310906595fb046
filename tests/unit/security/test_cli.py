"""`x0tta6bl4 identity`: issue, inspect, rotate, revoke and bundle through the real CLI; bad input exits 2 in one line."""

import json
import stat

import pytest

from x0tta6bl4.cli import main


@pytest.fixture
def ca_dir(tmp_path, monkeypatch):
    path = tmp_path / "ca"
    monkeypatch.setenv("X0TTA6BL4_CA_DIR", str(path))
    monkeypatch.setenv("X0TTA6BL4_LEDGER_DIR", str(tmp_path / "ledger"))
    return path


def identity(capsys, *args):
    code = main(["identity", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_an_operator_svid_in_one_command_then_inspected_rotated_and_revoked(ca_dir, tmp_path, capsys):
    alice = tmp_path / "alice"
    code, out, _ = identity(capsys, "issue", "operator/alice", "--out", str(alice))
    assert code == 0 and out.startswith("spiffe://x0tta6bl4.local/operator/alice serial ")
    assert stat.S_IMODE((alice / "svid.key").stat().st_mode) == 0o600
    assert (alice / "bundle.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")

    code, out, _ = identity(capsys, "inspect", str(alice), "--json")
    first = json.loads(out)
    assert code == 0 and first["state"] == "valid" and first["spiffe_id"].endswith("/operator/alice")

    assert identity(capsys, "rotate", "--out", str(alice))[0] == 0
    code, out, _ = identity(capsys, "inspect", str(alice), "--json")
    rotated = json.loads(out)
    assert code == 0 and rotated["serial"] != first["serial"] and rotated["spiffe_id"] == first["spiffe_id"]

    assert identity(capsys, "revoke", "--svid", str(alice))[0] == 0
    code, out, _ = identity(capsys, "inspect", str(alice), "--json")
    assert code == 1 and json.loads(out)["state"].startswith("revoked")

    code, out, _ = identity(capsys, "bundle", "--format", "jwks")
    assert code == 0 and json.loads(out)["keys"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["issue", "spiffe://x0tta6bl4.local/a/../b"], "spiffe"),
        (["issue", "nobody/x"], "neither a SPIFFE ID nor"),
        (["inspect", "no-such-dir"], "cannot read a certificate"),
        (["revoke", "--serial", "zz-not-hex"], "hex serial"),
        (["rotate"], "--out DIR"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(ca_dir, tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    code, out, err = identity(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("x0tta6bl4: error:") and needle in err


def test_identity_changes_are_in_the_ledger_and_verify(ca_dir, tmp_path, capsys):
    alice = tmp_path / "alice"
    identity(capsys, "issue", "operator/alice", "--out", str(alice))
    identity(capsys, "rotate", "--out", str(alice))
    identity(capsys, "revoke", "--svid", str(alice))
    assert main(["ledger", "show", "--json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["kind"] for e in entries] == ["svid.issue", "svid.rotate", "svid.revoke"]
    assert {e["actor"] for e in entries} == {"spiffe://x0tta6bl4.local/ca"}
    assert main(["ledger", "verify"]) == 0
    assert capsys.readouterr().out.startswith("ok: 3 entries")


def test_ledger_verify_names_the_edited_entry_and_exits_1(ca_dir, tmp_path, capsys):
    alice = tmp_path / "alice"
    identity(capsys, "issue", "operator/alice", "--out", str(alice))
    identity(capsys, "rotate", "--out", str(alice))
    path = tmp_path / "ledger" / "entries.jsonl"
    path.write_text(path.read_text().replace('"svid.rotate"', '"svid.revoke"'))
    assert main(["ledger", "verify", "--metrics-textfile", str(tmp_path / "ledger.prom")]) == 1
    assert "entry 1 (line 2)" in capsys.readouterr().out
    # A one-shot command leaves its verdict for node_exporter's textfile collector.
    prom = (tmp_path / "ledger.prom").read_text()
    assert 'x0tta6bl4_ledger_verifications_total{result="failed"}' in prom
    assert 'x0tta6bl4_ledger_verify_failures_total{kind="entry"}' in prom


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ledger", "verify", "--against", "7:xyz"], "SEQ:SHA256-HEX"),
        (["ledger", "verify", "--against", "missing-report.json"], "not SEQ:HASH nor a run report"),
        (["ledger", "--ledger-dir", "/nonexistent/ledger", "show"], "no ledger in"),
    ],
)
def test_ledger_bad_input_is_one_line_exit_2(ca_dir, tmp_path, capsys, args, message):
    (tmp_path / "ledger").mkdir()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("x0tta6bl4: error:") and message in err
