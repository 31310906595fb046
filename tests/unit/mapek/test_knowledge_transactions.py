"""KnowledgeStore: writes that belong together commit together; attempts are sent only once acknowledged."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mapek.knowledge import PENDING, SENT, KnowledgeStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "knowledge.sqlite"


@pytest.fixture
def store(db_path: Path) -> Iterator[KnowledgeStore]:
    opened = KnowledgeStore(db_path)
    yield opened
    opened.close()


def _attempt(n: int = 0, outcome: str | None = None) -> dict[str, Any]:
    return {
        "attempt": n,
        "tick": 12 + n,
        "action": "restart_node",
        "node": 3,
        "peer": None,
        "source": "runbook",
        "due_tick": 20 + n,
        "outcome": outcome,
        "judged_tick": None if outcome is None else 20 + n,
    }


def _incident(status: str = "acting", attempts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "incident_id": 7,
        "opened_tick": 10,
        "closed_tick": None,
        "status": status,
        "root": 3,
        "signature": "cpu_util",
        "description": "n=3: cpu_util high",
        "attempts": attempts if attempts is not None else [_attempt()],
    }


def _run_killed(db_path: Path, body: str) -> None:
    """Run ``body`` against a store in a subprocess that SIGKILLs itself where the body says ``die()``."""
    script = (
        "import os, signal, sys\n"
        "from x0tta6bl4.mapek.knowledge import KnowledgeStore\n"
        "def die(): os.kill(os.getpid(), signal.SIGKILL)\n"
        "store = KnowledgeStore(sys.argv[1])\n"
        "attempt = {'attempt': 0, 'tick': 12, 'action': 'restart_node', 'node': 3, 'peer': None,"
        " 'source': 'runbook', 'due_tick': 20, 'outcome': None, 'judged_tick': None}\n"
        "incident = {'incident_id': 7, 'opened_tick': 10, 'closed_tick': None, 'status': 'acting',"
        " 'root': 3, 'signature': 'cpu_util', 'description': 'd', 'attempts': [attempt]}\n" + body
    )
    proc = subprocess.run([sys.executable, "-c", script, str(db_path)], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def test_an_attempt_is_pending_until_the_mesh_acknowledges_it(store: KnowledgeStore) -> None:
    store.record_attempt("run-a", _incident(), _attempt())

    assert store.attempt_state("run-a", 7, 0) == PENDING
    assert [(p["incident_id"], p["attempt"], p["action"]) for p in store.pending_attempts("run-a")] == [
        (7, 0, "restart_node")
    ]
    assert store.incidents("run-a")[0]["attempts"][0]["attempt"] == 0  # saved with the attempt

    assert store.mark_sent("run-a", 7, 0, tick=13)
    assert store.mark_sent("run-a", 7, 0, tick=14)  # idempotent: the first acknowledgement's tick stays
    assert store.attempt_state("run-a", 7, 0) == SENT
    assert store.pending_attempts("run-a") == []
    assert store._db.execute("SELECT sent_tick FROM actions").fetchall() == [(13,)]
    assert not store.mark_sent("run-a", 7, 1, tick=13)  # unknown attempt: nothing changes
    store.save_action("run-a", 7, _attempt(outcome="success"))  # a later update keeps the sent state
    assert store.attempt_state("run-a", 7, 0) == SENT


def test_a_controller_killed_before_the_ack_finds_the_attempt_pending_and_can_discard_it(
    db_path: Path,
) -> None:
    _run_killed(db_path, "store.record_attempt('run-a', incident, attempt)\ndie()\n")

    store = KnowledgeStore(db_path)
    try:
        assert [p["attempt"] for p in store.pending_attempts("run-a")] == [0]
        store.discard_attempt("run-a", _incident(status="open", attempts=[]), 0)
        assert store.pending_attempts("run-a") == [] and store.attempt_state("run-a", 7, 0) is None
        assert store.incidents("run-a")[0]["attempts"] == []
    finally:
        store.close()


def test_a_sent_attempt_cannot_be_discarded(store: KnowledgeStore) -> None:
    store.record_attempt("run-a", _incident(), _attempt())
    store.mark_sent("run-a", 7, 0, tick=13)
    with pytest.raises(ConfigError, match="was sent to the mesh"):
        store.discard_attempt("run-a", _incident(attempts=[]), 0)
    assert store.attempt_state("run-a", 7, 0) == SENT
    assert store.incidents("run-a")[0]["attempts"] != []  # the transaction rolled back


def test_a_crash_inside_a_transaction_leaves_none_of_its_writes(db_path: Path) -> None:
    _run_killed(
        db_path,
        "store.record_outcome('cpu_util', 'restart_node', True)\n"
        "with store.transaction():\n"
        "    store.save_action('run-a', 7, {**attempt, 'outcome': 'failed', 'judged_tick': 20})\n"
        "    store.record_outcome('cpu_util', 'restart_node', False)\n"
        "    die()\n",
    )
    store = KnowledgeStore(db_path)
    try:
        assert store.action_stats() == {"cpu_util": {"restart_node": (1, 0)}}  # committed before
        assert store._db.execute("SELECT COUNT(*) FROM actions").fetchone() == (0,)
    finally:
        store.close()


def test_a_verdict_its_statistics_and_its_incident_commit_together_or_not_at_all(
    store: KnowledgeStore,
) -> None:
    store.record_attempt("run-a", _incident(), _attempt())
    store.mark_sent("run-a", 7, 0, tick=13)
    judged = _attempt(outcome="success")

    broken = {k: v for k, v in _incident(status="resolved", attempts=[judged]).items() if k != "root"}
    with pytest.raises(KeyError):
        store.record_judgement("run-a", broken, judged, success=True)
    assert store.action_stats() == {}
    assert store._db.execute("SELECT outcome FROM actions").fetchall() == [(None,)]
    assert store.incidents("run-a")[0]["status"] == "acting"

    store.record_judgement("run-a", _incident(status="resolved", attempts=[judged]), judged, success=True)
    assert store.action_stats() == {"cpu_util": {"restart_node": (1, 0)}}
    assert store._db.execute("SELECT outcome, judged_tick, state FROM actions").fetchall() == [
        ("success", 20, SENT)
    ]
    assert store.incidents("run-a")[0]["status"] == "resolved"
    store.record_judgement("run-a", _incident(status="resolved"), judged, success=False, learn=False)
    assert store.action_stats() == {"cpu_util": {"restart_node": (1, 0)}}


def _fail_mid_step(store: KnowledgeStore) -> None:
    with store.transaction():
        store.record_attempt("run-a", _incident(), _attempt())  # its own transaction joins this one
        raise RuntimeError("controller failed mid-step")


def test_transactions_nest_into_the_outermost_one(store: KnowledgeStore) -> None:
    with pytest.raises(RuntimeError):
        _fail_mid_step(store)
    assert store.pending_attempts("run-a") == [] and store.incidents("run-a") == []


def test_a_store_from_before_attempt_states_is_upgraded_and_its_actions_count_as_sent(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    db.executescript(
        "CREATE TABLE actions (run_id TEXT NOT NULL, incident_id INTEGER NOT NULL, attempt INTEGER NOT NULL,"
        " tick INTEGER NOT NULL, action TEXT NOT NULL, node INTEGER NOT NULL, peer INTEGER,"
        " source TEXT NOT NULL, outcome TEXT, judged_tick INTEGER,"
        " PRIMARY KEY (run_id, incident_id, attempt));"
        "INSERT INTO actions VALUES ('run-a', 1, 0, 5, 'reroute', 2, 4, 'runbook', NULL, NULL);"
    )
    db.commit()
    db.close()

    store = KnowledgeStore(db_path)
    try:
        assert store.attempt_state("run-a", 1, 0) == SENT
        store.record_attempt("run-a", _incident(), _attempt())
        assert [p["incident_id"] for p in store.pending_attempts("run-a")] == [7]
    finally:
        store.close()
