"""The controller's knowledge: thresholds, incidents, actions and outcomes in SQLite."""

from __future__ import annotations

import io
import json
import sqlite3
import threading
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
    outcome TEXT, judged_tick INTEGER, PRIMARY KEY (run_id, incident_id, attempt));
CREATE TABLE IF NOT EXISTS action_stats (
    signature TEXT NOT NULL, action TEXT NOT NULL, successes INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (signature, action));
"""


class KnowledgeStore:
    """SQLite knowledge base shared by every run that names the same file.

    Learner state and incidents are kept per run (a restarted controller resumes its run);
    action statistics are kept across runs (what worked for which symptoms is the knowledge
    worth keeping). Writes are committed before a method returns.

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
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"knowledge store {self.path} is not usable: {exc}") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

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
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO actions (run_id, incident_id, attempt, tick, action, node, peer,"
                " source, outcome, judged_tick) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    incident_id,
                    attempt["attempt"],
                    attempt["tick"],
                    attempt["action"],
                    attempt["node"],
                    attempt["peer"],
                    attempt["source"],
                    attempt["outcome"],
                    attempt["judged_tick"],
                ),
            )

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
