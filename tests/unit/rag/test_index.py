"""VectorIndex: hnswlib search against exact search, atomic save/load with ef, refusals, growth, concurrency."""

import json
import threading

import numpy as np
import pytest

from x0tta6bl4.errors import ConfigError, X0tta6bl4Error
from x0tta6bl4.rag.errors import IndexInputError, IndexStoreError
from x0tta6bl4.rag.index import (
    META_FILE,
    RWLock,
    VectorIndex,
    exact_search,
)

DIM = 32


def _vectors(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


@pytest.fixture
def filled():
    index = VectorIndex(DIM, m=16, ef_construction=100, ef=50, capacity=2000)
    data = _vectors(1000)
    index.add(data, np.arange(1000) + 10)
    return index, data


def test_query_matches_exact_search_with_cosine_scores(filled):
    index, data = filled
    ids, scores = index.query(data[:20], k=5)
    exact_ids, exact_scores = exact_search(data, data[:20], k=5)
    assert ids.shape == scores.shape == (20, 5) and ids.dtype == np.int64 and scores.dtype == np.float32
    assert np.mean(ids == exact_ids + 10) >= 0.95
    assert np.array_equal(ids[:, 0], np.arange(20) + 10)  # every vector finds itself first
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(scores[:, 1], exact_scores[:, 1], atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_exact_search_is_a_sorted_brute_force():
    data = _vectors(50)
    ids, scores = exact_search(data, data[:3], k=4)
    sims = (data[:3] / np.linalg.norm(data[:3], axis=1, keepdims=True)) @ (
        data / np.linalg.norm(data, axis=1, keepdims=True)
    ).T
    assert np.array_equal(ids, np.argsort(-sims, axis=1)[:, :4])
    np.testing.assert_allclose(scores, np.sort(sims, axis=1)[:, ::-1][:, :4], rtol=1e-5)
    assert exact_search(data, data[:2], k=500)[0].shape == (2, 50)  # k clamped to the rows


def test_k_larger_than_the_index_is_clamped_and_empty_index_answers_nothing():
    index = VectorIndex(DIM)
    assert index.query(_vectors(2), k=3)[0].shape == (2, 0)
    index.add(_vectors(4), np.arange(4))
    ids, _ = index.query(_vectors(1), k=10)
    assert sorted(ids[0].tolist()) == [0, 1, 2, 3]


def test_index_grows_when_full():
    index = VectorIndex(DIM, capacity=8)
    data = _vectors(300)
    for start in range(0, 300, 50):
        index.add(data[start : start + 50], np.arange(start, start + 50))
    assert len(index) == 300 and index.capacity >= 300
    assert np.array_equal(index.query(data[250:260], k=1)[0][:, 0], np.arange(250, 260))
    np.testing.assert_allclose(index.get_vectors([3]), data[3:4] / np.linalg.norm(data[3]), rtol=1e-5)


def test_adding_an_existing_id_replaces_its_vector():
    index = VectorIndex(DIM)
    data = _vectors(10)
    index.add(data, np.arange(10))
    index.add(-data[:1], [0])
    assert len(index) == 10
    assert index.query(-data[0], k=1)[0][0, 0] == 0


@pytest.mark.parametrize(
    ("vectors", "ids"),
    [
        (np.ones((2, DIM + 1), np.float32), [0, 1]),  # wrong dimension
        (np.ones((2, DIM), np.float32), [0]),  # ids do not match
        (np.ones((2, DIM), np.float32), [3, 3]),  # repeated id
        (np.ones((1, DIM), np.float32), [-1]),  # negative id
        (np.zeros((1, DIM), np.float32), [0]),  # zero vector: cosine undefined
        (np.full((1, DIM), np.nan, np.float32), [0]),
    ],
)
def test_add_refuses_bad_input_with_a_typed_error(vectors, ids):
    with pytest.raises(IndexInputError) as info:
        VectorIndex(DIM).add(vectors, ids)
    assert isinstance(info.value, ConfigError)


def test_query_refuses_bad_k_and_shapes(filled):
    index, _ = filled
    with pytest.raises(IndexInputError, match="k >= 1"):
        index.query(_vectors(1), k=0)
    with pytest.raises(IndexInputError):
        index.query(np.ones((1, DIM + 2), np.float32), k=1)
    with pytest.raises(IndexInputError):
        index.ef = 0
    with pytest.raises(IndexInputError):
        index.get_vectors([999_999])


def test_save_load_round_trip_restores_ef_and_results(filled, tmp_path):
    index, data = filled
    index.ef = 123
    index.save(tmp_path / "ix")
    loaded = VectorIndex.load(tmp_path / "ix", dim=DIM)
    assert loaded.ef == 123 and len(loaded) == len(index)
    assert (loaded.m, loaded.ef_construction) == (16, 100)
    for a, b in zip(index.query(data[:10], 7), loaded.query(data[:10], 7), strict=True):
        np.testing.assert_array_equal(a, b)
    meta = json.loads((tmp_path / "ix" / META_FILE).read_text())
    assert meta["ef"] == 123 and meta["count"] == 1000 and meta["dim"] == DIM and meta["format_version"] == 1


def test_saving_again_replaces_the_graph_file_and_keeps_one(filled, tmp_path):
    index, _ = filled
    index.save(tmp_path)
    index.add(_vectors(5, seed=9), np.arange(5) + 5000)
    index.save(tmp_path)
    assert len(list(tmp_path.glob("hnsw-*.bin"))) == 1
    assert not list(tmp_path.glob(".*tmp"))
    assert len(VectorIndex.load(tmp_path)) == 1005


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda meta: "{not json",
        lambda meta: json.dumps({**meta, "format_version": 99}),
        lambda meta: json.dumps({**meta, "space": "l2"}),
        lambda meta: json.dumps({**meta, "ef": "many"}),
        lambda meta: json.dumps({**meta, "count": meta["count"] + 1}),
        lambda meta: json.dumps({**meta, "index_file": "../elsewhere.bin"}),
        lambda meta: json.dumps([1, 2]),
    ],
    ids=["not-json", "version", "space", "ef-type", "count", "path", "not-object"],
)
def test_load_refuses_corrupt_or_mismatched_metadata(filled, tmp_path, corrupt):
    index, _ = filled
    index.save(tmp_path)
    meta_path = tmp_path / META_FILE
    meta_path.write_text(corrupt(json.loads(meta_path.read_text())))
    with pytest.raises(IndexStoreError) as info:
        VectorIndex.load(tmp_path)
    assert isinstance(info.value, X0tta6bl4Error)


