"""Labelled incident descriptions: free text as operators and alerts phrase them, with the true fault.

Split per region (regions differ in writing style) for federated fine-tuning of the
embedder, and into train/test for evaluating retrieval.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from x0tta6bl4.corpus.runbooks import as_traversable
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mesh.faults import FAULT_TYPES

SPLITS: tuple[str, ...] = ("train", "test")
NUM_REGIONS = 4


class IncidentError(ConfigError):
    """A malformed incident record or an invalid incident filter."""


@dataclasses.dataclass(frozen=True)
class Incident:
    """A labelled incident description.

    Args:
        id: unique identifier.
        text: the description as an operator or an alert would phrase it.
        fault_type: the true fault (a key of ``FAULT_CODES``).
        region: the mesh region it comes from (``0..NUM_REGIONS-1``); regions differ in writing style.
        split: ``"train"`` or ``"test"``.
    """

    id: str
    text: str
    fault_type: str
    region: int
    split: str


def packaged_incidents_file() -> Traversable:
    """The labelled incident file shipped inside the package."""
    return resources.files("x0tta6bl4.corpus") / "data" / "incidents.jsonl"


def parse_incident(record: Any, where: str = "<record>") -> Incident:
    """Validate one decoded JSON record.

    Raises:
        IncidentError: a field is missing or invalid.
    """
    if not isinstance(record, dict):
        raise IncidentError(f"{where}: an incident must be a JSON object")
    missing = [k for k in ("id", "text", "fault_type", "region", "split") if k not in record]
    if missing:
        raise IncidentError(f"{where}: incident lacks {', '.join(missing)}")
    inc_id, text, fault, region, split = (record[k] for k in ("id", "text", "fault_type", "region", "split"))
    if not isinstance(inc_id, str) or not inc_id or not isinstance(text, str) or not text.strip():
        raise IncidentError(f"{where}: id and text must be non-empty strings")
    if fault not in FAULT_TYPES:
        raise IncidentError(f"{where}: unknown fault type {fault!r} (known: {', '.join(FAULT_TYPES)})")
    if not isinstance(region, int) or isinstance(region, bool) or not 0 <= region < NUM_REGIONS:
        raise IncidentError(f"{where}: region must be an integer in 0..{NUM_REGIONS - 1}, got {region!r}")
    if split not in SPLITS:
        raise IncidentError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    return Incident(id=inc_id, text=text.strip(), fault_type=fault, region=region, split=split)


def load_incidents(
    split: str | None = None, region: int | None = None, path: str | Path | Traversable | None = None
) -> list[Incident]:
    """Labelled incidents in file order, optionally only one split and/or one region.

    Args:
        split: ``"train"``, ``"test"`` or ``None`` for both.
        region: a region number or ``None`` for all.
        path: a JSON-lines file (default: the packaged ``corpus/data/incidents.jsonl``).

    Raises:
        IncidentError: an invalid filter, a malformed line or a duplicate id.
    """
    if split is not None and split not in SPLITS:
        raise IncidentError(f"split must be one of {', '.join(SPLITS)} or None, got {split!r}")
    if region is not None and not 0 <= region < NUM_REGIONS:
        raise IncidentError(f"region must be in 0..{NUM_REGIONS - 1} or None, got {region!r}")
    source: Traversable = packaged_incidents_file() if path is None else as_traversable(path)
    incidents: list[Incident] = []
    seen: set[str] = set()
    for lineno, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IncidentError(f"{where}: not valid JSON: {exc}") from None
        inc = parse_incident(record, where)
        if inc.id in seen:
            raise IncidentError(f"{where}: duplicate incident id {inc.id!r}")
        seen.add(inc.id)
        if (split is None or inc.split == split) and (region is None or inc.region == region):
            incidents.append(inc)
    return incidents
