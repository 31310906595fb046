"""Graph snapshots from request bodies (JSON or npz), checked before any model sees them."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from x0tta6bl4.serve.errors import RequestError
from x0tta6bl4.serve.schemas import ScoreRequest

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

#: Media type of the compact binary encoding: a numpy ``.npz`` archive (no pickles).
NPZ_MEDIA_TYPE = "application/x-npz"


def validation_error(exc: ValidationError, what: str) -> RequestError:
    """A pydantic error as a 400 (unparseable body) or 422 (well-formed but wrong) RequestError."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return RequestError(
            f"{what} is not valid JSON: {errors[0]['msg']}", status=400, kind="malformed_json"
        )
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    hint = " (send null for a value that was not measured)" if first["type"] == "finite_number" else ""
    details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors[:20]]
    return RequestError(f"{what}: {where}: {first['msg']}{hint}", details=details)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A checked graph snapshot, its columns in the detector's feature order.

    Shapes:
        window: ``[ticks, nodes, features]`` raw values, NaN = not measured;
        pairs: ``[edges, 2]`` int32 node indices, undirected as sent (int32 keeps the snapshot
        small on its way to the detector replica).
    """

    node_ids: list[int | str]
    window: F32
    pairs: I32

    @property
    def num_nodes(self) -> int:
        return len(self.node_ids)

    def node_key(self) -> tuple[object, ...]:
        """Identity of the node set (a stream restarts when it changes)."""
        return tuple(self.node_ids)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Largest snapshot the service accepts."""

    max_nodes: int
    max_ticks: int
    max_edges: int


def parse_json(body: bytes, features: Sequence[str], limits: Limits) -> Snapshot:
    """Decode and check a JSON :class:`ScoreRequest` body."""
    try:
        req = ScoreRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc, "score request") from exc
    try:
        window = np.asarray(req.features, dtype=np.float32)
    except ValueError as exc:  # ragged rows
        raise RequestError(f"features: rows of different lengths ({exc})") from exc
    return check(list(req.node_ids), list(req.feature_names), window, req.edges, features, limits)


def parse_npz(body: bytes, features: Sequence[str], limits: Limits) -> Snapshot:
    """Decode and check an npz body: arrays ``node_ids``, ``feature_names``, ``features`` and ``edges``
    (``[edges, 2]`` node ids), as :func:`encode_npz` writes them. NaN = not measured."""
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise RequestError(
            f"score request is not a readable npz archive: {exc}", status=400, kind="malformed_body"
        ) from exc
    unknown = sorted(set(arrays) - {"node_ids", "feature_names", "features", "edges"})
    missing = sorted({"node_ids", "feature_names", "features"} - set(arrays))
    if unknown or missing:
        raise RequestError(f"npz arrays: missing {missing}, unexpected {unknown}")
    node_ids_arr, names_arr, values = arrays["node_ids"], arrays["feature_names"], arrays["features"]
    if node_ids_arr.ndim != 1 or names_arr.ndim != 1 or names_arr.dtype.kind != "U":
        raise RequestError("npz: node_ids and feature_names must be 1-d (feature_names as unicode strings)")
    if node_ids_arr.dtype.kind not in "iuU":
        raise RequestError(f"npz: node_ids must be integers or unicode strings, not {node_ids_arr.dtype}")
    if values.dtype.kind not in "fiu":
        raise RequestError(f"npz: features must be numeric, not {values.dtype}")
    edges = arrays.get("edges", np.zeros((0, 2), dtype=node_ids_arr.dtype))
    if edges.ndim != 2 or (edges.size and edges.shape[1] != 2):
        raise RequestError(f"npz: edges must have shape [edges, 2], got {list(edges.shape)}")
    return check(
        node_ids_arr.tolist(),
        names_arr.tolist(),
        values.astype(np.float32, copy=False),
        edges,
        features,
        limits,
        nan_is_missing=True,
    )


