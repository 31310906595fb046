"""Hostile score bodies are refused with a 4xx in bounded time, before anything their size claims is allocated."""

from __future__ import annotations

import io
import json
import time
import zipfile
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.serve.errors import RequestError
from x0tta6bl4.serve.snapshot import Limits, check_names, encode_npz, parse_body
from x0tta6bl4.telemetry.frame import FEATURES

#: The service's default limits (serve.config.AnomalyConfig).
DEFAULT = Limits(max_nodes=20_000, max_ticks=64, max_edges=400_000)
SMALL = Limits(max_nodes=100, max_ticks=8, max_edges=1000)
NPZ = "application/x-npz"


def refusal(
    raw: bytes, media: str = "application/json", limits: Limits = SMALL
) -> tuple[RequestError, float]:
    start = time.perf_counter()
    with pytest.raises(RequestError) as info:
        parse_body(raw, media, FEATURES, limits)
    return info.value, time.perf_counter() - start


def npz_of(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def npy(array: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npy_header(descr: str, shape: tuple[int, ...], data: bytes = b"") -> bytes:
    """A .npy file whose header claims ``shape`` whatever data follows."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def good_members() -> dict[str, bytes]:
    return {
        "node_ids.npy": npy(np.array([1, 2, 3])),
        "feature_names.npy": npy(np.array(FEATURES, dtype=np.str_)),
        "features.npy": npy(np.ones((3, len(FEATURES)), dtype=np.float32)),
        "edges.npy": npy(np.array([[1, 2]])),
    }


def test_200000_distinct_feature_names_are_refused_in_linear_time() -> None:
    names = [f"feature_{i}" for i in range(200_000)]
    start = time.perf_counter()
    with pytest.raises(RequestError) as info:
        check_names(names, FEATURES)
    assert time.perf_counter() - start < 1.0
    assert "199990 more" in info.value.message and len(info.value.message) < 4000
    body = json.dumps({"node_ids": [1], "feature_names": names, "features": [[0.0] * len(names)]}).encode()
    err, seconds = refusal(body, limits=DEFAULT)
    assert err.status == 422 and "unknown ['feature_0'" in err.message, err.message
    assert seconds < 1.0 and len(err.message) < 4000
    names_again = [*FEATURES, *FEATURES[:1] * 100_000]  # repeats are counted once each, too
    start = time.perf_counter()
    with pytest.raises(RequestError, match="repeated"):
        check_names(names_again, FEATURES)
    assert time.perf_counter() - start < 1.0


def test_a_json_body_with_more_values_than_the_limits_allow_is_refused_before_parsing() -> None:
    body = b'{"node_ids":[1],"feature_names":[],"features":[[' + b"0," * 2_000_000 + b"0]]}"
    err, seconds = refusal(body)
    assert err.status == 413 and "npz" in err.message
    assert seconds < 0.5
    nested = b"[" * 5_000 + b"]" * 5_000
    assert refusal(nested)[0].status == 413  # more arrays than any snapshot within the limits has
    assert refusal(b"[" * 300 + b"]" * 300, limits=DEFAULT)[0].status == 400  # too deep for the parser


@pytest.mark.parametrize(
    ("features", "status", "needle"),
    [
        ([[[0.0] * len(FEATURES)] * 3] * 9, 413, "longer"),  # ticks over the limit, still lists
        ([[0.0] * len(FEATURES)] * 3 + [[0.0]], 422, "shape"),
        ([[0.0] * len(FEATURES), [0.0] * len(FEATURES), [0.0]], 422, "rows of different lengths"),
        ([[{"a": 1}] * len(FEATURES)] * 3, 422, "numbers or null"),
        ([["x"] * len(FEATURES)] * 3, 422, "numbers or null"),
        ([[[0.0] * len(FEATURES)] * 3, [[0.0] * len(FEATURES)] * 2], 422, "rows"),
        ([[[[0.0]] * len(FEATURES)] * 3], 422, "numbers or null"),
        ([[10**400] * len(FEATURES)] * 3, 422, "numbers or null"),  # an integer no float holds
        ("abc", 422, "features"),
    ],
)
def test_bad_feature_matrices_are_4xx(features: object, status: int, needle: str) -> None:
    doc = {"node_ids": [1, 2, 3], "feature_names": list(FEATURES), "features": features}
    err, _ = refusal(json.dumps(doc).encode())
    assert (err.status, needle in err.message) == (status, True), err.message


@pytest.mark.parametrize(
    "raw",
    [
        npy(np.ones((3, 4), dtype=np.float32)),  # a raw .npy array, not an npz (was a 500)
        b"",
        b"PK\x03\x04",
        b"PK\x03\x04" + b"\0" * 100,
        b"\x93NUMPY\x01\x00",
    ],
)
def test_bodies_that_are_not_npz_archives_are_a_400(raw: bytes) -> None:
    err, _ = refusal(raw, NPZ)
    assert err.status == 400 and err.kind == "malformed_body"


def test_an_npy_header_claiming_a_huge_array_is_refused_before_allocation() -> None:
    members = good_members()
    members["features.npy"] = npy_header("<f8", (64, 1_000_000_000, 8))  # 4 TB claimed, no data sent
    err, seconds = refusal(npz_of(members), NPZ)
    assert err.status == 413 and "shape" in err.message and seconds < 0.5
    members["features.npy"] = npy_header("<f4", (3, len(FEATURES)), b"\0" * 8)  # data shorter than claimed
    err, _ = refusal(npz_of(members), NPZ)
    assert err.status == 400
    members = good_members()
    members["node_ids.npy"] = npy_header("<i8", (10**12,))
    assert refusal(npz_of(members), NPZ, DEFAULT)[0].status == 413


def test_a_deflate_bomb_is_refused_from_its_header_before_inflating() -> None:
    members = good_members()
    big = np.zeros((8, 20_000, len(FEATURES)), dtype=np.float64)  # 40 MB of zeros, deflated to ~40 kB
    members["features.npy"] = npy(big)
    body = npz_of(members, zipfile.ZIP_DEFLATED)
    assert len(body) < 1 << 20
    err, seconds = refusal(body, NPZ)
    assert err.status == 413 and seconds < 0.5


@pytest.mark.parametrize(
    "members",
    [
        {**good_members(), "extra.npy": npy(np.ones(3))},
        {**{f"a{i}.npy": b"" for i in range(1000)}},
        {**good_members(), "features.npy": npy(np.array([["a"] * len(FEATURES)] * 3, dtype=object))},
        {**good_members(), "features.npy": npy(np.ones((3, len(FEATURES)), dtype=np.complex64))},
        {**good_members(), "edges.npy": npy(np.ones((2, 2), dtype=np.float32))},
        {**good_members(), "node_ids.npy": npy(np.array(["x" * 1000, "y", "z"]))},
        {**good_members(), "feature_names.npy": npy(np.ones(len(FEATURES)))},
    ],
)
def test_npz_arrays_of_the_wrong_kind_or_number_are_a_422(members: dict[str, bytes]) -> None:
    err, seconds = refusal(npz_of(members), NPZ)
    assert err.status == 422 and seconds < 0.5, err.message


def test_an_npz_with_arrays_in_any_order_and_an_encrypted_flag_is_handled() -> None:
    members = dict(reversed(list(good_members().items())))
    snap = parse_body(npz_of(members), NPZ, FEATURES, SMALL)
    assert snap.node_ids == [1, 2, 3]
    body = bytearray(npz_of(good_members()))
    body[6] |= 1  # the "encrypted" flag of the first local header
    cd = body.rfind(b"PK\x01\x02", 0, len(body))
    first_cd = body.find(b"PK\x01\x02")
    body[first_cd + 8] |= 1  # and of its central directory entry
    assert cd >= first_cd
    assert refusal(bytes(body), NPZ)[0].status in (400, 422)


def test_a_legal_npz_still_round_trips() -> None:
    ids = np.arange(50)
    features = np.random.default_rng(0).random((4, 50, len(FEATURES))).astype(np.float32)
    snap = parse_body(encode_npz(ids, FEATURES, features, np.array([[0, 1], [2, 3]])), NPZ, FEATURES, SMALL)
    np.testing.assert_array_equal(snap.window, features)
    np.testing.assert_array_equal(snap.pairs, [[0, 1], [2, 3]])


_LEAF = st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=4)
_KEYS = st.sampled_from(["node_ids", "feature_names", "features", "edges", "other"])
_ANY = st.recursive(
    _LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=40,
)
_NEAR = st.fixed_dictionaries(
    {
        "node_ids": st.lists(st.integers(-2, 5) | st.sampled_from(["a", "b", ""]), max_size=4),
        "feature_names": st.lists(st.sampled_from([*FEATURES, "bogus"]), max_size=len(FEATURES) + 1),
        "features": st.lists(
            st.lists(st.none() | st.floats() | st.integers() | st.text(max_size=2), max_size=9), max_size=4
        )
        | st.lists(st.lists(st.lists(st.floats(allow_nan=False), max_size=9), max_size=4), max_size=3),
    },
    optional={"edges": st.lists(st.lists(st.integers(-1, 5) | st.text(max_size=1), max_size=3), max_size=3)},
)


def _status(body: bytes, media: str) -> int:
    """200 for a snapshot, the refusal's status otherwise (anything else raises: the test fails)."""
    try:
        parse_body(body, media, FEATURES, SMALL)
    except RequestError as exc:
        return exc.status
    return 200


@given(doc=_ANY | _NEAR)
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
def test_any_json_body_is_a_snapshot_or_a_request_error(doc: object) -> None:
    assert _status(json.dumps(doc).encode(), "application/json") in (200, *range(400, 500))


@given(raw=st.binary(max_size=300), cut=st.integers(0, 2000))
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
def test_any_npz_body_or_a_cut_or_corrupted_archive_is_a_snapshot_or_a_request_error(
    raw: bytes, cut: int
) -> None:
    good = npz_of(good_members())
    for body in (raw, b"PK\x03\x04" + raw, good[:cut], good[:cut] + raw + good[cut + len(raw) :]):
        assert _status(body, NPZ) in (200, *range(400, 500))
