"""The controller's provenance duties: act only on signed runbooks, sign its own, record its decisions."""

from __future__ import annotations

import logging
from typing import Any

from x0tta6bl4.mapek.config import ControllerConfig
from x0tta6bl4.mapek.incidents import Attempt
from x0tta6bl4.mapek.interfaces import Runbooks
from x0tta6bl4.rag.provenance import document_claim, parse_claim
from x0tta6bl4.rag.store import parse_document
from x0tta6bl4.security.identity import WorkloadKind
from x0tta6bl4.security.ledger import AuditRecorder
from x0tta6bl4.security.provenance import RUNBOOK_CONTEXT, ProvenancePolicy
from x0tta6bl4.security.signing import SignatureError

log = logging.getLogger(__name__)


class ControllerAudit:
    """Checks runbook signatures before the controller acts, and writes its entries in the audit ledger.

    Args:
        config: the controller's configuration (``provenance`` and ``audit``).
        run_id: the run every ledger entry names.
        counters: the controller's counters (skipped and refused runbooks, ledger entries and errors).
        errors: the controller's error list (refusals and ledger failures are appended).
    """

    def __init__(
        self, config: ControllerConfig, run_id: str, counters: dict[str, int], errors: list[str]
    ) -> None:
        self.enabled = config.audit
        self.run_id = run_id
        self.policy = ProvenancePolicy(config.provenance)
        self.counters = counters
        for name in (
            "unsigned_runbook_actions_skipped",
            "runbook_signatures_refused",
            "ledger_entries",
            "ledger_errors",
        ):
            counters.setdefault(name, 0)
        self.errors = errors
        self._recorder: AuditRecorder | None = None
        self._verified: dict[str, dict[str, Any]] = {}

    @property
    def recorder(self) -> AuditRecorder:
        """The controller's pen on the ledger (its signing identity is made on first use)."""
        if self._recorder is None:
            self._recorder = self.policy.recorder(WorkloadKind.CONTROLLER)
        return self._recorder

    def signed_actions(
        self, incident_id: int, answer: dict[str, Any], runbooks: Runbooks, errors: list[str]
    ) -> list[str | None]:
        """The answer's actions whose runbook's signature verifies here, in the answer's order.

        The controller checks each runbook's claim and signature itself (the retriever checked them
        at ingest too): an action from an unsigned, tampered or disallowed runbook is never executed.
        """
        passages = [p for p in answer.get("passages", []) if p.get("action") and p.get("runbook_id")]
        claims = self._claims(runbooks, [str(p["runbook_id"]) for p in passages], errors)
        signed = [
            p["action"] for p in passages if claims.get(p["runbook_id"], {}).get("action") == p["action"]
        ]
        skipped = len(passages) - len(signed)
        if skipped:
            self.counters["unsigned_runbook_actions_skipped"] += skipped
            log.info("incident %s: %d runbook actions skipped (unsigned)", incident_id, skipped)
        chosen = answer.get("action")
        return ([chosen] if chosen in signed else []) + list(signed)

    def _claims(self, runbooks: Runbooks, doc_ids: list[str], errors: list[str]) -> dict[str, dict[str, Any]]:
        """Verified claims by runbook id (cached: a stored document never changes under its id)."""
        missing = [d for d in dict.fromkeys(doc_ids) if d not in self._verified]
        if missing:
            records = runbooks.signatures(missing)
            for doc_id in missing:
                rec = records.get(doc_id)
                if rec is None:
                    continue
                try:
                    claim_raw = str(rec["claim"]).encode()
                    self.policy.check_runbook(rec.get("signature"), claim_raw)
                    claim = parse_claim(claim_raw)
                except (SignatureError, ValueError, KeyError, TypeError) as exc:
                    self.counters["runbook_signatures_refused"] += 1
                    msg = f"runbook {doc_id}: signature refused ({exc})"[:300]
                    log.warning(msg)
                    errors.append(msg)
                    continue
                if claim.get("id") == doc_id:
                    self._verified[doc_id] = claim
        return {d: self._verified[d] for d in doc_ids if d in self._verified}

    def signed_document(self, doc: dict[str, Any]) -> dict[str, Any]:
        """``doc`` with the controller's signature over its claim (so its action stays executable)."""
        claim = document_claim(parse_document(doc, 0, 1 << 20, 120, 0))
        return {**doc, "signature": self.recorder.signer.sign(claim, RUNBOOK_CONTEXT).to_dict()}

    def action_sent(self, incident_id: int, attempt: Attempt, tick: int) -> None:
        """Record an action the controller is sending (its verdict follows in :meth:`action_judged`)."""
        data = {"phase": "sent", "action": attempt.action, "node": attempt.node, "peer": attempt.peer}
        self.record(
            "remediation.action", f"incident {incident_id}", {**data, "source": attempt.source, "tick": tick}
        )

    def action_judged(self, incident_id: int, attempt: Attempt, tick: int) -> None:
        """Record the verdict on an action."""
        data = {"phase": "judged", "action": attempt.action, "node": attempt.node, "verdict": attempt.outcome}
        self.record("remediation.action", f"incident {incident_id}", {**data, "tick": tick})

    def record(self, kind: str, subject: str, data: dict[str, Any]) -> None:
        """Append to the audit ledger; a ledger that cannot be written is counted, never fatal to healing."""
        if not self.enabled:
            return
        try:
            self.recorder.record(kind, subject, {"run_id": self.run_id, **data})
            self.counters["ledger_entries"] += 1
        except Exception as exc:  # OSError, CA errors: the loop keeps healing, the gap is counted
            self.counters["ledger_errors"] += 1
            msg = f"audit ledger: {kind} not recorded ({exc})"[:300]
            log.warning(msg)
            self.errors.append(msg)
