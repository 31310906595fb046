"""Hostile requests against the running app: each is a JSON 4xx, and /healthz keeps answering meanwhile."""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from x0tta6bl4.serve.ingress import _HEALTHZ_TIMEOUT_S

pytestmark = pytest.mark.ray

NPZ = {"content-type": "application/x-npz"}


def _npy(array: np.ndarray) -> bytes:  # type: ignore[type-arg]
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _claims_huge_array() -> bytes:
    """An npz whose features header claims 4 TB; the archive itself is a few hundred bytes."""
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (64, 1_000_000_000, 8)}
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("node_ids.npy", _npy(np.arange(3)))
        zf.writestr("feature_names.npy", _npy(np.array(["a"])))
        zf.writestr("features.npy", header.getvalue())
    return buf.getvalue()


def _hostile() -> list[tuple[str, str, bytes, dict[str, str]]]:
    names = [f"feature_{i}" for i in range(200_000)]
    heading = "# a" + " " * 100_000 + "b" + " w" * 200  # cubic for the old heading pattern
    return [
        (
            "200,000 distinct feature names",
            "/v1/anomaly/score",
            json.dumps({"node_ids": [1], "feature_names": names, "features": [[0.0] * len(names)]}).encode(),
            {"content-type": "application/json"},
        ),
        ("a raw .npy body", "/v1/anomaly/score", _npy(np.ones((3, 8), dtype=np.float32)), NPZ),
        ("an npy header claiming 4 TB", "/v1/anomaly/score", _claims_huge_array(), NPZ),
        ("JSON nested 100,000 deep", "/v1/anomaly/score", b"[" * 100_000 + b"]" * 100_000, {}),
        (
            "a runbook heading of 100,000 spaces",
            "/v1/rag/documents",
            json.dumps({"documents": [{"title": "hostile", "text": heading + "\n\nSome text.\n"}]}).encode(),
            {"content-type": "application/json"},
        ),
    ]


def test_hostile_requests_are_json_4xx_while_healthz_keeps_answering(deployed) -> None:  # type: ignore[no-untyped-def]
    base = deployed.base
    assert requests.get(f"{base}/healthz", timeout=30).status_code == 200
    stop = threading.Event()
    health: list[tuple[int, float]] = []

    def probe() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                status = requests.get(f"{base}/healthz", timeout=10).status_code
            except requests.Timeout:
                status = 0
            health.append((status, time.perf_counter() - start))
            time.sleep(0.1)

    def send(item: tuple[str, str, bytes, dict[str, str]]) -> tuple[str, int, dict[str, object], float]:
        what, path, body, headers = item
        start = time.perf_counter()
        response = requests.post(f"{base}{path}", data=body, headers=headers, timeout=30)
        return what, response.status_code, response.json(), time.perf_counter() - start

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(send, _hostile() * 2))  # each twice, all at once
    finally:
        stop.set()
        prober.join(timeout=15)
    for what, status, body, seconds in answers:
        assert 400 <= status < 500, (what, status, body)
        assert set(body) == {"error", "message", "details"}, (what, body)
        assert seconds < 10, (what, seconds)
    assert health and all(status == 200 for status, _ in health), health
    # Within the deadline /healthz gives each backend: the gateway's own loop never stalled
    # beyond it (it did, for seconds, while it imported the store to unpickle a refusal).
    assert max(seconds for _, seconds in health) < _HEALTHZ_TIMEOUT_S, health
