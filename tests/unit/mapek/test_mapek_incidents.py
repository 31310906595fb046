"""Controller incidents survive the knowledge store's dict form and become runbook documents once resolved."""

from __future__ import annotations

from x0tta6bl4.mapek.incidents import Attempt, Incident, signature


def _incident() -> Incident:
    inc = Incident(4, 10, 553, {553, 12}, "n=553: cpu pinned near 1.0; cpu_util 1.00 (baseline 0.20)", "cpu")
    inc.attempts.append(Attempt(0, 13, "reroute", 553, 12, "runbook", 18, "success", 18))
    inc.status, inc.closed_tick, inc.confirmed_tick = "resolved", 18, 12
    return inc


def test_incident_round_trips_through_its_stored_dict() -> None:
    inc = _incident()

    back = Incident.from_dict(inc.to_dict())

    assert back.to_dict() == inc.to_dict()
    assert back.attempts == inc.attempts
    assert not back.is_open and back.verifying is None


def test_resolved_incident_names_its_fix_and_run_in_the_runbook_document() -> None:
    doc = _incident().resolved_document("Bench Run #1", tick=18)

    assert doc["id"] == "incident-bench-run--1-4"
    assert doc["title"] == "Resolved incident 4: reroute on 553-12"
    assert doc["text"].endswith("Resolved by reroute on 553-12 8 ticks after detection, attempt 1.")
    assert doc["action"] == "reroute"


def test_signature_keeps_the_first_three_symptom_words() -> None:
    text = "n=1: cpu pinned; memory rising; rx_bytes_per_s 9; queue_depth_pkts 30; anomaly"
    assert signature(text) == "cpu+memory+rx_bytes_per_s"
    assert signature("n=1: nothing recognisable") == "unknown"
