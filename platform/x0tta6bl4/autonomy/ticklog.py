"""What a run's driver must keep to be resumed: its config and one record per tick, in the run directory.

``config.json`` is written once, atomically, before the first tick. ``ticks.jsonl`` gets one
line per tick: the tick's timeline entry, the nodes the controller alarmed on and the actions it
decided for the next tick. Lines are flushed every tick and fsynced at every checkpoint tick (a
resume only needs them up to the shards' common checkpoint); a torn last line is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from x0tta6bl4.durable import fsync_file, write_atomic
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mesh.faults import Action

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
TICKS_NAME = "ticks.jsonl"


def save_run_config(run_dir: Path, config_json: str) -> Path:
    """Write the run's config (RunConfig as JSON) beside its report, atomically."""
    path = run_dir / CONFIG_NAME
    write_atomic(path, config_json.encode())
    return path


def load_run_config(run_dir: Path) -> dict[str, Any]:
    """The config a run was started with.

    Raises:
        ConfigError: the run directory or its config is missing or unreadable.
    """
    path = run_dir / CONFIG_NAME
    try:
        loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no run to resume at {run_dir} (its {CONFIG_NAME} is missing)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable: {exc}") from None
    return loaded


def read_ticks(path: Path) -> dict[int, dict[str, Any]]:
    """Tick -> record; unreadable lines (a torn last one) are skipped, the last record of a tick wins."""
    if not path.exists():
        return {}
    out: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            out[int(record["tick"])] = record
        except (ValueError, KeyError, TypeError):
            log.warning("%s: an unreadable line skipped", path)
    return out


class TickLog:
    """Appends tick records; keeps earlier records up to ``keep_until`` (a resume) and drops the rest.

    Args:
        path: the ``ticks.jsonl`` file.
        keep: records to write first (those of ticks a resumed run does not re-run), or None
            to start empty.
    """

    def __init__(self, path: Path, keep: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        lines = "".join(json.dumps(r) + "\n" for r in keep or [])
        write_atomic(path, lines.encode())
        self._fh = path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any], sync: bool = False) -> None:
        """Add one tick's record; ``sync`` fsyncs the file (at checkpoint ticks)."""
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if sync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
            fsync_file(self.path)


@dataclasses.dataclass
class Replay:
    """What a resumed run takes from the interrupted one: tick records and journaled actions.

    Ticks up to ``resumed_from`` (the shards' common checkpoint) are kept as recorded; ticks after
    it up to ``last_tick`` (as far as the interrupted driver got) are re-run with the journaled
    actions, the controller's share of them taken from their records.
    """

    resumed_from: int | None
    records: dict[int, dict[str, Any]]
    journal: dict[int, tuple[Action, ...]]
    last_tick: int

    @classmethod
    def none(cls) -> Replay:
        """Nothing to replay (a new run)."""
        return cls(None, {}, {}, -1)

    @classmethod
    def load(
        cls, ticks_path: Path, resumed_from: int, journal: dict[int, tuple[Action, ...]], run_id: str
    ) -> Replay:
        """The interrupted run's records, for shards rewound to ``resumed_from``.

        Raises:
            ConfigError: the records stop before the checkpoint (nothing consistent to resume).
        """
        records = read_ticks(ticks_path)
        missing = [t for t in range(resumed_from + 1) if t not in records]
        if missing:
            raise ConfigError(
                f"run {run_id}'s tick records stop before tick {missing[0]} (its checkpoints are at "
                f"tick {resumed_from}): nothing consistent to resume from"
            )
        later = [t for t in (*records, *journal) if t > resumed_from]
        last = max(later, default=resumed_from)
        log.warning("resuming run %s from tick %d (replaying up to tick %d)", run_id, resumed_from, last)
        return cls(resumed_from, records, journal, last)

    @property
    def replayed_ticks(self) -> int:
        return 0 if self.resumed_from is None else self.last_tick - self.resumed_from

    def kept_records(self) -> list[dict[str, Any]]:
        """Records of the ticks that are not re-run."""
        if self.resumed_from is None:
            return []
        return [self.records[t] for t in range(self.resumed_from + 1)]

    def timeline(self) -> list[dict[str, Any]]:
        return [dict(r["timeline"]) for r in self.kept_records()]

    def record(self, tick: int) -> dict[str, Any] | None:
        """The interrupted run's record of ``tick`` when it is re-run (the driver had got that far)."""
        if self.resumed_from is None or tick > self.last_tick:
            return None
        return self.records.get(tick, {"tick": tick, "timeline": {}})

    def actions(self, tick: int) -> tuple[Action, ...]:
        """The actions the interrupted run applied at ``tick``."""
        return self.journal.get(tick, ())

    def decided_after(self) -> tuple[Action, ...]:
        """What the controller decided at the last recorded tick, for the first tick after the replay."""
        record = self.records.get(self.last_tick, {}) if self.resumed_from is not None else {}
        return tuple(Action(**a) for a in record.get("decided", []))

    def rebuild_alarms(self, note_alarms: Callable[[list[int], list[int]], None]) -> None:
        """Feed the evaluation's alarm ledger the ticks that are not re-run."""
        for record in self.kept_records():
            note_alarms(
                [int(n) for n in record.get("alarmed", [])], [int(n) for n in record.get("at_fault", [])]
            )
