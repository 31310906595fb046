"""Runbook signatures: the claim an operator signs, and the store's record of verified signatures.

A signed runbook is the operator's hybrid signature (see :mod:`x0tta6bl4.security.signing`)
over the runbook's *claim*: its id, title, fault type, action and the SHA-256 of its content
(:attr:`~x0tta6bl4.rag.store.Document.digest`). The retriever checks the claim against the
document it stores and the signature against the provenance policy before it records it in
``signatures.jsonl``; the controller verifies claim and signature again before it executes an
action a runbook recommends, so neither a tampered store nor a retriever it cannot vouch for
can make it act.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from x0tta6bl4.durable import append_synced
from x0tta6bl4.rag.store import Document

SIGNATURES = "signatures.jsonl"


def document_claim(doc: Document) -> bytes:
    """The bytes a runbook's signer signs (canonical JSON; the body enters through its digest)."""
    claim = {
        "id": doc.id,
        "title": doc.title,
        "fault_type": doc.fault_type,
        "action": doc.action,
        "digest": doc.digest,
    }
    return json.dumps(claim, sort_keys=True, separators=(",", ":")).encode()


def parse_claim(raw: str | bytes) -> dict[str, Any]:
    """A claim's fields; raises ValueError when it is not a claim."""
    claim = json.loads(raw)
    if not isinstance(claim, dict) or not {"id", "action", "digest"} <= claim.keys():
        raise ValueError("not a runbook claim")
    return claim


class SignatureRecords:
    """``signatures.jsonl`` of a retriever's store: the last verified signature per document id.

    Args:
        root: the store directory.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / SIGNATURES
        self._records: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int, int] | None = None

    def load(self) -> None:
        """Re-read the file when it changed (a torn last line is skipped: its ingest never answered)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._records, self._stamp = {}, None
            return
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        if stamp == self._stamp:
            return
        records: dict[str, dict[str, Any]] = {}
        with self.path.open("rb") as fh:
            for raw in fh:
                try:
                    rec = json.loads(raw)
                    records[str(rec["id"])] = {"claim": str(rec["claim"]), "signature": rec["signature"]}
                except (ValueError, KeyError, TypeError):
                    continue
        self._records, self._stamp = records, stamp

    def add(self, entries: Iterable[tuple[str, bytes, Mapping[str, Any]]]) -> None:
        """Append (id, claim, signature record) entries durably."""
        lines = [
            json.dumps({"id": doc_id, "claim": claim.decode(), "signature": dict(sig)}, sort_keys=True)
            for doc_id, claim, sig in entries
        ]
        if lines:
            append_synced(self.path, lines)
            self._stamp = None
            self.load()

    def get(self, doc_id: str) -> dict[str, Any] | None:
        return self._records.get(doc_id)

    def matching(self, doc: Document) -> dict[str, Any] | None:
        """The record of ``doc`` when its claim is the document's current one."""
        rec = self._records.get(doc.id)
        return rec if rec is not None and rec["claim"].encode() == document_claim(doc) else None
