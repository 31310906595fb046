"""The controller's knowledge: thresholds, incidents, actions and outcomes in SQLite.

Writes that belong together are one transaction (an attempt and its incident; a verdict, its
action statistics and its incident), and every commit is synced to disk (``synchronous=FULL``),
so a crash leaves either all of them or none. An attempt is recorded ``pending`` when planned and
becomes ``sent`` only once the mesh acknowledged it (:meth:`KnowledgeStore.mark_sent`): a
controller restarted in between finds it in :meth:`KnowledgeStore.pending_attempts` and can
send it again or discard it, instead of waiting for the outcome of an action never applied.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from x0tta6bl4.errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS learner (run_id TEXT PRIMARY KEY, tick INTEGER NOT NULL, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (
    run_id TEXT NOT NULL, incident_id INTEGER NOT NULL, opened_tick INTEGER NOT NULL,
    closed_tick INTEGER, status TEXT NOT NULL, root INTEGER NOT NULL, signature TEXT NOT NULL,
    description TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (run_id, incident_id));
CREATE TABLE IF NOT EXISTS actions (
    run_id TEXT NOT NULL, incident_id INTEGER NOT NULL, attempt INTEGER NOT NULL, tick INTEGER NOT NULL,
    action TEXT NOT NULL, node INTEGER NOT NULL, peer INTEGER, source TEXT NOT NULL,
    outcome TEXT, judged_tick INTEGER, state TEXT NOT NULL DEFAULT 'sent', sent_tick INTEGER,
    PRIMARY KEY (run_id, incident_id, attempt));
CREATE TABLE IF NOT EXISTS action_stats (
    signature TEXT NOT NULL, action TEXT NOT NULL, successes INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (signature, action));
"""

#: An attempt planned and recorded, not yet acknowledged by the mesh.
PENDING = "pending"
#: An attempt the mesh acknowledged (applied or queued for its tick).
SENT = "sent"

_ACTION_COLUMNS = ("attempt", "tick", "action", "node", "peer", "source", "outcome", "judged_tick")


