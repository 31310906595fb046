"""KnowledgeStore: learner state, incidents and action statistics in one SQLite file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from x0tta6bl4.errors import ConfigError
from x0tta6bl4.mapek.config import ControllerConfig
from x0tta6bl4.mapek.knowledge import KnowledgeStore
from x0tta6bl4.mapek.thresholds import ThresholdLearner


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "knowledge.sqlite"


@pytest.fixture
def open_store() -> Iterator[Callable[[str | Path], KnowledgeStore]]:
    """Opens stores and closes each at teardown (closing one twice is harmless)."""
    opened: list[KnowledgeStore] = []

    def _open(path: str | Path) -> KnowledgeStore:
        opened.append(KnowledgeStore(path))
        return opened[-1]

    yield _open
    for store in opened:
        store.close()


def _learner_state() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "history": rng.normal(100.0, 5.0, (60, 4)).astype(np.float32),
        "filled": 37,
        "position": 37,
        "multiplier": np.array([1.0, 1.25, 0.9, 8.0]),
        "base": np.array([150.0, 160.0, 50.0, 170.0]),
        "static_default": 812.5,
        "baseline_seen": np.array([True, False, True, True]),
        "note": "resumed",
    }


def _incident(incident_id: int, status: str = "open", closed: int | None = None) -> dict[str, Any]:
    return {
        "incident_id": incident_id,
        "opened_tick": 10 + incident_id,
        "closed_tick": closed,
        "status": status,
        "root": 3,
        "signature": "cpu_util",
        "description": "n=3: cpu_util 1.00 (baseline 0.20)",
        "nodes": [3, 4],
    }


def _assert_state_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, str):
            assert got[key] == value
        else:
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value))
            assert np.asarray(got[key]).dtype == np.asarray(value).dtype


def test_learner_state_round_trips_with_equal_arrays_and_dtypes(
    db_path: Path, open_store: Callable[..., KnowledgeStore]
) -> None:
    store = open_store(db_path)
    want = _learner_state()
    store.save_learner("run-a", 40, want)
    loaded = store.load_learner("run-a")
    assert loaded is not None
    tick, got = loaded
    assert tick == 40
    _assert_state_equal(got, want)
    store.close()


def test_learner_state_survives_closing_and_reopening_the_file(
    db_path: Path, open_store: Callable[..., KnowledgeStore]
) -> None:
    store = open_store(db_path)
    store.save_learner("run-a", 40, _learner_state())
    store.close()
    reopened = open_store(db_path)
    loaded = reopened.load_learner("run-a")
    assert loaded is not None
    assert loaded[0] == 40
    _assert_state_equal(loaded[1], _learner_state())
    reopened.close()


def test_a_restarted_learner_resumes_with_the_same_thresholds(
    db_path: Path, open_store: Callable[..., KnowledgeStore]
) -> None:
    cfg = ControllerConfig(threshold_floor_share=0.0)
    learner = ThresholdLearner(3, cfg, 500.0)
    rng = np.random.default_rng(1)
    for _ in range(45):
        learner.observe(rng.normal([100.0, 200.0, 300.0], 5.0).astype(np.float32), np.ones(3, dtype=bool))
    learner.adjust([2], 1.25)
    store = open_store(db_path)
    store.save_learner("run-a", 45, learner.state())
    store.close()

    resumed = ThresholdLearner(3, cfg, 500.0)
    loaded = open_store(db_path).load_learner("run-a")
    assert loaded is not None
    resumed.load_state(loaded[1])
    np.testing.assert_array_equal(resumed.thresholds, learner.thresholds)
    assert resumed.filled == learner.filled and resumed.position == learner.position


def test_the_latest_learner_save_replaces_the_previous_one(
    db_path: Path, open_store: Callable[..., KnowledgeStore]
) -> None:
    store = open_store(db_path)
    state = _learner_state()
    store.save_learner("run-a", 10, state)
    state["filled"] = 50
    store.save_learner("run-a", 20, state)
    loaded = store.load_learner("run-a")
    assert loaded is not None
    assert loaded[0] == 20 and int(loaded[1]["filled"]) == 50


def test_an_unknown_run_has_no_learner_state_and_no_incidents(
    db_path: Path, open_store: Callable[..., KnowledgeStore]
) -> None:
    store = open_store(db_path)
    store.save_learner("run-a", 1, _learner_state())
    store.save_incident("run-a", _incident(0))
    assert store.load_learner("run-b") is None
    assert store.incidents("run-b") == []


def test_an_incident_saved_twice_is_replaced_not_duplicated(
    db_path: Path, open_store: Callable[..., KnowledgeStore]
) -> None:
    store = open_store(db_path)
    store.save_incident("run-a", _incident(0))
    store.save_incident("run-a", _incident(1))
    store.save_incident("run-a", _incident(0, status="resolved", closed=30))
    incidents = store.incidents("run-a")
    assert [i["incident_id"] for i in incidents] == [0, 1]
    assert incidents[0]["status"] == "resolved" and incidents[0]["closed_tick"] == 30
    assert incidents[0]["nodes"] == [3, 4], "the full record is kept"
    assert incidents[1]["status"] == "open"


def test_incidents_are_kept_per_run_in_id_order(
    db_path: Path, open_store: Callable[..., KnowledgeStore]
) -> None:
    store = open_store(db_path)
    for i in (2, 0, 1):
        store.save_incident("run-a", _incident(i))
    store.save_incident("run-b", _incident(0, status="escalated"))
    assert [i["incident_id"] for i in store.incidents("run-a")] == [0, 1, 2]
    assert [i["status"] for i in store.incidents("run-b")] == ["escalated"]


def test_record_outcome_accumulates_successes_and_failures_per_signature_and_action(
    db_path: Path, open_store: Callable[..., KnowledgeStore]
) -> None:
    store = open_store(db_path)
    for ok in (True, True, False):
        store.record_outcome("cpu_util", "restart_node", ok)
    store.record_outcome("cpu_util", "scale_capacity", False)
    store.record_outcome("rx_bytes_per_s", "restart_node", True)
    assert store.action_stats() == {
        "cpu_util": {"restart_node": (2, 1), "scale_capacity": (0, 1)},
        "rx_bytes_per_s": {"restart_node": (1, 0)},
    }
    store.close()
    assert open_store(db_path).action_stats()["cpu_util"]["restart_node"] == (2, 1)


def test_saved_actions_are_replaced_per_attempt(
    db_path: Path, open_store: Callable[..., KnowledgeStore]
) -> None:
    store = open_store(db_path)
    attempt = {
        "attempt": 0,
        "tick": 12,
        "action": "restart_node",
        "node": 3,
        "peer": None,
        "source": "runbook",
        "outcome": None,
        "judged_tick": None,
    }
    store.save_action("run-a", 0, attempt)
    store.save_action("run-a", 0, {**attempt, "outcome": "success", "judged_tick": 18})
    rows = store._db.execute("SELECT attempt, outcome, judged_tick FROM actions").fetchall()
    assert rows == [(0, "success", 18)]


def test_meta_values_round_trip_as_json(db_path: Path, open_store: Callable[..., KnowledgeStore]) -> None:
    store = open_store(db_path)
    assert store.meta("model") is None
    store.set_meta("model", {"name": "detector", "version": 3})
    store.set_meta("model", {"name": "detector", "version": 4})
    assert store.meta("model") == {"name": "detector", "version": 4}


def test_an_in_memory_store_works_without_a_file(
    tmp_path: Path, open_store: Callable[..., KnowledgeStore]
) -> None:
    store = open_store(":memory:")
    store.record_outcome("sig", "act", True)
    assert store.action_stats() == {"sig": {"act": (1, 0)}}
    assert list(tmp_path.iterdir()) == []


def test_a_directory_path_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="knowledge store"):
        KnowledgeStore(tmp_path)


def test_a_path_under_a_regular_file_raises_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "plain"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot create its directory"):
        KnowledgeStore(blocker / "sub" / "knowledge.sqlite")


def test_a_file_that_is_not_sqlite_raises_config_error(tmp_path: Path) -> None:
    bogus = tmp_path / "knowledge.sqlite"
    bogus.write_bytes(b"this is not a database file at all" * 100)
    with pytest.raises(ConfigError, match="not usable"):
        KnowledgeStore(bogus)
