"""The action journal: every tick's applied actions, appended and fsynced by the one driver that owns it.

A resumed run replays the ticks since the shards' common checkpoint with exactly the actions
the interrupted run applied. One owner (the mesh driver) writes it, before the tick's step is
sent; a torn last line (a crash mid-append) is cut off when the journal is opened and skipped
when it is read; a tick written twice (a replay) counts once.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from x0tta6bl4.durable import append_synced, fsync_file
from x0tta6bl4.mesh.faults import Action

log = logging.getLogger(__name__)

#: File name of the journal inside a run's checkpoint directory.
JOURNAL_NAME = "actions.jsonl"


def read_journal(path: str | os.PathLike[str]) -> dict[int, tuple[Action, ...]]:
    """Tick -> actions applied at it; unreadable lines are skipped and logged; a tick's last write wins."""
    target = Path(path)
    if not target.exists():
        return {}
    out: dict[int, tuple[Action, ...]] = {}
    for number, line in enumerate(target.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry: dict[str, Any] = json.loads(line)
            out[int(entry["tick"])] = tuple(Action(**a) for a in entry["actions"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s line %d skipped: %s", target, number, exc)
    return out


class ActionJournal:
    """Appends ``{"tick": t, "actions": [...]}`` lines; remembers what is already there.

    Args:
        path: the journal file (created with its directory).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self.entries = read_journal(self.path)

    def _repair(self) -> None:
        """Cut a torn last line off, so the next append starts on a line of its own."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as fh:
                fh.truncate(keep)
            fsync_file(self.path)
            log.warning("%s: a torn last line (%d bytes) was cut off", self.path, len(data) - keep)

    def append(self, tick: int, actions: tuple[Action, ...]) -> None:
        """Record the actions applied at ``tick`` (nothing when there are none or they are recorded)."""
        if not actions or self.entries.get(tick) == actions:
            return
        append_synced(self.path, [json.dumps({"tick": tick, "actions": [a.to_dict() for a in actions]})])
        self.entries[tick] = actions
