"""Strict-JSON values from metrics and reports: numpy to Python, NaN/inf to null, string keys."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def json_safe(
    value: Any, strict: bool = False, *, keep_keys: bool = False, keep_non_finite: bool = False
) -> Any:
    """``value`` with numpy scalars/arrays as Python values, non-finite floats as None, keys as strings.

    Mappings become dicts and tuples lists, recursively.

    Args:
        value: nested mappings, lists, tuples and scalars.
        strict: raise TypeError on a value JSON cannot hold (default False: leave it as is).
        keep_keys: leave mapping keys as they are instead of making them strings (for YAML).
        keep_non_finite: leave NaN and infinities as floats instead of None (for YAML).
    """
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if isinstance(value, float):
        return value if keep_non_finite or math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {
            (k if keep_keys else str(k)): json_safe(
                v, strict, keep_keys=keep_keys, keep_non_finite=keep_non_finite
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [json_safe(v, strict, keep_keys=keep_keys, keep_non_finite=keep_non_finite) for v in value]
    if strict and not (value is None or isinstance(value, str | int | bool)):
        raise TypeError(f"value {value!r} of type {type(value).__name__} cannot be stored as JSON")
    return value
