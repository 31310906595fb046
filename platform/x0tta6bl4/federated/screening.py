"""Screening client updates before aggregation: NaN/inf, misfit arrays and outlying norms are refused."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

#: A training reply whose update norm (distance of its arrays from the round's global arrays)
#: exceeds this many times the median norm of the round's *other* valid replies is rejected. A
#: leave-one-out median needs no third client: with two, the larger update is judged against the
#: smaller one. Honest clients of one round start from the same weights and train the same
#: number of steps, so their norms stay within a small factor of each other; a scaled or
#: replaced model is orders of magnitude away.
DEFAULT_MAX_UPDATE_NORM_RATIO = 10.0


def update_norm(update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``update - reference`` over all arrays, in float64 (inf/NaN if the update is not finite)."""
    total = 0.0
    for name, ref in reference.items():
        delta = np.asarray(update[name], dtype=np.float64) - np.asarray(ref, dtype=np.float64)
        total += float(np.sum(delta * delta))
    return math.sqrt(total)


def norm_ratios(norms: Sequence[float | None]) -> list[float | None]:
    """Each norm over the median of the *other* norms (None where it or every other one is None).

    A median of zero gives inf for a positive norm (and NaN for a zero one).
    """
    out: list[float | None] = []
    for i, norm in enumerate(norms):
        others = [n for j, n in enumerate(norms) if j != i and n is not None]
        if norm is None or not others:
            out.append(None)
            continue
        median = float(np.median(others))
        out.append(norm / median if median > 0 else (math.inf if norm > 0 else math.nan))
    return out


def screen_updates(
    updates: Sequence[Mapping[str, np.ndarray]],
    reference: Mapping[str, np.ndarray],
    max_norm_ratio: float = DEFAULT_MAX_UPDATE_NORM_RATIO,
) -> list[str | None]:
    """Why each client update must not be aggregated (None: accept it).

    Refused, in this order: arrays that do not match the global model's names and shapes;
    any NaN or infinity; an update norm above ``max_norm_ratio`` times the median norm of
    the other acceptable updates of the round (not applied to a lone update).

    Args:
        updates: each client's returned arrays.
        reference: the global arrays the round sent (the norm is measured from them).
        max_norm_ratio: the outlier factor (see :data:`DEFAULT_MAX_UPDATE_NORM_RATIO`).
    """
    reasons: list[str | None] = []
    norms: list[float | None] = []
    for update in updates:
        reason = None
        if set(update) != set(reference) or any(
            np.shape(update[k]) != np.shape(v) for k, v in reference.items()
        ):
            reason = "arrays do not match the global model (names or shapes)"
        elif not all(np.isfinite(np.asarray(v)).all() for v in update.values()):
            bad = sorted(k for k, v in update.items() if not np.isfinite(np.asarray(v)).all())
            reason = f"non-finite values (NaN/inf) in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
        reasons.append(reason)
        norms.append(update_norm(update, reference) if reason is None else None)
    for i, ratio in enumerate(norm_ratios(norms)):
        norm = norms[i]
        if ratio is not None and norm is not None and ratio > max_norm_ratio:
            reasons[i] = (
                f"update norm {norm:.4g} is more than {max_norm_ratio:g}x the median {norm / ratio:.4g} "
                "of the round's other updates"
            )
    return reasons
