"""What a federation produced: round records and final weights, and their files for another process."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from x0tta6bl4.durable import write_atomic
from x0tta6bl4.errors import X0tta6bl4Error

Arrays = dict[str, npt.NDArray[Any]]


class TooFewRepliesError(X0tta6bl4Error):
    """A round got fewer successful client replies than ``min_clients``: the run stops."""


@dataclasses.dataclass
class RoundRecord:
    """What one federated round did, cost and reached.

    Times are wall-clock seconds measured by the server; ``local_train_s`` is the
    slowest successful client's training loop (the round waits for it) and
    ``overhead_s`` the rest of the training half of the round (transport,
    serialisation, scheduling, data loading, aggregation, and queueing when there are
    more regions than client actors). Bytes are serialised ArrayRecords (``np.save``
    payloads plus names) that travel: ``bytes_down`` server to clients, ``bytes_up``
    clients to server, ``bytes_eval`` the arrays sent for evaluation. ``replied`` counts
    the updates aggregated; ``rejected`` the valid replies whose update was refused
    (:func:`~x0tta6bl4.federated.screening.screen_updates`, reasons in
    ``rejections``); ``failed`` errors and timeouts. ``norm_ratio_max`` is the largest
    accepted update's norm over the median of the others' (how close honest clients came
    to the rejection factor).
    """

    round: int
    phase: str
    phase_round: int
    sampled: int = 0
    replied: int = 0
    failed: int = 0
    rejected: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    rejections: list[str] = dataclasses.field(default_factory=list)
    regions: list[int] = dataclasses.field(default_factory=list)
    train_wall_s: float = 0.0
    local_train_s: float = 0.0
    load_s: float = 0.0
    overhead_s: float = 0.0
    eval_s: float = 0.0
    round_s: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    bytes_eval: int = 0
    norm_ratio_max: float | None = None
    loss: float | None = None
    auprc: float | None = None
    auroc: float | None = None
    best_f1: float | None = None

    @property
    def bytes_train(self) -> int:
        """Bytes of the training exchange (both directions)."""
        return self.bytes_down + self.bytes_up

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["bytes_train"] = self.bytes_train
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        """The record :meth:`to_dict` wrote (derived keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass
class FederationOutcome:
    """What the ServerApp hands back to the driver (filled while it runs)."""

    rounds: list[RoundRecord] = dataclasses.field(default_factory=list)
    base: Arrays | None = None
    adapters: Arrays | None = None
    personal: dict[int, Arrays] = dataclasses.field(default_factory=dict)
    full_bytes: int = 0
    adapter_bytes: int = 0


RoundCallback = Callable[[RoundRecord], None]


#: Files a ServerApp with an ``outcome-dir`` writes: one line per finished round, the final
#: arrays, and (last, atomically) the summary whose presence says the run ended.
ROUNDS_FILE = "rounds.jsonl"
ARRAYS_FILE = "outcome.npz"
SUMMARY_FILE = "outcome.json"


class FederationFailedError(X0tta6bl4Error):
    """The ServerApp of another process failed (its error, as it recorded it)."""


def round_writer(out_dir: str) -> RoundCallback:
    """A round callback that appends each finished round to ``out_dir``'s :data:`ROUNDS_FILE`."""
    path = Path(out_dir) / ROUNDS_FILE

    def write(rec: RoundRecord) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec.to_dict()) + "\n")

    return write


def write_outcome(
    out_dir: str | Path, outcome: FederationOutcome, error: BaseException | None = None
) -> None:
    """Write ``outcome`` (and the error that ended the run, if any) to ``out_dir``.

    Arrays go to :data:`ARRAYS_FILE` (``base/<name>``, ``adapters/<name>``,
    ``personal/<region>/<name>``), then :data:`SUMMARY_FILE` atomically: a reader that
    finds the summary finds the arrays complete.
    """
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {}
    for prefix, group in (("base", outcome.base), ("adapters", outcome.adapters)):
        arrays.update({f"{prefix}/{k}": v for k, v in (group or {}).items()})
    for region, own in outcome.personal.items():
        arrays.update({f"personal/{region}/{k}": v for k, v in own.items()})
    tmp = d / (ARRAYS_FILE + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(d / ARRAYS_FILE)
    summary = {
        "status": "failed" if error is not None else "completed",
        "error": None if error is None else str(error),
        "error_type": None if error is None else type(error).__name__,
        "full_bytes": outcome.full_bytes,
        "adapter_bytes": outcome.adapter_bytes,
        "rounds": [r.to_dict() for r in outcome.rounds],
    }
    write_atomic(d / SUMMARY_FILE, json.dumps(summary))


def read_rounds(out_dir: str | Path) -> list[RoundRecord]:
    """The rounds a ServerApp has finished so far (from :data:`ROUNDS_FILE`)."""
    path = Path(out_dir) / ROUNDS_FILE
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [RoundRecord.from_dict(json.loads(line)) for line in lines if line.endswith("}")]


def read_outcome(out_dir: str | Path) -> FederationOutcome | None:
    """The outcome a ServerApp wrote to ``out_dir``; None while the run has not ended.

    Raises:
        TooFewRepliesError: the run stopped because a round got too few accepted updates.
        FederationFailedError: the ServerApp failed otherwise.
    """
    d = Path(out_dir)
    if not (d / SUMMARY_FILE).exists():
        return None
    summary = json.loads((d / SUMMARY_FILE).read_text(encoding="utf-8"))
    if summary["status"] != "completed":
        if summary["error_type"] == TooFewRepliesError.__name__:
            raise TooFewRepliesError(summary["error"])
        raise FederationFailedError(f"the ServerApp failed: {summary['error_type']}: {summary['error']}")
    outcome = FederationOutcome(
        rounds=[RoundRecord.from_dict(r) for r in summary["rounds"]],
        full_bytes=int(summary["full_bytes"]),
        adapter_bytes=int(summary["adapter_bytes"]),
    )
    with np.load(d / ARRAYS_FILE) as data:
        groups: dict[str, Arrays] = {"base": {}, "adapters": {}}
        for key in data.files:
            head, _, name = key.partition("/")
            if head == "personal":
                region, _, name = name.partition("/")
                outcome.personal.setdefault(int(region), {})[name] = data[key]
            else:
                groups[head][name] = data[key]
    outcome.base = groups["base"] or None
    outcome.adapters = groups["adapters"] or None
    return outcome