class KnowledgeStore:
    """SQLite knowledge base shared by every run that names the same file.

    Learner state and incidents are kept per run (a restarted controller resumes its run);
    action statistics are kept across runs (what worked for which symptoms is the knowledge
    worth keeping). Writes are committed and synced before a method returns, unless they are
    inside :meth:`transaction`, which commits them together.

    Args:
        path: the SQLite file (created with its directory); ``":memory:"`` for a throwaway store.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"knowledge store {self.path}: cannot create its directory ({exc})"
                ) from None
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # WAL + NORMAL may lose the last commits
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(actions)")}
            if "state" not in columns:  # a store written before attempts had a sent state
                self._db.execute("ALTER TABLE actions ADD COLUMN state TEXT NOT NULL DEFAULT 'sent'")
                self._db.execute("ALTER TABLE actions ADD COLUMN sent_tick INTEGER")
        except sqlite3.Error as exc:
            raise ConfigError(f"knowledge store {self.path} is not usable: {exc}") from None
        self._lock = threading.RLock()
        self._depth = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: every store write inside the block is committed together, or none is.

        Nested blocks join the outermost one. Other threads wait until the block ends. An
        exception rolls the whole group back and propagates.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self._db.execute("ROLLBACK")
                raise
            self._depth = 0
            self._db.execute("COMMIT")

    # -------------------------------------------------------------- learner
    def save_learner(self, run_id: str, tick: int, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        arrays: dict[str, Any] = {k: np.asarray(v) for k, v in state.items() if not isinstance(v, str)}
        texts = json.dumps({k: v for k, v in state.items() if isinstance(v, str)}).encode()
        arrays["__json__"] = np.frombuffer(texts, dtype=np.uint8)
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO learner (run_id, tick, state) VALUES (?, ?, ?)",
                (run_id, tick, buf.getvalue()),
            )

    def load_learner(self, run_id: str) -> tuple[int, dict[str, Any]] | None:
        with self._lock:
            row = self._db.execute("SELECT tick, state FROM learner WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        with np.load(io.BytesIO(row[1]), allow_pickle=False) as npz:
            state: dict[str, Any] = {k: npz[k] for k in npz.files if k != "__json__"}
            state.update(json.loads(bytes(npz["__json__"]).decode()))
        return int(row[0]), state

    # ------------------------------------------------------------ incidents
    def save_incident(self, run_id: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO incidents (run_id, incident_id, opened_tick, closed_tick,"
                " status, root, signature, description, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    record["incident_id"],
                    record["opened_tick"],
                    record["closed_tick"],
                    record["status"],
                    record["root"],
                    record["signature"],
                    record["description"],
                    json.dumps(record),
                ),
            )

    def incidents(self, run_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM incidents WHERE run_id = ? ORDER BY incident_id", (run_id,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    # --------------------------------------------------------------- actions
    def save_action(self, run_id: str, incident_id: int, attempt: dict[str, Any]) -> None:
        """Insert or update an attempt's row; a new row counts as sent, an existing one keeps its state.

        Prefer :meth:`record_attempt` (pending until :meth:`mark_sent`) for a newly planned attempt.
        """
        with self._lock:
            self._upsert_action(run_id, incident_id, attempt, None)

    def _upsert_action(
        self, run_id: str, incident_id: int, attempt: dict[str, Any], state: str | None
    ) -> None:
        values = [attempt[c] for c in _ACTION_COLUMNS]
        updates = ", ".join(f"{c} = excluded.{c}" for c in _ACTION_COLUMNS[1:])
        if state is None:
            self._db.execute(
                f"INSERT INTO actions (run_id, incident_id, {', '.join(_ACTION_COLUMNS)}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                f"ON CONFLICT (run_id, incident_id, attempt) DO UPDATE SET {updates}",
                (run_id, incident_id, *values),
            )
        else:
            self._db.execute(
                f"INSERT INTO actions (run_id, incident_id, {', '.join(_ACTION_COLUMNS)}, state, sent_tick) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) "
                f"ON CONFLICT (run_id, incident_id, attempt) DO UPDATE SET {updates}, "
                "state = excluded.state, sent_tick = NULL",
                (run_id, incident_id, *values, state),
            )

    def record_attempt(self, run_id: str, incident: dict[str, Any], attempt: dict[str, Any]) -> None:
        """Record a newly planned attempt as ``pending`` together with its incident (one transaction).

        Call before the action goes to the mesh; call :meth:`mark_sent` once the mesh acknowledged it.

        Args:
            run_id: the run.
            incident: the incident's record (``Incident.to_dict()``), with the attempt in it.
            attempt: the attempt's record (``Attempt.to_dict()``).
        """
        with self.transaction():
            self._upsert_action(run_id, incident["incident_id"], attempt, PENDING)
            self.save_incident(run_id, incident)

    def mark_sent(self, run_id: str, incident_id: int, attempt: int, tick: int) -> bool:
        """Record that the mesh acknowledged an attempt (at ``tick``); idempotent.

        Returns:
            False if the store has no such attempt (nothing changed), else True.
        """
        with self._lock:
            cur = self._db.execute(
                "UPDATE actions SET state = ?, sent_tick = COALESCE(sent_tick, ?) "
                "WHERE run_id = ? AND incident_id = ? AND attempt = ?",
                (SENT, tick, run_id, incident_id, attempt),
            )
            return cur.rowcount > 0

    def pending_attempts(self, run_id: str) -> list[dict[str, Any]]:
        """Attempts of ``run_id`` recorded but never acknowledged by the mesh, oldest first.

        Each is an attempt record with its ``incident_id``: after a restart, send it again
        (then :meth:`mark_sent`) or drop it with :meth:`discard_attempt`.
        """
        with self._lock:
            rows = self._db.execute(
                f"SELECT incident_id, {', '.join(_ACTION_COLUMNS)} FROM actions "
                "WHERE run_id = ? AND state = ? ORDER BY tick, incident_id, attempt",
                (run_id, PENDING),
            ).fetchall()
        return [dict(zip(("incident_id", *_ACTION_COLUMNS), row, strict=True)) for row in rows]

    def attempt_state(self, run_id: str, incident_id: int, attempt: int) -> str | None:
        """``pending``, ``sent``, or None when the store has no such attempt."""
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM actions WHERE run_id = ? AND incident_id = ? AND attempt = ?",
                (run_id, incident_id, attempt),
            ).fetchone()
        return None if row is None else str(row[0])

    def discard_attempt(self, run_id: str, incident: dict[str, Any], attempt: int) -> None:
        """Forget a pending attempt and save its incident (without it) in one transaction.

        Raises:
            ConfigError: the attempt was already acknowledged as sent (it happened; judge it instead).
        """
        incident_id = incident["incident_id"]
        with self.transaction():
            if self.attempt_state(run_id, incident_id, attempt) == SENT:
                raise ConfigError(
                    f"attempt {attempt} of incident {incident_id} was sent to the mesh: "
                    "it cannot be discarded, judge it instead"
                )
            self._db.execute(
                "DELETE FROM actions WHERE run_id = ? AND incident_id = ? AND attempt = ?",
                (run_id, incident_id, attempt),
            )
            self.save_incident(run_id, incident)

    def record_judgement(
        self,
        run_id: str,
        incident: dict[str, Any],
        attempt: dict[str, Any],
        success: bool,
        learn: bool = True,
    ) -> None:
        """Record an attempt's verdict, its action statistics (when ``learn``) and its incident together.

        Args:
            run_id: the run.
            incident: the incident's record after the verdict (its ``signature`` keys the statistics).
            attempt: the attempt's record with ``outcome`` and ``judged_tick`` set.
            success: whether the action worked.
            learn: also count the verdict in the cross-run action statistics.
        """
        with self.transaction():
            self._upsert_action(run_id, incident["incident_id"], attempt, None)
            if learn:
                self.record_outcome(incident["signature"], attempt["action"], success)
            self.save_incident(run_id, incident)

    def record_outcome(self, signature: str, action: str, success: bool) -> None:
        column = "successes" if success else "failures"
        with self._lock:
            self._db.execute(
                f"INSERT INTO action_stats (signature, action, {column}) VALUES (?, ?, 1) "
                f"ON CONFLICT (signature, action) DO UPDATE SET {column} = {column} + 1",
                (signature, action),
            )

    def action_stats(self) -> dict[str, dict[str, tuple[int, int]]]:
        """``{signature: {action: (successes, failures)}}``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT signature, action, successes, failures FROM action_stats"
            ).fetchall()
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for signature, action, ok, bad in rows:
            out.setdefault(signature, {})[action] = (int(ok), int(bad))
        return out

    def set_meta(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
            )

    def meta(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])
