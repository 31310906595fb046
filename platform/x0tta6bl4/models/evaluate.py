"""Detection metrics against simulator labels, and the non-graph baselines scored on the same data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from x0tta6bl4.mesh.faults import FAULT_CODES
from x0tta6bl4.models.data import GraphSeries

F64 = npt.NDArray[np.float64]


def detection_metrics(scores: npt.NDArray[np.floating], labels: npt.NDArray[np.integer]) -> dict[str, object]:
    """AUROC, AUPRC, best F1 (and its threshold), recall and AUPRC per fault type.

    Node-ticks with any fault are positives. Per fault type, AUPRC compares that type's
    node-ticks with healthy ones (other faults left out); recall is taken at the
    best-F1 threshold.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    positive = y > 0
    if positive.all() or not positive.any():
        raise ValueError("metrics need both healthy and faulty node-ticks")
    precision, recall, thresholds = precision_recall_curve(positive, s)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    threshold = float(thresholds[best]) if len(thresholds) else float("inf")
    by_fault: dict[str, dict[str, float]] = {}
    healthy = y == 0
    for name, code in FAULT_CODES.items():
        mine = y == code
        if not mine.any():
            continue
        keep = mine | healthy
        by_fault[name] = {
            "auprc": float(average_precision_score(mine[keep], s[keep])),
            "recall": float((s[mine] >= threshold).mean()),
            "node_ticks": float(mine.sum()),
        }
    return {
        "auroc": float(roc_auc_score(positive, s)),
        "auprc": float(average_precision_score(positive, s)),
        "best_f1": float(f1[best]),
        "precision": float(precision[best]),
        "recall": float(recall[best]),
        "threshold": threshold,
        "positives": float(positive.sum()),
        "node_ticks": float(len(y)),
        "by_fault": by_fault,
    }


def labels_of(series: GraphSeries, ticks: Sequence[int] | None = None) -> npt.NDArray[np.int8]:
    if series.labels is None:
        raise ValueError("the series has no labels (real telemetry): it cannot be evaluated")
    return series.labels[list(ticks if ticks is not None else series.valid_ticks)]


def zscore_scores(series: GraphSeries, ticks: Sequence[int] | None = None) -> F64:
    """Per-node z-score baseline: mean squared z-score of the node's current features."""
    f = series.inputs.spec.num_features
    out = []
    for t in ticks if ticks is not None else series.valid_ticks:
        x, _ = series.inputs.at(t)
        z = x[:, -f:]
        out.append((z.astype(np.float64) ** 2).mean(axis=1))
    return np.stack(out)


def _rows(series: Sequence[GraphSeries], max_rows: int, seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    rows = []
    per = max(1, max_rows // sum(len(s.valid_ticks) for s in series))
    for s in series:
        for t in s.valid_ticks:
            x, _ = s.inputs.at(t)
            rows.append(x[rng.choice(len(x), size=min(per, len(x)), replace=False)])
    return np.concatenate(rows)


def isolation_forest_scores(
    train: Sequence[GraphSeries], series: GraphSeries, ticks: Sequence[int] | None = None, seed: int = 0
) -> F64:
    """IsolationForest on the same per-node input vectors, fit on (unlabelled) training series."""
    forest = IsolationForest(n_estimators=200, max_samples=512, random_state=seed, n_jobs=1)
    forest.fit(_rows(train, 30_000, seed))
    out = []
    for t in ticks if ticks is not None else series.valid_ticks:
        x, _ = series.inputs.at(t)
        out.append(-forest.score_samples(x))
    return np.stack(out)


def f1_ceiling(visible: npt.NDArray[np.bool_], labels: npt.NDArray[np.integer]) -> dict[str, Any]:
    """Best F1 of a detector that flags exactly the visible faulty node-ticks (see ``visible_faults``).

    Its precision is 1 and its recall the visible share of the positives, so
    ``F1 = 2 R / (1 + R)``; a detector of telemetry beats it only by flagging invisible
    faults by chance.
    """
    y = np.asarray(labels)
    seen = np.asarray(visible, dtype=bool)
    positive = y > 0
    if not positive.any():
        raise ValueError("the ceiling needs faulty node-ticks")
    recall = float((seen & positive).sum() / positive.sum())
    return {
        "f1": 2 * recall / (1 + recall),
        "recall": recall,
        "invisible_node_ticks": float((positive & ~seen).sum()),
        "visible_share_by_fault": {
            name: float(seen[y == code].mean()) for name, code in FAULT_CODES.items() if (y == code).any()
        },
    }