def check(
    node_ids: list[Any],
    names: list[str],
    window: F32,
    edges: list[tuple[Any, Any]] | npt.NDArray[Any],
    features: Sequence[str],
    limits: Limits,
    *,
    nan_is_missing: bool = False,
) -> Snapshot:
    """Check a decoded snapshot against the detector's features and the limits; reorder columns."""
    n = len(node_ids)
    if n == 0:
        raise RequestError("node_ids is empty: a snapshot needs at least one node")
    if n > limits.max_nodes:
        raise RequestError(
            f"{n} nodes is more than this service accepts ({limits.max_nodes})",
            status=413,
            kind="payload_too_large",
        )
    int_ids = _as_int_ids(node_ids)
    unique = len(np.unique(int_ids)) == n if int_ids is not None else len(set(node_ids)) == n
    if not unique:
        seen: set[Any] = set()
        dup = next(i for i in node_ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise RequestError(f"node_ids must be unique; {dup!r} appears more than once")
    missing = [f for f in features if f not in names]
    unknown = [f for f in names if f not in features]
    if missing or unknown or len(names) != len(features):
        dups = sorted({f for f in names if names.count(f) > 1})
        raise RequestError(
            f"feature_names must be exactly the detector's {len(features)} features: "
            f"missing {missing}, unknown {unknown}" + (f", repeated {dups}" if dups else "")
        )
    if window.ndim == 2:
        window = window[None]
    if window.ndim != 3 or window.shape[1:] != (n, len(names)):
        raise RequestError(
            f"features must be [nodes][features] = [{n}][{len(names)}] or [ticks][{n}][{len(names)}]; "
            f"got shape {list(window.shape)}"
        )
    if window.shape[0] > limits.max_ticks:
        raise RequestError(
            f"a window of {window.shape[0]} ticks is longer than this service keeps ({limits.max_ticks})",
            status=413,
            kind="payload_too_large",
        )
    bad = np.isinf(window) if nan_is_missing else ~np.isfinite(window) & ~np.isnan(window)
    if bad.any():
        t, i, f = (int(v[0]) for v in np.nonzero(bad))
        raise RequestError(
            f"features: node {node_ids[i]!r} feature {names[f]!r} is {window[t, i, f]} "
            "(values must be finite)"
        )
    window = window[:, :, [names.index(f) for f in features]]
    if len(edges) > limits.max_edges:
        raise RequestError(
            f"{len(edges)} edges is more than this service accepts ({limits.max_edges})",
            status=413,
            kind="payload_too_large",
        )
    pairs = _edge_indices(node_ids, int_ids, edges)
    return Snapshot(node_ids=node_ids, window=np.ascontiguousarray(window), pairs=pairs)


def _as_int_ids(node_ids: list[Any]) -> I64 | None:
    """The ids as an int64 array when every one is an integer (the fast path), else None."""
    if not all(type(i) is int for i in node_ids):
        return None
    try:
        return np.asarray(node_ids, dtype=np.int64)
    except OverflowError:
        return None


def _edge_indices(node_ids: list[Any], int_ids: I64 | None, edges: Any) -> I32:
    """Edges given by node id -> row indices ``[edges, 2]``; an unknown id is a 422 naming it."""
    if int_ids is not None:
        flat = np.asarray(edges, dtype=object if len(edges) == 0 else None).reshape(-1)
        if flat.size == 0 or flat.dtype.kind in "iu":
            flat = flat.astype(np.int64)
            order = np.argsort(int_ids)
            pos = np.searchsorted(int_ids, flat, sorter=order).clip(0, max(len(int_ids) - 1, 0))
            idx = order[pos] if len(int_ids) else pos
            bad = int_ids[idx] != flat if flat.size else np.zeros(0, dtype=bool)
            if bad.any():
                raise RequestError(f"edges name node {int(flat[np.argmax(bad)])!r}, which is not in node_ids")
            return idx.reshape(-1, 2).astype(np.int32)
    index = {node: i for i, node in enumerate(node_ids)}
    try:
        return np.array([(index[a], index[b]) for a, b in edges], dtype=np.int32).reshape(-1, 2)
    except KeyError as exc:
        raise RequestError(f"edges name node {exc.args[0]!r}, which is not in node_ids") from exc


def encode_npz(
    node_ids: Sequence[int] | Sequence[str] | npt.NDArray[Any],
    feature_names: Sequence[str],
    features: npt.NDArray[Any],
    edges: npt.NDArray[Any] | Sequence[tuple[Any, Any]] = (),
) -> bytes:
    """The npz body a client sends (see :func:`parse_npz`); float32 features, no pickles."""
    buf = io.BytesIO()
    arrays: dict[str, Any] = {
        "node_ids": np.asarray(node_ids),
        "feature_names": np.asarray(list(feature_names), dtype=np.str_),
        "features": np.asarray(features, dtype=np.float32),
        "edges": np.asarray(edges).reshape(-1, 2),
    }
    np.savez(buf, **arrays)
    return buf.getvalue()


#: Stream names: letters, digits and ``_.:-``, 1 to 128 characters.
STREAM_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def parse_body(body: bytes, media_type: str, features: Sequence[str], limits: Limits) -> Snapshot:
    """Decode a score request body of either media type (JSON unless it says npz)."""
    if media_type == NPZ_MEDIA_TYPE:
        return parse_npz(body, features, limits)
    if media_type not in ("application/json", ""):
        raise RequestError(
            f"unsupported media type {media_type!r}: send application/json or {NPZ_MEDIA_TYPE}",
            status=415,
            kind="unsupported_media_type",
        )
    return parse_json(body, features, limits)


def stream_key(owner: str, stream_id: str) -> str:
    """The key a live stream is kept and routed under: its name scoped by the identity that owns it.

    Two callers that use the same ``stream_id`` get two streams, so no caller can feed, reset or
    evict another's baselines. Also the ``multiplexed_model_id`` that routes the stream's calls.
    """
    digest = hashlib.sha256(owner.encode("utf-8")).hexdigest()[:16]
    return f"{digest}.{stream_id}"


def check_stream_id(stream_id: str | None) -> str | None:
    """Return a valid stream name (or None); refuse anything else."""
    if stream_id is not None and not STREAM_ID_PATTERN.match(stream_id):
        raise RequestError("stream_id must be 1 to 128 letters, digits or _.:-")
    return stream_id
