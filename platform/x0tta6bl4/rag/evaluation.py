"""Retrieval quality on the labelled incidents: recall@k and MRR of the fault runbooks, per fault type.

Counted as ``x0tta6bl4 bench serve`` counts them over HTTP: an incident is a hit when one of
the ``k`` passages answered for its text treats its fault type, and its reciprocal rank is
that of the first such passage (0 when none is in the ``k``). Tune on ``split="train"``; the
``test`` split is for reporting.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from x0tta6bl4.corpus import Incident, load_incidents
from x0tta6bl4.errors import ConfigError
from x0tta6bl4.rag.config import RetrieverConfig
from x0tta6bl4.rag.ranking import QueryResult
from x0tta6bl4.rag.retriever import Retriever


@dataclasses.dataclass(frozen=True)
class RetrievalScore:
    """Recall@k and MRR over a set of incidents.

    Args:
        incidents: how many incidents were asked.
        hits: how many had a passage of their fault type among the ``k``.
        recall_at_k: ``hits / incidents``.
        mrr: mean reciprocal rank of the first passage of the incident's fault type (0 past ``k``).
    """

    incidents: int
    hits: int
    recall_at_k: float
    mrr: float

    @classmethod
    def of(cls, ranks: Sequence[int | None]) -> RetrievalScore:
        """The score of 1-based ranks (``None``: no passage of the fault type in the ``k``)."""
        hits = [r for r in ranks if r is not None]
        n = len(ranks)
        return cls(n, len(hits), len(hits) / n if n else 0.0, sum(1.0 / r for r in hits) / n if n else 0.0)


@dataclasses.dataclass(frozen=True)
class RetrievalEvaluation:
    """The score of one split, overall and per fault type.

    Args:
        split: ``"train"``, ``"test"`` or ``None`` (both).
        k: passages asked per incident.
        overall: the score over every incident.
        by_fault: the score of each fault type's incidents, by fault type (sorted).
    """

    split: str | None
    k: int
    overall: RetrievalScore
    by_fault: dict[str, RetrievalScore]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form."""
        return {
            "split": self.split,
            "k": self.k,
            **dataclasses.asdict(self.overall),
            "by_fault": {f: dataclasses.asdict(s) for f, s in self.by_fault.items()},
        }


def first_rank(result: QueryResult, fault_type: str) -> int | None:
    """The 1-based rank of the first passage of ``result`` that treats ``fault_type`` (``None``: none)."""
    return next((i for i, p in enumerate(result.passages, 1) if p.fault_type == fault_type), None)


def score_results(
    incidents: Sequence[Incident], results: Sequence[QueryResult], split: str | None, k: int
) -> RetrievalEvaluation:
    """Recall@k and MRR of answers already computed, one per incident, in order.

    Raises:
        ConfigError: ``incidents`` and ``results`` differ in length.
    """
    if len(incidents) != len(results):
        raise ConfigError(f"{len(results)} results for {len(incidents)} incidents")
    ranks = [first_rank(r, i.fault_type) for i, r in zip(incidents, results, strict=True)]
    by_fault: dict[str, list[int | None]] = {}
    for incident, rank in zip(incidents, ranks, strict=True):
        by_fault.setdefault(incident.fault_type, []).append(rank)
    return RetrievalEvaluation(
        split,
        k,
        RetrievalScore.of(ranks),
        {fault: RetrievalScore.of(by_fault[fault]) for fault in sorted(by_fault)},
    )


def evaluate_retrieval(
    retriever: Retriever | None = None,
    split: str | None = "train",
    k: int = 3,
    incidents: Sequence[Incident] | None = None,
) -> RetrievalEvaluation:
    """Ask the retriever for every labelled incident of ``split`` (uncached) and score the answers.

    Args:
        retriever: the retriever to measure (default: :func:`open_packaged`, the packaged
            runbooks in a fresh temporary store, ranked with :class:`RetrieverConfig` defaults).
        split: ``"train"`` (default; tune on it), ``"test"`` (report on it) or ``None`` for both.
        k: passages asked per incident (default 3, as ``bench serve``).
        incidents: the incidents to ask instead of the packaged ones of ``split``.

    Raises:
        ConfigError: an unknown split, ``k`` out of ``1..max_k``, or no incidents.
    """
    cases = list(load_incidents(split=split) if incidents is None else incidents)
    if not cases:
        raise ConfigError("no incidents to evaluate")
    if retriever is None:
        with tempfile.TemporaryDirectory(prefix="x0tta6bl4-rag-eval-") as tmp:
            return evaluate_retrieval(open_packaged(Path(tmp)), split, k, cases)
    results = retriever.query_batch([i.text for i in cases], k, use_cache=False)
    return score_results(cases, results, split, k)


def open_packaged(data_dir: Path, config: RetrieverConfig | None = None, model: Any = None) -> Retriever:
    """A retriever over the packaged runbooks only, built in ``data_dir`` and left unsigned.

    Args:
        data_dir: an empty (or earlier such) store directory.
        config: ranking settings (default :class:`RetrieverConfig`); its ``data_dir`` and
            ``sign_packaged_as`` are replaced.
        model: an already loaded embedder of ``config.embedder_path`` (default: load it).
    """
    cfg = (config or RetrieverConfig()).model_copy(update={"data_dir": data_dir, "sign_packaged_as": None})
    return Retriever.open(cfg, model=model)
