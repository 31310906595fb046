"""The anomaly app over HTTP: both encodings, live streams, bad input as 4xx JSON, hot swaps, replica loss."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from x0tta6bl4.bench.serve import snapshot_bodies
from x0tta6bl4.telemetry.frame import FEATURES

pytestmark = pytest.mark.ray

NODES = 150


@pytest.fixture(scope="module")
def bodies() -> tuple[list[bytes], list[bytes]]:
    return snapshot_bodies(NODES, 3, seed=21)


def post_score(base: str, body: bytes, media: str = "application/json", **params: str) -> requests.Response:
    return requests.post(
        f"{base}/v1/anomaly/score", data=body, headers={"content-type": media}, params=params, timeout=60
    )


def test_json_and_npz_snapshots_get_the_same_scores(deployed, bodies) -> None:
    json_bodies, npz_bodies = bodies
    a = post_score(deployed.base, json_bodies[0])
    b = post_score(deployed.base, npz_bodies[0], "application/x-npz")
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    ra, rb = a.json(), b.json()
    assert len(ra["scores"]) == NODES
    np.testing.assert_allclose(ra["scores"], rb["scores"], rtol=1e-4, atol=1e-4)
    assert (
        ra["model_version"] == requests.get(f"{deployed.base}/v1/anomaly/model", timeout=30).json()["version"]
    )
    assert ra["warm"] is False and ra["window_ticks"] == 1


def test_concurrent_snapshots_each_get_their_own_scores(deployed, bodies) -> None:
    # Concurrent stateless snapshots travel to the detector together (the gateway batches them):
    # every answer must still be its own snapshot's, in either encoding.
    json_bodies, npz_bodies = bodies
    alone = [post_score(deployed.base, b).json()["scores"] for b in json_bodies]
    assert not np.allclose(alone[0], alone[1])
    encodings = (("application/json", json_bodies), ("application/x-npz", npz_bodies))
    jobs = [(i % 3, *encodings[i % 2]) for i in range(24)]

    def post(job: tuple[int, str, list[bytes]]) -> tuple[int, requests.Response]:
        which, media, encoded = job
        return which, post_score(deployed.base, encoded[which], media)

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(post, jobs))
    for which, resp in answers:
        assert resp.status_code == 200, resp.text
        np.testing.assert_allclose(resp.json()["scores"], alone[which], rtol=1e-4, atol=1e-4)
    batching = requests.get(f"{deployed.base}/v1/anomaly/model", timeout=30).json()["batching"]
    assert batching["snapshots"] >= len(jobs) + len(alone)
    assert batching["mean_batch_size"] == pytest.approx(batching["snapshots"] / batching["batches"])


def test_a_stream_keeps_its_baselines_between_calls(deployed, bodies) -> None:
    json_bodies, _ = bodies
    ticks = [
        post_score(deployed.base, json_bodies[i % 3], stream_id="it-stream").json()["window_ticks"]
        for i in range(4)
    ]
    assert ticks == [1, 2, 3, 4]


def test_alarms_follow_the_thresholds(deployed, bodies) -> None:
    doc = post_score(deployed.base, bodies[0][0]).json()
    scores = np.asarray(doc["scores"])
    for alarm in doc["alarms"]:
        assert alarm["score"] > alarm["threshold"]
    assert (
        len(doc["alarms"]) == int((scores > doc["alarms"][0]["threshold"]).sum()) if doc["alarms"] else True
    )


BAD = [
    (b'{"node_ids": [1, 2', "application/json", 400),
    (
        json.dumps({"node_ids": [1], "feature_names": ["cpu"], "features": [[0.1]]}).encode(),
        "application/json",
        422,
    ),
    (
        json.dumps(
            {
                "node_ids": [1, 2],
                "feature_names": list(FEATURES),
                "features": [[0.1] * 13] * 2,
                "edges": [[1, 9]],
            }
        ).encode(),
        "application/json",
        422,
    ),
    (
        json.dumps({"node_ids": [1], "feature_names": list(FEATURES), "features": [[0.1] * 13]})
        .replace("0.1", "NaN", 1)
        .encode(),
        "application/json",
        422,
    ),
    (b"\x00\x01garbage", "application/x-npz", 400),
    (b"a,b,c", "text/csv", 415),
]


@pytest.mark.parametrize(("body", "media", "status"), BAD)
def test_bad_snapshots_are_4xx_json_and_the_replica_keeps_serving(
    deployed, bodies, body, media, status
) -> None:
    resp = post_score(deployed.base, body, media)
    assert resp.status_code == status, resp.text
    doc = resp.json()
    assert doc["error"] and doc["message"]
    assert post_score(deployed.base, bodies[0][0]).status_code == 200


def test_an_oversized_body_is_refused_before_it_is_read(deployed) -> None:
    limit = deployed.config.http.score_max_bytes
    resp = requests.post(
        f"{deployed.base}/v1/anomaly/score",
        data=b"x" * (limit + 1),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"


def test_a_bad_stream_id_is_a_422(deployed, bodies) -> None:
    assert post_score(deployed.base, bodies[0][0], stream_id="../x").status_code == 422


def test_new_thresholds_and_a_new_version_arrive_without_dropping_requests(deployed, bodies) -> None:
    from x0tta6bl4.models.bootstrap import BootstrapConfig, bootstrap_detector
    from x0tta6bl4.models.registry import ModelRegistry

    before = requests.get(f"{deployed.base}/v1/anomaly/model", timeout=30).json()
    newer = bootstrap_detector(
        ModelRegistry(deployed.registry_uri),
        BootstrapConfig(nodes=200, ticks=60, epochs=1, seed=3),
        promote=False,
    )
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = post_score(deployed.base, bodies[0][0])
            statuses.append(r.status_code)
            if r.status_code == 200:
                versions.append(r.json()["model_version"])

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        time.sleep(1.0)
        config = deployed.config.model_copy(deep=True)
        config.anomaly.user.model_version = newer.version
        config.anomaly.user.thresholds.default = -1e9  # every node alarms
        deployed.redeploy(config)
        deadline = time.time() + 60
        while time.time() < deadline and (not versions or versions[-1] != newer.version):
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    assert set(statuses) == {200}
    assert versions[0] == before["version"] and versions[-1] == newer.version
    doc = post_score(deployed.base, bodies[0][0]).json()
    assert len(doc["alarms"]) == NODES and doc["thresholds_version"] > before["thresholds_version"]
    info = requests.get(f"{deployed.base}/v1/anomaly/model", timeout=30).json()
    assert info["version"] == newer.version and info["default_threshold"] == -1e9


def test_a_corrupt_version_is_refused_and_the_previous_one_keeps_serving(deployed, bodies) -> None:
    from pathlib import Path

    from x0tta6bl4.models.bootstrap import BootstrapConfig, bootstrap_detector
    from x0tta6bl4.models.registry import ModelRegistry

    serving = requests.get(f"{deployed.base}/v1/anomaly/model", timeout=30).json()["version"]
    bad = bootstrap_detector(
        ModelRegistry(deployed.registry_uri),
        BootstrapConfig(nodes=200, ticks=60, epochs=1, seed=4),
        promote=False,
    )
    weights = Path(deployed.registry_uri) / bad.model / bad.version / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\x00" * 16)
    good = deployed.config
    config = good.model_copy(deep=True)
    config.anomaly.user.model_version = bad.version
    try:
        deployed.redeploy(config)
        info = requests.get(f"{deployed.base}/v1/anomaly/model", timeout=30).json()
        assert info["version"] == serving
        assert bad.version in (info["last_load_error"] or "")
        assert post_score(deployed.base, bodies[0][0]).json()["model_version"] == serving
    finally:
        deployed.redeploy(good)


def anomaly_replicas() -> dict[str, str]:
    import ray

    return {
        a["name"]: a["namespace"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::x0tta6bl4#AnomalyDetector#")
    }


def test_a_killed_replica_is_replaced_and_retrying_clients_lose_nothing(deployed, bodies) -> None:
    import ray

    victims = anomaly_replicas()
    assert victims
    answered: list[int] = []
    refused: list[tuple[int, str | None, object]] = []  # what the client saw instead of an answer
    failures = 0
    stop = threading.Event()

    def client() -> None:  # retries each request until it is answered
        nonlocal failures
        while not stop.is_set():
            while True:
                try:
                    r = post_score(deployed.base, bodies[0][1])
                    if r.status_code == 200:
                        answered.append(len(r.json()["scores"]))
                        break
                    refused.append((r.status_code, r.headers.get("retry-after"), r.json()))
                except (requests.RequestException, ValueError):
                    pass
                failures += 1
                time.sleep(0.2)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    time.sleep(1.0)
    before = len(answered)
    for name, namespace in victims.items():
        ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (
        set(anomaly_replicas()) - set(victims) and len(answered) > before + 3
    ):
        time.sleep(0.5)
    stop.set()
    thread.join(90)
    assert set(anomaly_replicas()) - set(victims), "no replacement replica came up"
    assert len(answered) > before + 3 and set(answered) == {NODES}
    # The replica's death is a JSON 503 with Retry-After (or a 504), never a plain-text 500.
    for status, retry_after, body in refused:
        assert (
            status in (503, 504) and isinstance(body, dict) and set(body) == {"error", "message", "details"}
        )
        assert status == 504 or retry_after is not None, (status, body)
