"""Graph snapshots from request bodies (JSON or npz), checked before any model sees them."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import re
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError
from pydantic_core import from_json

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


def json_budget(features: Sequence[str], limits: Limits) -> tuple[int, int]:
    """Most JSON values and arrays a score request within ``limits`` can hold.

    A JSON body becomes Python objects many times its size, so :func:`parse_json` counts its
    commas and brackets (a cheap byte scan) against these before parsing anything.
    """
    f = max(len(features), 1)
    values = limits.max_ticks * limits.max_nodes * f + limits.max_nodes + 2 * limits.max_edges + 4 * f
    arrays = limits.max_ticks * limits.max_nodes + limits.max_ticks + limits.max_edges
    return values + _JSON_SLACK, arrays + 64


#: Values and arrays allowed beyond :func:`json_budget` (room for the 200,000 names of a request
#: whose names are all wrong still gets its 422 naming them, not a 413).
_JSON_SLACK = 1 << 18


def parse_json(body: bytes, features: Sequence[str], limits: Limits) -> Snapshot:
    """Decode and check a JSON :class:`ScoreRequest` body.

    Bounded before allocation: the body's values are counted against :func:`json_budget`
    first; the feature matrix is checked for shape and limits while still lists, then
    converted one tick at a time (other threads run in between).
    """
    max_values, max_arrays = json_budget(features, limits)
    values, arrays = body.count(b",") + 1, body.count(b"[")
    if values > max_values or arrays > max_arrays:
        raise RequestError(
            f"score request holds about {max(values, 1)} values in {arrays} arrays; a snapshot within "
            f"this service's limits has at most {max_values} in {max_arrays} (send large snapshots as npz)",
            status=413,
            kind="payload_too_large",
        )
    try:
        raw = from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        try:
            from_json(body, allow_inf_nan=True)
        except ValueError:
            raise RequestError(
                f"score request is not valid JSON: {exc}", status=400, kind="malformed_json"
            ) from None
        raise RequestError(
            "score request: NaN and Infinity are not JSON numbers; values must be finite "
            "(send null for a value that was not measured)"
        ) from None
    head = raw
    if isinstance(raw, dict) and isinstance(raw.get("features"), list):
        head = {**raw, "features": []}  # checked below, without building a pydantic list of lists
    try:
        req = ScoreRequest.model_validate(head)
    except ValidationError as exc:
        raise validation_error(exc, "score request") from exc
    node_ids, names = list(req.node_ids), list(req.feature_names)
    check_nodes(node_ids, limits)
    check_names(names, features)
    window = _json_window(raw["features"], len(node_ids), len(names), limits)
    return check(node_ids, names, window, req.edges, features, limits)


#: Python types of the values a JSON feature matrix may hold (null is a missing value).
_JSON_NUMBER_TYPES = frozenset({int, float, type(None)})
_JSON_TYPE_NAMES = {bool: "true/false", str: "strings", dict: "objects", list: "lists"}


def _json_window(rows: list[Any], n: int, f: int, limits: Limits) -> F32:
    """The ``[ticks, nodes, features]`` float32 window of a JSON ``features`` value (null = NaN).

    Its shape is read from the lists and checked against ``n`` nodes, ``f`` features and the
    limits before any array is allocated.
    """
    three_d = bool(rows) and isinstance(rows[0], list) and bool(rows[0]) and isinstance(rows[0][0], list)
    ticks = rows if three_d else [rows]
    first = ticks[0]
    shape = [len(ticks)] if three_d else []
    shape += [len(first), len(first[0]) if first and isinstance(first[0], list) else 0]
    if shape[-2:] != [n, f]:
        raise RequestError(
            f"features must be [nodes][features] = [{n}][{f}] or [ticks][{n}][{f}]; got shape {shape}"
        )
    if len(ticks) > limits.max_ticks:
        raise RequestError(
            f"a window of {len(ticks)} ticks is longer than this service keeps ({limits.max_ticks})",
            status=413,
            kind="payload_too_large",
        )
    for tick in ticks:
        if not isinstance(tick, list) or len(tick) != n:
            raise RequestError(f"features: every tick must have {n} rows, one per node")
        for row in tick:
            if not isinstance(row, list) or len(row) != f:
                raise RequestError(f"features: rows of different lengths (every row must have {f} values)")
    window = np.empty((len(ticks), n, f), dtype=np.float32)
    for t, tick in enumerate(ticks):
        odd = set(map(type, itertools.chain.from_iterable(tick))) - _JSON_NUMBER_TYPES
        if odd:  # numpy would read true as 1.0 and "1.5" as 1.5
            kinds = ", ".join(sorted(_JSON_TYPE_NAMES.get(k, k.__name__) for k in odd))
            raise RequestError(f"features: values must be numbers or null, not {kinds}")
        try:
            window[t] = np.asarray(tick, dtype=np.float32)
        except (ValueError, TypeError, OverflowError) as exc:
            raise RequestError(f"features: values must be numbers or null ({exc})") from None
    return window


#: The arrays of an npz body: name -> dtype kinds accepted and number of dimensions.
_NPZ_ARRAYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "node_ids": ("iuU", (1,)),
    "feature_names": ("U", (1,)),
    "features": ("fiu", (2, 3)),
    "edges": ("iuUf", (2,)),  # float only when empty (numpy's default dtype of no edges)
}
#: Longest string in an npz body's ``node_ids`` or ``feature_names`` (as in the JSON schema).
_NPZ_MAX_CHARS = 128
_EOCD = struct.Struct("<4s4H2LH")  # zip end-of-central-directory record


def _malformed(message: str) -> RequestError:
    return RequestError(
        f"score request is not a readable npz archive: {message}", status=400, kind="malformed_body"
    )


def _npz_members(body: bytes) -> zipfile.ZipFile:
    """The body as a zip archive, refused before its directory is parsed when it is not a small npz."""
    if body.startswith(b"\x93NUMPY"):
        raise RequestError(
            "score request is a single .npy array, not an npz archive: send node_ids, feature_names, "
            "features and edges together (numpy.savez)",
            status=400,
            kind="malformed_body",
        )
    if not body.startswith(b"PK\x03\x04"):
        raise _malformed("it does not start like a zip archive")
    end = body.rfind(b"PK\x05\x06", max(0, len(body) - _EOCD.size - 0xFFFF))
    if end < 0 or len(body) - end < _EOCD.size:
        raise _malformed("no zip directory at its end")
    _, disk, _, _, entries, dir_size, _, _ = _EOCD.unpack_from(body, end)
    if (
        disk
        or entries > len(_NPZ_ARRAYS)
        or dir_size > 64 << 10
        or body[max(0, end - 20) : end - 16] == b"PK\x06\x07"
    ):
        raise RequestError(
            f"npz: at most {len(_NPZ_ARRAYS)} arrays ({', '.join(_NPZ_ARRAYS)}) in one plain zip archive; "
            f"this one lists {entries}"
        )
    try:
        return zipfile.ZipFile(io.BytesIO(body))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error) as exc:
        raise _malformed(str(exc)) from None


def _npz_member_limits(name: str, n_features: int, limits: Limits) -> tuple[int, ...]:
    """Largest shape per dimension of one npz array under ``limits``."""
    names = n_features + _JSON_SLACK
    return {
        "node_ids": (limits.max_nodes,),
        "feature_names": (names,),
        "features": (limits.max_ticks, limits.max_nodes, names),
        "edges": (limits.max_edges, 2),
    }[name]


def _npz_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, n_features: int, limits: Limits) -> Any:
    """Read one array after its zip entry and .npy header passed every check (no allocation before)."""
    kinds, ndims = _NPZ_ARRAYS[name]
    if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise RequestError(f"npz: {name} must be stored or deflated, unencrypted")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=4096)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=4096)
        else:
            raise _malformed(f"{name} has .npy version {version}")
        if (
            dtype.hasobject
            or dtype.kind not in kinds
            or len(shape) not in ndims
            or dtype.itemsize > 4 * _NPZ_MAX_CHARS
        ):
            raise RequestError(
                f"npz: {name} must be {' or '.join(map(str, ndims))}-d of kind {kinds!r} "
                f"(numbers, or strings of at most {_NPZ_MAX_CHARS} characters); got {len(shape)}-d {dtype}"
            )
        largest = _npz_member_limits(name, n_features, limits)[-len(shape) :]
        if any(d > m for d, m in zip(shape, largest, strict=True)):
            raise RequestError(
                f"npz: {name} has shape {list(shape)}; this service accepts at most {list(largest)}",
                status=413,
                kind="payload_too_large",
            )
        need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if info.file_size - f.tell() != need:
            raise _malformed(
                f"{name} holds {info.file_size - f.tell()} bytes of data; its header says {need}"
            )
    with zf.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False, max_header_size=4096)


def parse_npz(body: bytes, features: Sequence[str], limits: Limits) -> Snapshot:
    """Decode and check an npz body: arrays ``node_ids``, ``feature_names``, ``features`` and ``edges``
    (``[edges, 2]`` node ids), as :func:`encode_npz` writes them. NaN = not measured.

    Bounded before allocation: the zip directory, each entry's declared size and each array's
    ``.npy`` header (dtype, shape) are checked against the limits before any array is read.
    """
    zf = _npz_members(body)
    infos = zf.infolist()
    given = [i.filename.removesuffix(".npy") for i in infos]
    unknown = sorted(set(given) - set(_NPZ_ARRAYS))
    missing = sorted({"node_ids", "feature_names", "features"} - set(given))
    if unknown or missing or len(set(given)) != len(given):
        raise RequestError(f"npz arrays: missing {missing}, unexpected {unknown[:10]}")
    arrays: dict[str, Any] = {}
    try:
        for info, name in zip(infos, given, strict=True):
            arrays[name] = _npz_array(zf, info, name, len(features), limits)
    except RequestError:
        raise
    except (
        ValueError,
        OSError,
        zipfile.BadZipFile,
        EOFError,
        RuntimeError,
        NotImplementedError,
        zlib.error,
    ) as exc:
        raise _malformed(str(exc)) from None
    node_ids_arr, names_arr, values = arrays["node_ids"], arrays["feature_names"], arrays["features"]
    edges = arrays.get("edges", np.zeros((0, 2), dtype=node_ids_arr.dtype))
    if edges.size and edges.dtype.kind == "f":
        raise RequestError("npz: edges must name nodes by their ids (integers or strings), not floats")
    if edges.size and edges.shape[1] != 2:
        raise RequestError(f"npz: edges must have shape [edges, 2], got {list(edges.shape)}")
    node_ids, names = node_ids_arr.tolist(), names_arr.tolist()
    check_nodes(node_ids, limits)
    check_names(names, features)
    return check(
        node_ids,
        names,
        values.astype(np.float32, copy=False),
        edges,
        features,
        limits,
        nan_is_missing=True,
    )


def _listed(items: Sequence[Any], limit: int = 10) -> str:
    """``items`` as a list for a message; only the first ``limit``, saying how many more there are."""
    if len(items) <= limit:
        return repr(list(items))
    return repr(list(items[:limit]))[:-1] + f", ... {len(items) - limit} more]"


def check_nodes(node_ids: list[Any], limits: Limits) -> I64 | None:
    """Refuse an empty, oversized or repeated node list; the ids as int64 when all are integers."""
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
    return int_ids


def check_names(names: list[str], features: Sequence[str]) -> None:
    """Refuse column names that are not exactly the detector's features (linear in the names)."""
    wanted = set(features)
    counts = Counter(names)
    if len(names) == len(features) and counts.keys() == wanted:
        return
    missing = [f for f in features if f not in counts]
    unknown = [f for f in names if f not in wanted]
    dups = sorted(f for f, c in counts.items() if c > 1)
    raise RequestError(
        f"feature_names must be exactly the detector's {len(features)} features: "
        f"missing {_listed(missing)}, unknown {_listed(unknown)}"
        + (f", repeated {_listed(dups)}" if dups else "")
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
    int_ids = check_nodes(node_ids, limits)
    check_names(names, features)
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
    column = {name: i for i, name in enumerate(names)}
    window = window[:, :, [column[f] for f in features]]
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
