"""An incident the controller tracks and the remediations tried for it, as stored in the knowledge store."""

from __future__ import annotations

import dataclasses
from typing import Any

from x0tta6bl4.telemetry.frame import FEATURE_INDEX


@dataclasses.dataclass
class Attempt:
    """One remediation tried for an incident."""

    attempt: int
    tick: int
    action: str
    node: int
    peer: int | None
    source: str
    due_tick: int
    outcome: str | None = None
    judged_tick: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Incident:
    """Correlated alarms around one root node, and what was done about them."""

    incident_id: int
    opened_tick: int
    root: int
    nodes: set[int]
    description: str
    signature: str
    status: str = "open"  # open, acting, resolved, escalated, cleared, false_alarm
    closed_tick: int | None = None
    confirmed_tick: int | None = None
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    plan: dict[str, Any] | None = None
    quiet_ticks: int = 0
    detected_late_by: int = 0

    @property
    def is_open(self) -> bool:
        return self.closed_tick is None

    @property
    def verifying(self) -> Attempt | None:
        if self.attempts and self.attempts[-1].outcome is None:
            return self.attempts[-1]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id,
            "opened_tick": self.opened_tick,
            "closed_tick": self.closed_tick,
            "confirmed_tick": self.confirmed_tick,
            "status": self.status,
            "root": self.root,
            "nodes": sorted(self.nodes),
            "description": self.description,
            "signature": self.signature,
            "attempts": [a.to_dict() for a in self.attempts],
            "plan": self.plan,
            "detected_late_by": self.detected_late_by,
        }

    def resolved_document(self, run_id: str, tick: int) -> dict[str, Any]:
        """The runbook-corpus document a resolved incident adds: its symptoms and the fix that worked."""
        fix = self.attempts[-1]
        target = f"{fix.node}-{fix.peer}" if fix.peer is not None else str(fix.node)
        return {
            "id": f"incident-{_slug(run_id)}-{self.incident_id}",
            "title": f"Resolved incident {self.incident_id}: {fix.action} on {target}",
            "text": (
                f"Symptoms: {self.description}\n\nResolved by {fix.action} on {target} "
                f"{tick - self.opened_tick} ticks after detection, attempt {fix.attempt + 1}."
            ),
            "action": fix.action,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Incident:
        inc = cls(
            d["incident_id"], d["opened_tick"], d["root"], set(d["nodes"]), d["description"], d["signature"]
        )
        inc.status, inc.closed_tick, inc.confirmed_tick = d["status"], d["closed_tick"], d["confirmed_tick"]
        inc.attempts = [Attempt(**a) for a in d["attempts"]]
        inc.plan, inc.detected_late_by = d["plan"], d.get("detected_late_by", 0)
        return inc


def signature(description: str) -> str:
    """What kind of symptoms a description reports (the key of the learned action statistics)."""
    body = description.split(": ", 1)[-1]
    keys = []
    for part in body.split("; "):
        word = part.split(" ")[0].rstrip(":")
        if word in FEATURE_INDEX or word in ("rx", "traffic", "cpu", "memory", "node", "mem_util", "anomaly"):
            keys.append(word)
        if len(keys) == 3:
            break
    return "+".join(keys) or "unknown"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")[:40] or "run"
