"""Score request bodies: both encodings decode to the same snapshot; every kind of bad input is a 4xx."""

from __future__ import annotations

import json

import numpy as np
import pytest

from x0tta6bl4.serve.errors import RequestError
from x0tta6bl4.serve.snapshot import Limits, check_stream_id, encode_npz, parse_body
from x0tta6bl4.telemetry.frame import FEATURES

LIMITS = Limits(max_nodes=100, max_ticks=8, max_edges=1000)


def body(**changes: object) -> dict[str, object]:
    rng = np.random.default_rng(0)
    doc: dict[str, object] = {
        "node_ids": [10, 11, 12],
        "feature_names": list(FEATURES),
        "features": rng.random((3, len(FEATURES))).round(3).tolist(),
        "edges": [[10, 11], [11, 12]],
    }
    doc.update(changes)
    return doc


def parse(doc: dict[str, object]) -> object:
    return parse_body(json.dumps(doc).encode(), "application/json", FEATURES, LIMITS)


def refusal(raw: bytes, media: str = "application/json") -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_body(raw, media, FEATURES, LIMITS)
    return info.value


def test_json_and_npz_bodies_decode_to_the_same_snapshot() -> None:
    doc = body()
    a = parse(doc)
    b = parse_body(
        encode_npz(doc["node_ids"], FEATURES, np.asarray(doc["features"]), np.asarray(doc["edges"])),  # type: ignore[arg-type]
        "application/x-npz",
        FEATURES,
        LIMITS,
    )
    assert a.node_ids == b.node_ids  # type: ignore[attr-defined]
    np.testing.assert_allclose(a.window, b.window)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(a.pairs, [[0, 1], [1, 2]])  # type: ignore[attr-defined]
    assert a.window.shape == (1, 3, len(FEATURES))  # type: ignore[attr-defined]


def test_columns_in_another_order_are_put_in_the_detector_order() -> None:
    doc = body()
    names = list(reversed(FEATURES))
    values = np.asarray(doc["features"])[:, ::-1]
    snap = parse(body(feature_names=names, features=values.tolist()))
    np.testing.assert_allclose(snap.window[0], np.asarray(doc["features"]))  # type: ignore[attr-defined]


def test_null_is_an_unmeasured_value_and_a_window_of_ticks_is_accepted() -> None:
    window = np.random.default_rng(1).random((4, 3, len(FEATURES))).tolist()
    window[-1][0][0] = None
    snap = parse(body(features=window))
    assert snap.window.shape == (4, 3, len(FEATURES))  # type: ignore[attr-defined]
    assert np.isnan(snap.window[-1, 0, 0])  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("changes", "status", "needle"),
    [
        ({"feature_names": [*FEATURES[:-1], "bogus"]}, 422, "unknown ['bogus']"),
        ({"feature_names": list(FEATURES[:-1])}, 422, "missing ['runqueue_latency_p95_ms']"),
        ({"edges": [[10, 99]]}, 422, "node 99"),
        ({"node_ids": [1, 1, 2]}, 422, "appears more than once"),
        ({"node_ids": []}, 422, "at least one node"),
        ({"features": [[0.1] * len(FEATURES)] * 2}, 422, "shape"),
        ({"features": [[0.1] * 3] * 3}, 422, "shape"),
        (
            {"node_ids": list(range(101)), "features": [[0.0] * len(FEATURES)] * 101, "edges": []},
            413,
            "more than",
        ),
        ({"features": [[[0.0] * len(FEATURES)] * 3] * 9}, 413, "longer"),
        ({"extra": 1}, 422, "extra"),
    ],
)
def test_invalid_snapshots_are_refused_with_a_reason(
    changes: dict[str, object], status: int, needle: str
) -> None:
    err = refusal(json.dumps(body(**changes)).encode())
    assert err.status == status
    assert needle in err.message
    assert err.body()["message"] == err.message


def test_nan_and_infinity_literals_are_refused_pointing_at_null() -> None:
    raw = json.dumps(body()).replace(str(body()["features"][0][0]), "NaN", 1).encode()  # type: ignore[index]
    err = refusal(raw)
    assert err.status == 422 and "null" in err.message
    raw = json.dumps(body()).replace(str(body()["features"][0][0]), "Infinity", 1).encode()  # type: ignore[index]
    assert refusal(raw).status == 422


@pytest.mark.parametrize(("value", "named"), [(True, "true/false"), ("1.5", "strings"), ({}, "objects")])
def test_feature_values_that_are_not_numbers_are_refused_not_coerced(value: object, named: str) -> None:
    features = body()["features"]
    features[1][2] = value  # type: ignore[index]
    err = refusal(json.dumps(body(features=features)).encode())
    assert err.status == 422 and named in err.message


def test_malformed_json_is_a_400() -> None:
    err = refusal(b'{"node_ids": [1, 2')
    assert err.status == 400 and err.kind == "malformed_json"


def test_npz_infinity_is_refused_and_garbage_is_a_400() -> None:
    features = np.ones((3, len(FEATURES)), dtype=np.float32)
    features[1, 2] = np.inf
    err = refusal(encode_npz([1, 2, 3], FEATURES, features), "application/x-npz")
    assert err.status == 422 and "finite" in err.message
    assert refusal(b"PK\x03\x04 not a zip", "application/x-npz").status == 400


def test_other_media_types_are_a_415() -> None:
    assert refusal(b"a,b", "text/csv").status == 415


def test_stream_ids_are_checked() -> None:
    assert check_stream_id("region-0.east") == "region-0.east"
    with pytest.raises(RequestError):
        check_stream_id("../etc")
