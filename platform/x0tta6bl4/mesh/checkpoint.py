"""Shard checkpoints as npz without pickle: arrays as members, the structure as JSON, known types only.

A checkpoint is read back by whoever restarts a shard, possibly on another node from a
shared directory; with pickle, whoever can write that directory runs code in every shard.
This format can only ever produce arrays, numbers, strings, bytes, lists, tuples, dicts and
the few mesh dataclasses named in :data:`_TYPES`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from typing import Any

import numpy as np

from x0tta6bl4.errors import X0tta6bl4Error
from x0tta6bl4.mesh.control import ControlParams, FaultStatus, RoutingInputs
from x0tta6bl4.mesh.faults import Action, Fault

#: Dataclasses a checkpoint may hold, by the name it records (decoding builds nothing else).
_TYPES: dict[str, type] = {t.__name__: t for t in (Action, ControlParams, Fault, FaultStatus, RoutingInputs)}
_META = "__structure__"
#: Largest checkpoint member read back (a 100,000-node region holds a few MB per array).
MAX_MEMBER_BYTES = 1 << 30


class CheckpointError(X0tta6bl4Error):
    """A checkpoint that cannot be read: torn, not this format, or holding an unknown type."""


def encode_state(state: Any) -> bytes:
    """Serialise a checkpoint tree to npz bytes (``np.load(..., allow_pickle=False)`` reads them).

    Raises:
        CheckpointError: the tree holds a type this format does not know (an object array included).
    """
    arrays: dict[str, np.ndarray] = {}

    def enc(value: Any) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)):
            return {"f": float(value).hex()}  # exact, and NaN/inf survive JSON
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise CheckpointError("a checkpoint cannot hold an object array")
            key = f"a{len(arrays)}"
            arrays[key] = value
            return {"nd": key}
        if isinstance(value, bytes):
            key = f"a{len(arrays)}"
            arrays[key] = np.frombuffer(value, dtype=np.uint8)
            return {"bytes": key}
        if isinstance(value, tuple):
            return {"tuple": [enc(v) for v in value]}
        if isinstance(value, list):
            return [enc(v) for v in value]
        if isinstance(value, dict):
            return {"dict": [[enc(k), enc(v)] for k, v in value.items()]}
        if dataclasses.is_dataclass(value) and type(value).__name__ in _TYPES:
            fields = {f.name: enc(getattr(value, f.name)) for f in dataclasses.fields(value)}
            return {"dc": type(value).__name__, "fields": fields}
        raise CheckpointError(f"a checkpoint cannot hold a {type(value).__name__}")

    structure = json.dumps(enc(state)).encode()
    out = io.BytesIO()
    members: dict[str, Any] = {**arrays, _META: np.frombuffer(structure, dtype=np.uint8)}
    np.savez(out, **members)
    return out.getvalue()


def decode_state(blob: bytes) -> Any:
    """The tree :func:`encode_state` wrote; pickles, unknown types and oversized members are refused.

    Raises:
        CheckpointError: the bytes are not a readable checkpoint of this format.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            for info in zf.infolist():
                if info.file_size > MAX_MEMBER_BYTES:
                    raise CheckpointError(f"checkpoint member {info.filename} is {info.file_size} bytes")
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        structure = json.loads(arrays.pop(_META).tobytes())
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"not a readable checkpoint ({type(exc).__name__}: {exc})") from None

    def dec(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, list):
            return [dec(v) for v in value]
        if not isinstance(value, dict) or len(value) not in (1, 2):
            raise CheckpointError(f"unexpected checkpoint node {str(value)[:80]}")
        if "f" in value:
            return float.fromhex(value["f"])
        if "nd" in value:
            return arrays[value["nd"]]
        if "bytes" in value:
            return arrays[value["bytes"]].tobytes()
        if "tuple" in value:
            return tuple(dec(v) for v in value["tuple"])
        if "dict" in value:
            return {dec(k): dec(v) for k, v in value["dict"]}
        if "dc" in value:
            cls = _TYPES.get(value["dc"])
            if cls is None:
                raise CheckpointError(f"checkpoint names an unknown type {value['dc']!r}")
            return cls(**{k: dec(v) for k, v in value["fields"].items()})
        raise CheckpointError(f"unexpected checkpoint node {str(value)[:80]}")

    try:
        return dec(structure)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"inconsistent checkpoint ({type(exc).__name__}: {exc})") from None
