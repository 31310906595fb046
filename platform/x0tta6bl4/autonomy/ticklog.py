"""What a run's driver must keep to be resumed: its config and one record per tick, in the run directory.

``config.json`` is written once, atomically, before the first tick. ``ticks.jsonl`` gets one
line per tick: the tick's timeline entry, the nodes the controller alarmed on and the actions it
decided for the next tick. Lines are flushed every tick and fsynced at every checkpoint tick (a
resume only needs them up to the shards' common checkpoint); a torn last line is skipped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from x0tta6bl4.durable import fsync_file, write_atomic
from x0tta6bl4.errors import ConfigError

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