def test_load_refuses_other_dimension_damaged_graph_and_missing_store(filled, tmp_path):
    index, _ = filled
    index.save(tmp_path)
    with pytest.raises(IndexStoreError, match="dimension"):
        VectorIndex.load(tmp_path, dim=DIM * 2)
    graph = next(tmp_path.glob("hnsw-*.bin"))
    raw = bytearray(graph.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    graph.write_bytes(bytes(raw))
    with pytest.raises(IndexStoreError, match="corrupt"):
        VectorIndex.load(tmp_path)
    with pytest.raises(IndexStoreError, match="missing"):
        VectorIndex.load(tmp_path / "nothing")


def test_concurrent_queries_and_inserts_stay_correct():
    index = VectorIndex(DIM, ef=64, capacity=16)
    base, extra = _vectors(500, seed=1), _vectors(2000, seed=2)
    index.add(base, np.arange(500))
    errors: list[BaseException] = []
    wrong = []
    stop = threading.Event()

    def reader(seed):
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                rows = rng.integers(0, 500, size=8)
                ids, scores = index.query(base[rows], k=3, num_threads=1)
                if not np.array_equal(ids[:, 0], rows) or not np.allclose(scores[:, 0], 1.0, atol=1e-4):
                    wrong.append(rows)
        except BaseException as exc:
            errors.append(exc)

    def writer():
        try:
            for start in range(0, 2000, 100):
                index.add(extra[start : start + 100], np.arange(start, start + 100) + 10_000, num_threads=1)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in readers:
        t.start()
    w = threading.Thread(target=writer)
    w.start()
    w.join(timeout=60)
    stop.set()
    for t in readers:
        t.join(timeout=10)
    assert not errors and not wrong
    assert len(index) == 2500 and index.capacity >= 2500
    assert np.array_equal(index.query(extra[-5:], k=1)[0][:, 0], np.arange(1995, 2000) + 10_000)


def test_rw_lock_lets_readers_share_and_writers_exclude():
    lock = RWLock()
    inside = threading.Barrier(2, timeout=5)
    log = []

    def read():
        with lock.read():
            inside.wait()  # both readers must be inside together, or this times out
            log.append("r")

    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log == ["r", "r"]
    entered = threading.Event()

    def read_after_writer():
        with lock.read():
            entered.set()

    with lock.write():
        t = threading.Thread(target=read_after_writer)
        t.start()
        assert not entered.wait(0.2)  # a reader waits for the writer
    assert entered.wait(5)
    t.join()
