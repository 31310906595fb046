"""Runbook signatures: bad ones are refused at ingest, and the controller acts only on runbooks that verify."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from x0tta6bl4.mapek.audit import ControllerAudit
from x0tta6bl4.mapek.config import ControllerConfig
from x0tta6bl4.rag.config import RetrieverConfig
from x0tta6bl4.rag.errors import RetrievalInputError
from x0tta6bl4.rag.provenance import document_claim
from x0tta6bl4.rag.retriever import Retriever
from x0tta6bl4.rag.store import parse_document
from x0tta6bl4.security.ledger import Ledger
from x0tta6bl4.security.provenance import RUNBOOK_CONTEXT, ProvenanceConfig, ProvenancePolicy
from x0tta6bl4.security.signing import SignatureVerifier

RUNBOOK = """---
id: {id}
title: Drain the congested uplink of a mesh node
fault_type: null
action: {action}
severity: high
preconditions: []
tags: [uplink]
---
Zebra-crossing congestion on the uplink: {id} drains the queue of the uplink by {action}.
"""


class _Runbooks:
    """The Runbooks protocol over a real in-process retriever (what LocalRunbooks does)."""

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    def signatures(self, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
        return self.retriever.signatures(doc_ids)


@pytest.fixture
def setup(model, built, tmp_path: Path):
    shutil.copytree(built, tmp_path / "rag")
    prov = ProvenanceConfig(ca_dir=str(tmp_path / "ca"), ledger_dir=str(tmp_path / "ledger"))
    retriever = Retriever.open(RetrieverConfig(data_dir=tmp_path / "rag", provenance=prov), model=model)
    return retriever, prov


def _signed(text: str, policy: ProvenancePolicy, who: str = "operator/alice") -> dict[str, Any]:
    claim = document_claim(parse_document(text, 0, 1 << 20, 120, 0))
    return {"text": text, "signature": policy.signer(who).sign(claim, RUNBOOK_CONTEXT).to_dict()}


def _audit(prov: ProvenanceConfig) -> tuple[ControllerAudit, dict[str, int]]:
    counters: dict[str, int] = {}
    return ControllerAudit(ControllerConfig(provenance=prov), "run-t", counters, []), counters


def _answer(doc_id: str, action: str) -> dict[str, Any]:
    return {"action": action, "passages": [{"runbook_id": doc_id, "action": action}]}


def test_packaged_runbooks_are_signed_by_the_installer_and_recorded(setup) -> None:
    retriever, _ = setup
    ids = [d["runbook_id"] for d in retriever.query("packet loss on a link", 3).to_dict()["passages"]]
    records = retriever.signatures(ids)
    assert set(records) == set(ids)
    signer = json.loads(json.dumps(records[ids[0]]["signature"]))["signer"]
    assert signer == "spiffe://x0tta6bl4.local/operator/installer"


def test_only_signed_runbooks_yield_actions(setup) -> None:
    retriever, prov = setup
    policy = ProvenancePolicy(prov)
    retriever.ingest([RUNBOOK.format(id="unsigned-uplink", action="rate_limit")])
    retriever.ingest([_signed(RUNBOOK.format(id="signed-uplink", action="reroute"), policy)])
    audit, counters = _audit(prov)
    errors: list[str] = []
    runbooks = _Runbooks(retriever)
    assert audit.signed_actions(1, _answer("unsigned-uplink", "rate_limit"), runbooks, errors) == []
    assert counters["unsigned_runbook_actions_skipped"] == 1
    assert audit.signed_actions(2, _answer("signed-uplink", "reroute"), runbooks, errors) == [
        "reroute",
        "reroute",
    ]
    # A passage claiming another action than the signed one is not acted on either.
    assert audit.signed_actions(3, _answer("signed-uplink", "isolate_node"), runbooks, errors) == []
    kinds = [
        (e["kind"], e["subject"], e["data"].get("signed_by")) for _, e in Ledger(prov.ledger_dir).lines()
    ]
    assert ("runbook.ingest", "unsigned-uplink", None) in kinds
    assert ("runbook.ingest", "signed-uplink", "spiffe://x0tta6bl4.local/operator/alice") in kinds
    assert Ledger(prov.ledger_dir).verify(SignatureVerifier(str(prov.ca_dir))).ok


def test_a_tampered_signature_record_never_yields_an_action(setup) -> None:
    retriever, prov = setup
    retriever.ingest(
        [_signed(RUNBOOK.format(id="tampered-uplink", action="reroute"), ProvenancePolicy(prov))]
    )
    path = Path(retriever.config.data_dir) / "signatures.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[-1])
    rec["signature"]["mldsa65"] = rec["signature"]["mldsa65"][:-8] + "AAAAAAA="
    path.write_text("\n".join([*lines[:-1], json.dumps(rec)]) + "\n")
    audit, counters = _audit(prov)
    errors: list[str] = []
    assert audit.signed_actions(1, _answer("tampered-uplink", "reroute"), _Runbooks(retriever), errors) == []
    assert counters["runbook_signatures_refused"] == 1 and "signature refused" in errors[0]


@pytest.mark.parametrize(
    ("who", "mutate", "reason"),
    [
        ("operator/alice", "action: reroute", "bad-signature"),  # signed, then its action changed
        ("trainer", None, "disallowed"),  # a workload that may not sign runbooks
    ],
)
def test_ingest_refuses_a_bad_signature_and_stores_nothing(setup, who, mutate, reason) -> None:
    retriever, prov = setup
    text = RUNBOOK.format(id="bad-uplink", action="rate_limit")
    doc = _signed(text, ProvenancePolicy(prov), who)
    if mutate:
        doc["text"] = text.replace("action: rate_limit", mutate)
    before = retriever.stats()["documents"]
    with pytest.raises(RetrievalInputError, match=f"signature refused \\({reason}\\)"):
        retriever.ingest([doc])
    assert retriever.stats()["documents"] == before
